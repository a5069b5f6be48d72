//! netcage's local CA: made with rcgen on first use, kept in the data dir under Starpod's file
//! names, and the per-host leaf certificates the proxy presents (cached, short-lived).

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

pub const CA_CERT: &str = "proxy-ca.pem";
pub const CA_KEY: &str = "proxy-ca-key.pem";
pub const CA_BUNDLE: &str = "proxy-ca-bundle.pem";
/// The bundle's certificates as a PKCS#12 truststore for Java (trusted-certificate entries).
pub const CA_TRUSTSTORE: &str = "proxy-ca-truststore.p12";
/// The truststore's password. Not a secret: it holds only public certificates, and the JVM
/// wants one to read a PKCS#12 store (Java's own default).
pub const TRUSTSTORE_PASSWORD: &str = "changeit";

/// How many leaf certificates stay cached, and for how long one is reused.
const LEAF_CACHE: usize = 1024;
const LEAF_REUSE: Duration = Duration::from_secs(12 * 3600);

/// Where system roots are read from for the bundle, first match wins.
const SYSTEM_ROOTS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a usable CA key ({why}); netcage reads PKCS#8, SEC1 (EC) or PKCS#1 (RSA) PEM"
    )]
    BadKey { path: PathBuf, why: String },
    #[error("{path} is not a usable CA certificate: {why}")]
    BadCert { path: PathBuf, why: String },
    #[error("{cert} exists but {key} does not: restore the key, or remove both to make a new CA")]
    HalfCa { cert: PathBuf, key: PathBuf },
    #[error("cannot issue a certificate for {name:?}: {why}")]
    Leaf { name: String, why: String },
    #[error("cannot make the Java truststore {path}: {why}")]
    Truststore { path: PathBuf, why: String },
}

