//! A certificate authority made at test time, and server configurations it signs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Makes ring the process-wide default rustls crypto provider. Idempotent: a provider already
/// installed (by an earlier call, or by netcage's own code in the same process) is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A throwaway CA: a self-signed certificate and its key, used to issue server leaves.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl TestCa {
    /// A new CA with a fresh ECDSA P-256 key and the common name "netcage test CA".
    pub fn new() -> Self {
        Self::with_name("netcage test CA")
    }

    /// A new CA with the given common name (to tell two CAs apart in error messages).
    pub fn with_name(common_name: &str) -> Self {
        install_crypto_provider();
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// The CA private key, PKCS#8 PEM (for tests that hand netcage an existing CA).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Writes the CA certificate to `dir/test-ca.pem` and returns that path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.pem");
        std::fs::write(&path, &self.cert_pem).expect("write test CA PEM");
        path
    }

    /// A leaf certificate chain (leaf, CA) and key for `names`: each name becomes a DNS SAN,
    /// or an IP SAN when it parses as an IP address ("127.0.0.1", "::1").
    pub fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        assert!(
            !names.is_empty(),
            "a leaf certificate needs at least one name"
        );
        let key = KeyPair::generate().expect("generate leaf key");
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf names");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let chain = vec![leaf.der().clone(), self.cert_der.clone()];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (chain, key_der)
    }

    /// Like [`TestCa::issue`], as PEM: the chain (leaf, then CA) and the PKCS#8 key, for
    /// servers that read files (grpcio, Java).
    pub fn issue_pem(&self, names: &[&str]) -> (String, String) {
        use base64::Engine;
        let (chain, key) = self.issue(names);
        let pem = |label: &str, der: &[u8]| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            )
        };
        let chain_pem = chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        (chain_pem, pem("PRIVATE KEY", key.secret_der()))
    }

    /// A rustls server configuration presenting a leaf for `names`, offering the ALPN
    /// protocols `alpn` in that order (e.g. `&[b"h2", b"http/1.1"]`; empty = no ALPN).
    pub fn server_config(&self, names: &[&str], alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let (chain, key) = self.issue(names);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}
