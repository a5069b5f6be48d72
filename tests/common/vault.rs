//! A temporary Starpod-style data dir and an independent `starpod:v1:` token codec.
//!
//! The codec follows DESIGN §2 byte for byte and shares no code with netcage, so tests that
//! seal here and let netcage open (or the other way round) cross-check both.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::ca::TestCa;

/// The token prefix.
pub const TOKEN_PREFIX: &str = "starpod:v1:";

/// A temporary directory for one test: a scratch root holding a data dir `db/` with a
/// random 32-byte `.vault_key` (mode 0600). Removed on drop.
pub struct TestEnv {
    root: TempDir,
    key: [u8; 32],
}

impl TestEnv {
    /// A fresh scratch root and data dir with a new random vault key.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("netcage-test-")
            .tempdir()
            .expect("create temp dir");
        std::fs::create_dir(root.path().join("db")).expect("create data dir");
        let env = Self {
            root,
            key: rand::random(),
        };
        write_private(&env.key_path(), &env.key);
        env
    }

    /// The scratch root: put policy files, audit logs, client files here (not in the data
    /// dir, which netcage hides from the child).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `root/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    /// The data dir, for `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("db")
    }

    /// `<data dir>/.vault_key`: 32 raw bytes.
    pub fn key_path(&self) -> PathBuf {
        self.data_dir().join(".vault_key")
    }

    /// The raw vault key.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// A token for `value` bound to `hosts` (empty = unrestricted), sealed with this key.
    pub fn seal(&self, value: &str, hosts: &[&str]) -> String {
        seal_with_key(&self.key, value, hosts)
    }

    /// Opens a token sealed with this key: `(value, hosts)`, or `None` if it is invalid.
    pub fn unseal(&self, token: &str) -> Option<(String, Vec<String>)> {
        unseal_with_key(&self.key, token)
    }

    /// Installs `ca` as Starpod's CA in the data dir: `proxy-ca.pem` and `proxy-ca-key.pem`
    /// (0600), the files an existing Starpod installation would have.
    pub fn install_ca(&self, ca: &TestCa) {
        std::fs::write(self.data_dir().join("proxy-ca.pem"), ca.cert_pem()).expect("write CA");
        write_private(
            &self.data_dir().join("proxy-ca-key.pem"),
            ca.key_pem().as_bytes(),
        );
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes `data` to a new file at `path` with mode 0600.
fn write_private(path: &Path, data: &[u8]) {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    file.write_all(data).expect("write private file");
}

/// `starpod:v1:` base64std(nonce[12] || AES-256-GCM(key, nonce, {"v":value,"h":hosts})).
pub fn seal_with_key(key: &[u8; 32], value: &str, hosts: &[&str]) -> String {
    let payload = json!({ "v": value, "h": hosts }).to_string();
    let nonce: [u8; 12] = rand::random();
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), payload.as_bytes())
        .expect("AES-GCM encrypt");
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    format!("{TOKEN_PREFIX}{}", STANDARD.encode(blob))
}

/// Opens `token` with `key`: `(value, hosts)`, or `None` for anything DESIGN §2 calls invalid
/// (wrong prefix, bad base64, too short, failed authentication, payload not a JSON object
/// with a string `v` and an array-of-strings `h`).
pub fn unseal_with_key(key: &[u8; 32], token: &str) -> Option<(String, Vec<String>)> {
    let blob = STANDARD.decode(token.strip_prefix(TOKEN_PREFIX)?).ok()?;
    if blob.len() < 12 + 16 {
        return None;
    }
    let (nonce, sealed) = blob.split_at(12);
    let cipher = Aes256Gcm::new_from_slice(key).expect("32-byte key");
    let payload = cipher.decrypt(Nonce::from_slice(nonce), sealed).ok()?;
    let payload: Value = serde_json::from_slice(&payload).ok()?;
    let value = payload.get("v")?.as_str()?.to_owned();
    let hosts = payload
        .get("h")?
        .as_array()?
        .iter()
        .map(|h| h.as_str().map(str::to_owned))
        .collect::<Option<Vec<_>>>()?;
    Some((value, hosts))
}