/// The CA and its leaf cache.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_path: PathBuf,
    bundle_path: PathBuf,
    /// The Java truststore, or why it could not be made (netcage works on without it).
    truststore: Result<PathBuf, String>,
    leaf_key: KeyPair,
    leaf_signer: Arc<dyn rustls::sign::SigningKey>,
    cache: Mutex<LruCache<String, (Instant, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("cert", &self.cert_path).finish()
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CaError {
    let path = path.to_owned();
    move |source| CaError::Io { what, path, source }
}

impl Ca {
    /// Uses the CA in `dir` (made by netcage, Starpod or openssl), or makes one there.
    pub fn load_or_create(dir: &Path) -> Result<Ca, CaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        let bundle_path = dir.join(CA_BUNDLE);
        let truststore_path = dir.join(CA_TRUSTSTORE);
        let (cert_pem, key) = match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                let cert_pem =
                    std::fs::read_to_string(&cert_path).map_err(io("read", &cert_path))?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(io("read", &key_path))?;
                (cert_pem, parse_key(&key_pem, &key_path)?)
            }
            (true, false) => {
                return Err(CaError::HalfCa {
                    cert: cert_path,
                    key: key_path,
                });
            }
            _ => {
                let (cert_pem, key) = make_ca()?;
                create_dir_private(dir)?;
                write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                write_file(&cert_path, cert_pem.as_bytes(), 0o644)?;
                let _ = std::fs::remove_file(&bundle_path);
                let _ = std::fs::remove_file(&truststore_path);
                (cert_pem, key)
            }
        };
        if !bundle_path.exists() {
            write_bundle(&bundle_path, &cert_pem)?;
            let _ = std::fs::remove_file(&truststore_path);
        }
        Ca::assemble(&cert_pem, key, cert_path, bundle_path, truststore_path)
    }

    /// A new CA that lives only in this process's memory (a Kubernetes sidecar's, one per
    /// pod): its key is never written; `dir` (made if missing, the volume the app mounts) gets
    /// only the public files: the certificate, the bundle and the Java truststore, replacing
    /// those of an earlier CA.
    pub fn ephemeral(dir: &Path) -> Result<Ca, CaError> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        }
        let (cert_pem, key) = make_ca()?;
        let cert_path = dir.join(CA_CERT);
        let bundle_path = dir.join(CA_BUNDLE);
        let truststore_path = dir.join(CA_TRUSTSTORE);
        let tmp = dir.join(format!("{CA_CERT}.tmp"));
        write_file(&tmp, cert_pem.as_bytes(), 0o644)?;
        std::fs::rename(&tmp, &cert_path).map_err(io("write", &cert_path))?;
        write_bundle(&bundle_path, &cert_pem)?;
        let _ = std::fs::remove_file(&truststore_path);
        Ca::assemble(&cert_pem, key, cert_path, bundle_path, truststore_path)
    }

    /// The CA from its certificate and key, with the truststore made if missing.
    fn assemble(
        cert_pem: &str,
        key: KeyPair,
        cert_path: PathBuf,
        bundle_path: PathBuf,
        truststore_path: PathBuf,
    ) -> Result<Ca, CaError> {
        let cert_der = pem_cert(cert_pem).ok_or_else(|| CaError::BadCert {
            path: cert_path.clone(),
            why: "no CERTIFICATE block".into(),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| CaError::BadCert {
            path: cert_path.clone(),
            why: e.to_string(),
        })?;
        // A data dir netcage cannot write (a Starpod installation of another user's) still
        // serves everything but Java.
        let truststore = if truststore_path.exists() {
            Ok(truststore_path)
        } else {
            write_truststore(&truststore_path, &bundle_path, &cert_der)
                .map(|()| truststore_path)
                .map_err(|e| e.to_string())
        };
        let leaf_key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| CaError::Leaf {
                name: "(key)".into(),
                why: e.to_string(),
            })?;
        let leaf_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let leaf_signer =
            rustls::crypto::ring::sign::any_supported_type(&leaf_der).map_err(|e| {
                CaError::Leaf {
                    name: "(key)".into(),
                    why: e.to_string(),
                }
            })?;
        Ok(Ca {
            issuer,
            cert_der,
            cert_path,
            bundle_path,
            truststore,
            leaf_key,
            leaf_signer,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(LEAF_CACHE).expect("nonzero"),
            )),
        })
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// System roots followed by the CA: what clients in the sandbox should trust.
    pub fn bundle_path(&self) -> &Path {
        &self.bundle_path
    }

    /// The bundle's certificates as a PKCS#12 truststore (password [`TRUSTSTORE_PASSWORD`]),
    /// unless it could not be made ([`Ca::truststore_problem`]).
    pub fn truststore_path(&self) -> Option<&Path> {
        self.truststore.as_deref().ok()
    }

    /// Why there is no truststore, if there is none.
    pub fn truststore_problem(&self) -> Option<&str> {
        self.truststore.as_ref().err().map(String::as_str)
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A leaf for `name` (DNS name or IP literal), from the cache when fresh.
    pub fn leaf(&self, name: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let name = crate::hosts::normalize(name);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((made, leaf)) = cache.get(&name)
            && made.elapsed() < LEAF_REUSE
        {
            return Ok(leaf.clone());
        }
        drop(cache);
        let leaf = Arc::new(self.issue(&name)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.put(name, (Instant::now(), leaf.clone()));
        Ok(leaf)
    }

    fn issue(&self, name: &str) -> Result<CertifiedKey, CaError> {
        let leaf_err = |why: String| CaError::Leaf {
            name: name.to_owned(),
            why,
        };
        if name.starts_with("*.") || crate::hosts::validate_pattern(name).is_err() {
            return Err(leaf_err("not a host name or IP address".into()));
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_owned()
                    .try_into()
                    .map_err(|e: rcgen::Error| leaf_err(e.to_string()))?,
            ),
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(2);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let mut serial = [0u8; 16];
        rand::fill(&mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| leaf_err(e.to_string()))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            self.leaf_signer.clone(),
        ))
    }
}

fn make_ca() -> Result<(String, KeyPair), CaError> {
    let err = |e: rcgen::Error| CaError::Leaf {
        name: "(CA)".into(),
        why: e.to_string(),
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "netcage local CA");
    dn.push(DnType::OrganizationName, "netcage");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.pem(), key))
}

fn pem_cert(pem: &str) -> Option<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes()).next()?.ok()
}

/// Reads a CA key in PKCS#8, SEC1 or PKCS#1 PEM (ring signs only PKCS#8, so the others are
/// wrapped into PKCS#8 first).
fn parse_key(pem: &str, path: &Path) -> Result<KeyPair, CaError> {
    let bad = |why: &str| CaError::BadKey {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let der = rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| bad(&e.to_string()))?
        .ok_or_else(|| bad("no private key block"))?;
    let pkcs8 = match &der {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Sec1(k) => {
            crate::der::sec1_to_pkcs8(k.secret_sec1_der()).ok_or_else(|| bad("unknown curve"))?
        }
        PrivateKeyDer::Pkcs1(k) => crate::der::pkcs1_to_pkcs8(k.secret_pkcs1_der()),
        _ => return Err(bad("unsupported key type")),
    };
    let pkcs8 = zeroize::Zeroizing::new(pkcs8);
    KeyPair::try_from(pkcs8.as_slice()).map_err(|e| bad(&e.to_string()))
}

