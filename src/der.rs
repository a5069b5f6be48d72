//! Tiny DER helpers: wrap SEC1 (EC) and PKCS#1 (RSA) private keys into PKCS#8, which is the only
//! form ring can sign with. Only used for CA keys made by other tools (openssl, Starpod).

const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend(tlv(0x30, algorithm));
    body.extend(tlv(0x04, key));
    tlv(0x30, &body)
}

/// SEC1 `ECPrivateKey` → PKCS#8. The curve is taken from the key's parameters; P-256 and P-384.
pub fn sec1_to_pkcs8(sec1: &[u8]) -> Option<Vec<u8>> {
    let curve = [OID_P256, OID_P384]
        .into_iter()
        .find(|oid| sec1.windows(oid.len()).any(|w| w == *oid))?;
    let mut algorithm = OID_EC_PUBLIC_KEY.to_vec();
    algorithm.extend_from_slice(curve);
    Some(pkcs8(&algorithm, sec1))
}

/// PKCS#1 `RSAPrivateKey` → PKCS#8.
pub fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    let mut algorithm = OID_RSA.to_vec();
    algorithm.extend_from_slice(&[0x05, 0x00]);
    pkcs8(&algorithm, pkcs1)
}
