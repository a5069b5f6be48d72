//! Which key files netcage uses without asking.
//!
//! A sandboxed command may write its working directory (and `--write` paths), and a key file
//! planted there — `./.starpod/db/.vault_key` — would make the next `netcage run --seal` seal
//! real secrets with a key the command knows. So netcage remembers, in its own state file
//! (hidden from every sandbox):
//! - every directory it has made writable for a sandbox, and since when;
//! - every key file it trusts (path and a one-way digest of the key).
//!
//! A key file is used when it is trusted; otherwise, if it sits in a directory that sandboxes
//! could write and changed after that began (its ctime, which no program can set back), it is
//! refused with a one-line reason (`netcage key trust FILE` vouches for it); otherwise it was
//! there before any sandbox could write there, and it is trusted from now on.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::token::Key;

/// The state file's name in [`state_dir`].
pub const FILE: &str = "trust.json";

/// netcage's own state directory: `$XDG_DATA_HOME/netcage`, else `~/.local/share/netcage`,
/// else (no `$HOME`) `/var/lib/netcage`.
pub fn state_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(dir) = var("XDG_DATA_HOME") {
        return dir.join("netcage");
    }
    match var("HOME") {
        Some(home) if home != Path::new("/") => home.join(".local/share/netcage"),
        _ => PathBuf::from("/var/lib/netcage"),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    #[serde(default)]
    keys: Vec<TrustedKey>,
    #[serde(default)]
    writable: Vec<WritableRoot>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct TrustedKey {
    path: PathBuf,
    id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct WritableRoot {
    path: PathBuf,
    /// When the first sandbox that could write there was set up: Unix time in nanoseconds,
    /// on the kernel's coarse clock (the one file times come from).
    since: i64,
}

/// The state file in a directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store in [`state_dir`].
    pub fn default_location() -> Store {
        Store::at(state_dir())
    }

    pub fn at(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> String {
        format!(
            "cannot {what} netcage's state file {}: {e} (set XDG_DATA_HOME to a directory netcage may write)",
            self.file().display()
        )
    }

    /// Makes the state directory (0700) if it is missing: a sandbox's view must hide it from
    /// the start, so it must exist before the view is made.
    /// Missing parents (`~/.local`, `~/.local/share`) get the usual mode, not 0700.
    pub fn ensure(&self) -> Result<(), String> {
        use std::os::unix::fs::DirBuilderExt;
        if let Some(parent) = self.dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| self.fail("create the directory of", e))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(self.fail("create the directory of", e))
            }
            _ => Ok(()),
        }
    }

    /// Reads the record, lets `f` change it, writes it back (atomically, under a lock).
    fn update<T>(&self, f: impl FnOnce(&mut Record) -> T) -> Result<T, String> {
        use std::os::unix::fs::OpenOptionsExt;
        self.ensure()?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.dir.join("trust.lock"))
            .map_err(|e| self.fail("lock", e))?;
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.fail("lock", e))?;
        let mut record = self.read()?;
        let out = f(&mut record);
        let text = serde_json::to_vec_pretty(&record).map_err(|e| self.fail("write", e))?;
        let tmp = self.dir.join(format!(".trust.json.{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &text))
            .and_then(|()| std::fs::rename(&tmp, self.file()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(self.fail("write", e));
        }
        Ok(out)
    }

    fn read(&self) -> Result<Record, String> {
        match std::fs::read(self.file()) {
            Ok(text) => serde_json::from_slice(&text).map_err(|e| {
                self.fail(
                    "read",
                    format!("{e}; repair it, or remove it (netcage then forgets which directories sandboxes could write)"),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Record::default()),
            Err(e) => Err(self.fail("read", e)),
        }
    }

    /// Remembers that sandboxes may write these directories from now on.
    pub fn grant_writable(&self, dirs: &[PathBuf]) -> Result<(), String> {
        // The common case (a directory used before) reads only: no lock, no write.
        let known = self.read()?;
        if dirs
            .iter()
            .all(|d| known.writable.iter().any(|w| &w.path == d))
        {
            return Ok(());
        }
        let now = now();
        self.update(|r| {
            for dir in dirs {
                if !r.writable.iter().any(|w| &w.path == dir) {
                    r.writable.push(WritableRoot {
                        path: dir.clone(),
                        since: now,
                    });
                }
            }
        })
    }

    /// Trusts `key`, read from `path` (netcage made it, or the user said so).
    pub fn trust(&self, path: &Path, key: &Key) -> Result<(), String> {
        let entry = TrustedKey {
            path: canonical(path),
            id: key.id(),
        };
        self.update(|r| {
            if !r.keys.contains(&entry) {
                r.keys.push(entry);
            }
        })
    }

    /// Refuses `path` (what netcage is about to read or write: the data dir, a key file, the
    /// audit log) when it goes through a symbolic link that appeared in a directory
    /// sandboxes could write after that began: a command may have planted it to point
    /// netcage at a file or directory of its choosing.
    pub fn vouch_path(&self, path: &Path, what: &str) -> Result<(), String> {
        let record = self.read()?;
        if record.writable.is_empty() {
            return Ok(());
        }
        let abs =
            crate::sandbox::layout::absolute(path, &std::env::current_dir().unwrap_or_default());
        for part in abs.ancestors() {
            let Ok(meta) = std::fs::symlink_metadata(part) else {
                continue;
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            let changed = meta.ctime() * 1_000_000_000 + meta.ctime_nsec();
            let exposed = record
                .writable
                .iter()
                .filter(|w| part.starts_with(&w.path) && part != w.path && changed >= w.since)
                .min_by_key(|w| w.since);
            if let Some(root) = exposed {
                return Err(format!(
                    "refusing the {what} {}: it goes through the symbolic link {}, made after sandboxed commands could write {} (since {}), so a command may have planted it to point netcage elsewhere; remove the link, or use the real path",
                    path.display(),
                    part.display(),
                    root.path.display(),
                    rfc3339(root.since)
                ));
            }
        }
        Ok(())
    }

    /// May `key`, read from `path`, be used? See the module docs.
    pub fn vouch(&self, path: &Path, key: &Key) -> Result<(), String> {
        self.vouch_path(path, "key file")?;
        let real = canonical(path);
        let meta = std::fs::metadata(&real).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.nlink() > 1 {
            return Err(format!(
                "the key file {} has {} hard links: under another name it would not be hidden from sandboxed commands; keep one name (remove the other links) and try again",
                path.display(),
                meta.nlink()
            ));
        }
        let id = key.id();
        let record = self.read()?;
        if record.keys.iter().any(|k| k.path == real && k.id == id) {
            return Ok(());
        }
        // The link's own change time too: a symbolic link planted to point at a file
        // elsewhere is as new as the plant.
        let ctime = |m: &std::fs::Metadata| m.ctime() * 1_000_000_000 + m.ctime_nsec();
        let changed = std::fs::symlink_metadata(path)
            .map(|m| ctime(&m))
            .unwrap_or(0)
            .max(ctime(&meta));
        let exposed = record
            .writable
            .iter()
            .filter(|w| real.starts_with(&w.path) || path.starts_with(&w.path))
            .filter(|w| changed >= w.since)
            .min_by_key(|w| w.since);
        if let Some(root) = exposed {
            return Err(format!(
                "refusing the key file {}: it appeared or changed after sandboxed commands could write {} (a netcage sandbox's working or --write directory since {}), so a command may have planted it; if you made it, trust it with: netcage key trust {}",
                path.display(),
                root.path.display(),
                rfc3339(root.since),
                path.display()
            ));
        }
        self.update(|r| {
            let entry = TrustedKey {
                path: real.clone(),
                id: id.clone(),
            };
            if !r.keys.contains(&entry) {
                r.keys.push(entry);
            }
        })
    }
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// Now, on the clock file change times come from (the coarse one: a file changed after this
/// call never has an earlier change time; finer file times may only make an old file look
/// newer, never a new one older).
fn now() -> i64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_REALTIME_COARSE)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

fn rfc3339(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path, name: &str) -> (PathBuf, Key) {
        let path = dir.join(name);
        let key = Key::create(&path).unwrap();
        (path, key)
    }

    #[test]
    fn only_the_state_directory_itself_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join(".local/share/netcage"));
        store.ensure().unwrap();
        store.ensure().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join(".local/share/netcage")), 0o700);
        // The parents get what any new directory gets here (the umask's mode).
        std::fs::create_dir(dir.path().join("control")).unwrap();
        assert_eq!(
            mode(&dir.path().join(".local")),
            mode(&dir.path().join("control"))
        );
    }

    #[test]
    fn a_key_older_than_the_sandbox_is_adopted_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("state"));
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let (old, old_key) = key_file(&work, "old.key");
        // Make the grant clearly later than the old key's change time.
        std::thread::sleep(std::time::Duration::from_millis(30));
        store.grant_writable(&[canonical(&work)]).unwrap();
        store.vouch(&old, &old_key).unwrap();
        let (planted, planted_key) = key_file(&work, "planted.key");
        let err = store.vouch(&planted, &planted_key).unwrap_err();
        assert!(
            err.contains("netcage key trust") && err.contains("planted.key"),
            "{err}"
        );
        store.trust(&planted, &planted_key).unwrap();
        store.vouch(&planted, &planted_key).unwrap();
        // Replaced in place: another key at the same path is refused again.
        std::fs::remove_file(&planted).unwrap();
        let (_, other) = key_file(&work, "planted.key");
        assert!(store.vouch(&planted, &other).is_err());
        // The old key stays trusted after the grant.
        store.vouch(&old, &old_key).unwrap();
    }

    #[test]
    fn keys_outside_writable_directories_are_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("state"));
        store
            .grant_writable(&[dir.path().join("elsewhere")])
            .unwrap();
        let (path, key) = key_file(dir.path(), "k");
        store.vouch(&path, &key).unwrap();
    }

    #[test]
    fn a_key_with_another_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("state"));
        let (path, key) = key_file(dir.path(), "k");
        std::fs::hard_link(&path, dir.path().join("copy")).unwrap();
        let err = store.vouch(&path, &key).unwrap_err();
        assert!(err.contains("2 hard links"), "{err}");
    }

    #[test]
    fn a_planted_symlink_to_an_old_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::at(dir.path().join("state"));
        let (target, key) = key_file(dir.path(), "outside.key");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        store.grant_writable(&[canonical(&work)]).unwrap();
        let link = work.join(".vault_key");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(store.vouch(&link, &key).is_err());
    }
}