fn create_dir_private(dir: &Path) -> Result<(), CaError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("set permissions of", dir))?;
    }
    Ok(())
}

/// Writes a file of the data dir, never through a symbolic link (one planted there by a
/// sandboxed command would have netcage overwrite a file of its choosing).
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("write", path))?;
    file.write_all(data).map_err(io("write", path))
}

/// The system's root certificates, from the first bundle file found (one file is much faster
/// to read than a directory of hundreds), else from wherever rustls-native-certs finds them.
pub fn system_roots() -> Vec<CertificateDer<'static>> {
    let from_file = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_ROOTS.iter().map(PathBuf::from))
        .find_map(|p| std::fs::read(p).ok())
        .map(|pem| {
            rustls_pemfile::certs(&mut pem.as_slice())
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if from_file.is_empty() {
        rustls_native_certs::load_native_certs().certs
    } else {
        from_file
    }
}

fn write_bundle(path: &Path, ca_pem: &str) -> Result<(), CaError> {
    let mut bundle = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_ROOTS.iter().map(PathBuf::from))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca_pem);
    let tmp = path.with_extension("pem.tmp");
    write_file(&tmp, bundle.as_bytes(), 0o644)?;
    std::fs::rename(&tmp, path).map_err(io("write", path))
}

/// The bundle's certificates (system roots and netcage's CA, `ca`) as a PKCS#12 truststore
/// of trusted-certificate entries, which Java reads as `-Djavax.net.ssl.trustStoreType=PKCS12`
/// (each bag carries Java's trusted-usage attribute). A certificate the parser does not take
/// is left out; netcage's own is always in.
fn write_truststore(path: &Path, bundle: &Path, ca: &CertificateDer<'_>) -> Result<(), CaError> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry};
    let fail = |why: String| CaError::Truststore {
        path: path.to_owned(),
        why,
    };
    let pem = std::fs::read(bundle).map_err(io("read", bundle))?;
    let mut store = KeyStore::new();
    let own = Certificate::from_der(ca).map_err(|e| fail(e.to_string()))?;
    store.add_entry("netcage-local-ca", KeyStoreEntry::Certificate(own));
    let mut reader = pem.as_slice();
    let others = rustls_pemfile::certs(&mut reader)
        .filter_map(Result::ok)
        .filter(|der| der.as_ref() != ca.as_ref());
    for (i, der) in others.enumerate() {
        if let Ok(cert) = Certificate::from_der(&der) {
            store.add_entry(&format!("root-{i}"), KeyStoreEntry::Certificate(cert));
        }
    }
    let data = store
        .writer(TRUSTSTORE_PASSWORD)
        .write()
        .map_err(|e| fail(e.to_string()))?;
    let tmp = path.with_extension("p12.tmp");
    write_file(&tmp, &data, 0o644)?;
    std::fs::rename(&tmp, path).map_err(io("write", path))
}

/// `JAVA_TOOL_OPTIONS` for the command: `existing` (the user's, kept first) followed by the
/// truststore and, in Tier 0 (`proxy`), the JVM's proxy properties for HTTP and HTTPS with no
/// exceptions (the JVM's default skips localhost). Later `-D` options win in the JVM, so
/// these take precedence over the same properties in `existing`.
pub fn java_tool_options(
    existing: Option<&std::ffi::OsStr>,
    truststore: &Path,
    proxy: Option<std::net::SocketAddr>,
) -> std::ffi::OsString {
    let mut out = std::ffi::OsString::new();
    if let Some(existing) = existing.filter(|e| !e.is_empty()) {
        out.push(existing);
        out.push(" ");
    }
    // The JVM splits the variable at white space; quotes keep a path with spaces whole.
    let path = truststore.as_os_str();
    let spaced = path.as_encoded_bytes().iter().any(u8::is_ascii_whitespace);
    out.push(if spaced {
        "\"-Djavax.net.ssl.trustStore="
    } else {
        "-Djavax.net.ssl.trustStore="
    });
    out.push(path);
    if spaced {
        out.push("\"");
    }
    out.push(format!(
        " -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword={TRUSTSTORE_PASSWORD}"
    ));
    if let Some(addr) = proxy {
        let (host, port) = (addr.ip(), addr.port());
        out.push(format!(
            " -Dhttps.proxyHost={host} -Dhttps.proxyPort={port} -Dhttp.proxyHost={host} -Dhttp.proxyPort={port} -Dhttp.nonProxyHosts="
        ));
    }
    out
}

