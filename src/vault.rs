//! The Starpod vault as a source of secrets: `vault.db` (SQLite, WAL mode, written by Starpod
//! with sqlx) read without changing it.
//!
//! Table `vault_entries(key TEXT PRIMARY KEY, encrypted_value BLOB, nonce BLOB, allowed_hosts
//! TEXT NULL, created_at, updated_at)`: `encrypted_value` is AES-256-GCM (ciphertext ‖ tag) of
//! the UTF-8 value under the same key as the tokens (`.vault_key`), with the 12-byte nonce in its
//! own column and no associated data; `allowed_hosts` is a JSON array of host patterns, NULL
//! for an entry that may go anywhere.
//!
//! The database is opened read-only: a missing file is an error (never created), nothing is
//! migrated, and readers of a WAL database see what Starpod committed even while it runs.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aes_gcm::Nonce;
use aes_gcm::aead::Aead;
use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

use crate::token::Key;

/// The file name in a data dir.
pub const FILE_NAME: &str = "vault.db";

/// Files SQLite keeps beside a WAL database (they hold the same encrypted rows).
pub fn companions(path: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    [with("-wal"), with("-shm")]
}

/// One decrypted entry. The value is wiped on drop and never shown by `Debug`.
pub struct Entry {
    /// The entry's name (an environment variable name in Starpod).
    pub key: String,
    pub value: Zeroizing<String>,
    /// The host patterns it may be sent to; `None` when the vault does not restrict it
    /// (`allowed_hosts` NULL or an empty list).
    pub hosts: Option<Vec<String>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("value", &"<redacted>")
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Why the vault could not be read. Never carries a value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("{}: {why}", path.display())]
    Open { path: PathBuf, why: String },
    #[error("{} is not a Starpod vault: {why}", path.display())]
    NotAVault { path: PathBuf, why: String },
    #[error(
        "{}: entry {key:?} cannot be decrypted with this key file: {why} (was the vault written with another key? give it with --key-file, or leave the vault out with --no-vault)",
        path.display()
    )]
    Decrypt {
        path: PathBuf,
        key: String,
        why: &'static str,
    },
    #[error(
        "{} is refused: every user may write it, and so rebind its entries to hosts of their choosing; chmod o-w it",
        path.display()
    )]
    WritableByAll { path: PathBuf },
    #[error("{}: entry {key:?} has malformed allowed_hosts: {why}", path.display())]
    Hosts {
        path: PathBuf,
        key: String,
        why: String,
    },
}

/// Reads and decrypts every entry of the vault at `path`, in key order.
pub fn read(path: &Path, key: &Key) -> Result<Vec<Entry>, VaultError> {
    let open_err = |why: String| VaultError::Open {
        path: path.to_owned(),
        why,
    };
    // Without SQLITE_OPEN_CREATE a missing file is an error; say so plainly.
    match std::fs::metadata(path) {
        // The host lists are not encrypted: whoever may write the file may rebind an entry.
        Ok(meta) if meta.is_file() && meta.mode() & 0o002 != 0 => {
            return Err(VaultError::WritableByAll {
                path: path.to_owned(),
            });
        }
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(open_err("not a regular file".into())),
        Err(e) => return Err(open_err(e.to_string())),
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| open_err(e.to_string()))?;
    // Starpod may be writing: wait for its lock rather than fail at once.
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| open_err(e.to_string()))?;
    let not_a_vault = |e: rusqlite::Error| {
        let why = e.to_string();
        if why.contains("no such table") || why.contains("no such column") {
            VaultError::NotAVault {
                path: path.to_owned(),
                why,
            }
        } else {
            open_err(why)
        }
    };
    let mut stmt = conn
        .prepare(
            "SELECT key, encrypted_value, nonce, allowed_hosts FROM vault_entries ORDER BY key",
        )
        .map_err(not_a_vault)?;
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                Zeroizing::new(row.get::<_, Vec<u8>>(1)?),
                row.get::<_, Vec<u8>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })
        .map_err(not_a_vault)?;
    let mut entries = Vec::new();
    for row in rows {
        let (name, sealed, nonce, hosts) = row.map_err(not_a_vault)?;
        let decrypt_err = |why| VaultError::Decrypt {
            path: path.to_owned(),
            key: name.clone(),
            why,
        };
        let value = decrypt(key, &nonce, &sealed).map_err(decrypt_err)?;
        let hosts = parse_hosts(hosts.as_deref()).map_err(|why| VaultError::Hosts {
            path: path.to_owned(),
            key: name.clone(),
            why,
        })?;
        entries.push(Entry {
            key: name,
            value,
            hosts,
        });
    }
    Ok(entries)
}

/// AES-256-GCM open of one entry (nonce column, ciphertext ‖ tag, no associated data).
fn decrypt(key: &Key, nonce: &[u8], sealed: &[u8]) -> Result<Zeroizing<String>, &'static str> {
    if nonce.len() != 12 {
        return Err("the nonce is not 12 bytes");
    }
    let plain = Zeroizing::new(
        key.cipher()
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| "authentication failed")?,
    );
    let text = std::str::from_utf8(&plain).map_err(|_| "the value is not UTF-8")?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// `allowed_hosts`: NULL or `[]` → unrestricted; else a JSON array of valid host patterns.
fn parse_hosts(column: Option<&str>) -> Result<Option<Vec<String>>, String> {
    let Some(text) = column else {
        return Ok(None);
    };
    let hosts: Vec<String> =
        serde_json::from_str(text).map_err(|e| format!("not a JSON array of strings ({e})"))?;
    for host in &hosts {
        crate::hosts::validate_pattern(host)?;
    }
    Ok((!hosts.is_empty()).then_some(hosts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_column() {
        assert_eq!(parse_hosts(None).unwrap(), None);
        assert_eq!(parse_hosts(Some("[]")).unwrap(), None);
        assert_eq!(
            parse_hosts(Some(r#"["api.github.com","*.example.com"]"#)).unwrap(),
            Some(vec!["api.github.com".into(), "*.example.com".into()])
        );
        assert!(parse_hosts(Some("api.github.com")).is_err());
        assert!(parse_hosts(Some("[1]")).is_err());
        assert!(parse_hosts(Some(r#"["a b"]"#)).is_err());
    }

    #[test]
    fn decrypt_checks_everything() {
        let key = Key::from_bytes([7; 32]);
        let nonce = [1u8; 12];
        let sealed = key
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), b"value".as_slice())
            .unwrap();
        assert_eq!(decrypt(&key, &nonce, &sealed).unwrap().as_str(), "value");
        assert!(decrypt(&key, &nonce[..11], &sealed).is_err());
        assert!(decrypt(&Key::from_bytes([8; 32]), &nonce, &sealed).is_err());
        let bad = key
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), [0xffu8, 0xfe].as_slice())
            .unwrap();
        assert_eq!(
            decrypt(&key, &nonce, &bad).unwrap_err(),
            "the value is not UTF-8"
        );
    }

    #[test]
    fn a_missing_file_is_not_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vault.db");
        let err = read(&path, &Key::generate()).unwrap_err();
        assert!(matches!(err, VaultError::Open { .. }), "{err}");
        assert!(!path.exists());
    }
}
