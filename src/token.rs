//! The `starpod:v1` token: AES-256-GCM over a small JSON payload, byte-compatible with the
//! Starpod vault (DESIGN §2), and loading of the 32-byte master key.
//!
//! ```text
//! token   = "starpod:v1:" base64std( nonce[12] || AES-256-GCM(key, nonce, payload) )
//! payload = {"v": "<secret value>", "h": ["<host pattern>", ...]}
//! ```

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Every token starts with this.
pub const PREFIX: &str = "starpod:v1:";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The 32-byte master key, with its AES key schedule expanded once (both zeroed on drop;
/// `Debug` never shows them).
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>, Aes256Gcm);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "key file {0} does not exist: pass --key-file FILE, or --data-dir DIR holding .vault_key"
    )]
    Missing(PathBuf),
    #[error("cannot read key file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} holds {len} bytes: expected 32 raw bytes, 64 hex characters, or base64 of 32 bytes"
    )]
    Malformed { path: PathBuf, len: usize },
    #[error("cannot create key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A key read from a file, with a warning when the file is readable by others.
#[derive(Debug)]
pub struct LoadedKey {
    pub key: Key,
    pub warning: Option<String>,
}

impl Key {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        let cipher = Aes256Gcm::new((&bytes).into());
        Key(Zeroizing::new(bytes), cipher)
    }

    /// Names the key without revealing it (a one-way digest), for netcage's list of trusted
    /// key files.
    pub fn id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"netcage key id\0");
        h.update(self.0.as_slice());
        let digest = h.finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("key:{hex}")
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let key = Key::from_bytes(bytes);
        bytes.zeroize();
        key
    }

    /// Parses key material in any of the three accepted forms: 32 raw bytes (as Starpod writes
    /// `.vault_key`), 64 hex characters, or standard base64 of 32 bytes (surrounding whitespace
    /// ignored for the text forms).
    pub fn parse(contents: &[u8]) -> Option<Key> {
        if contents.len() == 32 {
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(contents);
            return Some(Key::from_bytes(bytes));
        }
        let text = contents.trim_ascii();
        let mut decoded = Zeroizing::new(Vec::new());
        if text.len() == 64 && text.iter().all(u8::is_ascii_hexdigit) {
            for pair in text.chunks(2) {
                let hi = (pair[0] as char).to_digit(16)?;
                let lo = (pair[1] as char).to_digit(16)?;
                decoded.push((hi * 16 + lo) as u8);
            }
        } else {
            B64.decode_vec(text, &mut decoded).ok()?;
        }
        let bytes: [u8; 32] = decoded.as_slice().try_into().ok()?;
        Some(Key::from_bytes(bytes))
    }

    /// Reads a key file; warns (does not fail) when group or others may read it.
    pub fn load(path: &Path) -> Result<LoadedKey, KeyError> {
        let mut file = std::fs::File::open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                KeyError::Missing(path.to_owned())
            } else {
                KeyError::Unreadable {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let unreadable = |source| KeyError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let mode = file.metadata().map_err(unreadable)?.permissions().mode();
        let mut contents = Zeroizing::new(Vec::new());
        // Bounded: a key file is tiny; anything large is malformed, not worth reading whole.
        (&mut file)
            .take(4096)
            .read_to_end(&mut contents)
            .map_err(unreadable)?;
        let key = Key::parse(&contents).ok_or(KeyError::Malformed {
            path: path.to_owned(),
            len: contents.len(),
        })?;
        let warning = (mode & 0o077 != 0).then(|| {
            format!(
                "key file {} is readable by group or others (mode {:o}); run: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            )
        });
        Ok(LoadedKey { key, warning })
    }

    /// Creates a new random key file (mode 0600, raw 32 bytes like Starpod). Fails if it exists.
    pub fn create(path: &Path) -> Result<Key, KeyError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let create = |source| KeyError::Create {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(create)?;
        }
        let key = Key::generate();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(create)?;
        file.write_all(key.0.as_slice()).map_err(create)?;
        Ok(key)
    }

    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.1
    }
}

/// Why a token could not be opened. Never carries the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("does not start with \"starpod:v1:\"")]
    Prefix,
    #[error("not valid base64")]
    Base64,
    #[error("too short to hold a nonce and tag")]
    Short,
    #[error("authentication failed (made with another key, or altered)")]
    Auth,
    #[error("payload is not {{\"v\": string, \"h\": [strings]}}")]
    Payload,
}

/// An opened token: the real value and the hosts it may be sent to.
pub struct Secret {
    pub value: Zeroizing<String>,
    /// Host patterns; empty means any host.
    pub hosts: Vec<String>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("value", &"<redacted>")
            .field("hosts", &self.hosts)
            .finish()
    }
}

#[derive(Serialize)]
struct PayloadOut<'a> {
    v: &'a str,
    h: &'a [String],
}