/// Environment variables that make common clients trust the bundle (or, for node, the CA).
pub fn trust_env(bundle: &Path, ca_cert: &Path) -> Vec<(&'static str, PathBuf)> {
    let b = || bundle.to_path_buf();
    vec![
        ("SSL_CERT_FILE", b()),
        ("CURL_CA_BUNDLE", b()),
        ("REQUESTS_CA_BUNDLE", b()),
        ("GIT_SSL_CAINFO", b()),
        ("PIP_CERT", b()),
        ("NPM_CONFIG_CAFILE", b()),
        ("CARGO_HTTP_CAINFO", b()),
        ("AWS_CA_BUNDLE", b()),
        ("DENO_CERT", b()),
        ("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", b()),
        ("NODE_EXTRA_CA_CERTS", ca_cert.to_path_buf()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reuses_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("db");
        let ca = Ca::load_or_create(&data).unwrap();
        let key_mode = std::fs::metadata(data.join(CA_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let bundle = std::fs::read_to_string(ca.bundle_path()).unwrap();
        let ca_pem = std::fs::read_to_string(data.join(CA_CERT)).unwrap();
        assert!(bundle.ends_with(&ca_pem));
        let again = Ca::load_or_create(&data).unwrap();
        assert_eq!(again.cert_der(), ca.cert_der());
        let leaf = again.leaf("API.github.com").unwrap();
        assert_eq!(leaf.cert.len(), 2);
        assert!(Arc::ptr_eq(&leaf, &again.leaf("api.github.com").unwrap()));
        again.leaf("127.0.0.1").unwrap();
        assert!(again.leaf("bad name!").is_err());
    }

    #[test]
    fn java_options_follow_the_users_own() {
        let store = Path::new("/d/proxy-ca-truststore.p12");
        let opts = |existing: Option<&str>, proxy| {
            java_tool_options(existing.map(std::ffi::OsStr::new), store, proxy)
                .into_string()
                .unwrap()
        };
        let trust = "-Djavax.net.ssl.trustStore=/d/proxy-ca-truststore.p12 \
                     -Djavax.net.ssl.trustStoreType=PKCS12 -Djavax.net.ssl.trustStorePassword=changeit";
        assert_eq!(opts(None, None), trust);
        assert_eq!(opts(Some(""), None), trust);
        assert_eq!(opts(Some("-Xmx1g"), None), format!("-Xmx1g {trust}"));
        let proxied = opts(None, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            proxied,
            format!(
                "{trust} -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=8080 \
                 -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=8080 -Dhttp.nonProxyHosts="
            )
        );
        let spaced = java_tool_options(None, Path::new("/a b/t.p12"), None);
        assert!(
            spaced
                .to_str()
                .unwrap()
                .starts_with("\"-Djavax.net.ssl.trustStore=/a b/t.p12\" "),
            "{spaced:?}"
        );
    }

    #[test]
    fn the_truststore_holds_the_ca_as_a_trusted_entry() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        let data = std::fs::read(ca.truststore_path().unwrap()).unwrap();
        let store = p12_keystore::KeyStore::from_pkcs12(
            &data,
            TRUSTSTORE_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        match store.entry("netcage-local-ca") {
            Some(p12_keystore::KeyStoreEntry::Certificate(c)) => {
                assert_eq!(c.as_der(), ca.cert_der().as_ref());
            }
            other => panic!("no trusted entry for the CA: {other:?}"),
        }
        // The system roots of the bundle too, as trusted entries (Strict keeps only those).
        let in_bundle =
            rustls_pemfile::certs(&mut std::fs::read(ca.bundle_path()).unwrap().as_slice()).count();
        assert_eq!(store.entries_len(), in_bundle);
    }

    #[test]
    fn a_truststore_that_cannot_be_written_is_only_missing() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_TRUSTSTORE)).unwrap();
        // Its temporary file cannot be made (a directory is in the way; root writes anywhere).
        std::fs::create_dir(dir.path().join("proxy-ca-truststore.p12.tmp")).unwrap();
        let ca = Ca::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.truststore_path(), None);
        let why = ca.truststore_problem().unwrap();
        assert!(why.contains("proxy-ca-truststore.p12"), "{why}");
        assert!(ca.leaf("api.github.com").is_ok());
    }

    #[test]
    fn half_a_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        Ca::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY)).unwrap();
        let err = Ca::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("remove both"), "{err}");
    }
}