#[derive(Deserialize)]
struct PayloadIn {
    v: String,
    h: Vec<String>,
}

/// Seals `value` for `hosts` (empty = any host) into a token.
pub fn seal(key: &Key, value: &str, hosts: &[String]) -> String {
    let payload = Zeroizing::new(
        serde_json::to_vec(&PayloadOut { v: value, h: hosts })
            .expect("serializing strings to JSON cannot fail"),
    );
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let sealed = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), payload.as_slice())
        .expect("AES-GCM encryption of an in-memory buffer cannot fail");
    let mut raw = Vec::with_capacity(NONCE_LEN + sealed.len());
    raw.extend_from_slice(&nonce);
    raw.extend_from_slice(&sealed);
    format!("{PREFIX}{}", B64.encode(raw))
}

/// Opens a token. Invalid tokens yield an error and nothing else.
pub fn open(key: &Key, token: &str) -> Result<Secret, TokenError> {
    let body = token.strip_prefix(PREFIX).ok_or(TokenError::Prefix)?;
    let raw = B64.decode(body).map_err(|_| TokenError::Base64)?;
    if raw.len() < NONCE_LEN + TAG_LEN {
        return Err(TokenError::Short);
    }
    let (nonce, sealed) = raw.split_at(NONCE_LEN);
    let plain = Zeroizing::new(
        key.cipher()
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| TokenError::Auth)?,
    );
    let mut payload: PayloadIn = serde_json::from_slice(&plain).map_err(|_| TokenError::Payload)?;
    let value = Zeroizing::new(std::mem::take(&mut payload.v));
    Ok(Secret {
        value,
        hosts: payload.h,
    })
}

/// A short, stable name for a token in logs: a hash of the token *text*, never of the value.
pub fn fingerprint(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(15);
    out.push_str("fp:");
    for byte in &digest[..6] {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
#[path = "token_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_forms_parse_to_the_same_key() {
        let raw: Vec<u8> = (0u8..32).collect();
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = B64.encode(&raw);
        let a = Key::parse(&raw).unwrap();
        let b = Key::parse(format!("{hex}\n").as_bytes()).unwrap();
        let c = Key::parse(format!(" {b64}\n").as_bytes()).unwrap();
        assert_eq!(a.0.as_slice(), b.0.as_slice());
        assert_eq!(a.0.as_slice(), c.0.as_slice());
        assert!(Key::parse(b"short").is_none());
        assert!(Key::parse(&[0u8; 33]).is_none());
        assert!(Key::parse(B64.encode([0u8; 31]).as_bytes()).is_none());
        assert!(Key::parse("zz".repeat(32).as_bytes()).is_none());
    }

    #[test]
    fn key_debug_is_redacted() {
        let key = Key::from_bytes([7u8; 32]);
        assert_eq!(format!("{key:?}"), "Key(<redacted>)");
    }

    #[test]
    fn load_reports_missing_malformed_and_loose_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".vault_key");
        assert!(matches!(Key::load(&path), Err(KeyError::Missing(_))));
        std::fs::write(&path, b"nope").unwrap();
        let err = Key::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { len: 4, .. }), "{err}");
        std::fs::remove_file(&path).unwrap();
        Key::create(&path).unwrap();
        assert!(Key::load(&path).unwrap().warning.is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let warning = Key::load(&path).unwrap().warning.unwrap();
        assert!(warning.contains("chmod 600"), "{warning}");
        assert!(
            Key::create(&path).is_err(),
            "create must not overwrite a key"
        );
    }

    #[test]
    fn payload_is_starpod_field_order() {
        let key = Key::generate();
        let token = seal(&key, "v", &["a.example".into()]);
        let raw = B64.decode(&token[PREFIX.len()..]).unwrap();
        let plain = key
            .cipher()
            .decrypt(Nonce::from_slice(&raw[..12]), &raw[12..])
            .unwrap();
        assert_eq!(plain, br#"{"v":"v","h":["a.example"]}"#);
    }

    #[test]
    fn fingerprint_is_of_the_text() {
        let fp = fingerprint("starpod:v1:abc");
        assert_eq!(fp.len(), 15);
        assert!(fp.starts_with("fp:"));
        assert_ne!(fp, fingerprint("starpod:v1:abd"));
    }

    proptest! {
        #[test]
        fn seal_open_round_trips(value in any::<String>(), hosts in proptest::collection::vec("[a-z*.]{0,20}", 0..5)) {
            let key = Key::from_bytes([9u8; 32]);
            let token = seal(&key, &value, &hosts);
            prop_assert!(token.starts_with(PREFIX));
            let secret = open(&key, &token).unwrap();
            prop_assert_eq!(secret.value.as_str(), value.as_str());
            prop_assert_eq!(secret.hosts, hosts);
            let other = Key::from_bytes([8u8; 32]);
            prop_assert_eq!(open(&other, &token).unwrap_err(), TokenError::Auth);
        }
    }
}
