//! `--learn [FILE]` for `run` and `proxy`: at the end, the learned policy goes to FILE, or to
//! stderr when no FILE was given.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use netcage::learn::Learner;

use super::input_error;

/// A learner and where its policy goes.
#[derive(Clone)]
pub struct Learning {
    pub learner: Arc<Learner>,
    /// None: stderr.
    pub file: Option<PathBuf>,
}

impl Learning {
    /// Checks FILE up front, so a long job does not run only to fail at the end.
    pub fn new(file: Option<PathBuf>) -> anyhow::Result<Self> {
        if let Some(file) = &file {
            let dir = parent(file);
            if !dir.is_dir() {
                return Err(input_error(format!(
                    "--learn {}: the directory {} does not exist; create it or choose another FILE",
                    file.display(),
                    dir.display()
                )));
            }
            if file.is_dir() {
                return Err(input_error(format!(
                    "--learn {}: is a directory; give a file name such as netcage.toml",
                    file.display()
                )));
            }
        }
        Ok(Learning {
            learner: Arc::new(Learner::new()),
            file,
        })
    }

    /// Prints or writes the learned policy. Call after the audit log has been flushed.
    pub fn finish(&self) -> anyhow::Result<()> {
        let policy = self.learner.policy_toml();
        let counts = self.learner.counts();
        let what = format!(
            "{} host(s), {} tcp entr{}{}",
            counts.hosts,
            counts.tcp,
            if counts.tcp == 1 { "y" } else { "ies" },
            match counts.blocked {
                0 => String::new(),
                n => format!(", {n} blocked host(s) listed as comments"),
            }
        );
        match &self.file {
            None => {
                eprint!(
                    "# netcage --learn: the policy this run needs ({what}); save it as netcage.toml and pass --policy netcage.toml\n{policy}"
                );
            }
            Some(file) => {
                write_replacing(file, policy.as_bytes()).with_context(|| {
                    format!(
                        "--learn: cannot write the learned policy to {} (choose another FILE)",
                        file.display()
                    )
                })?;
                eprintln!(
                    "netcage: learned policy ({what}) written to {}; use it with --policy {}",
                    file.display(),
                    file.display()
                );
            }
        }
        Ok(())
    }
}

fn parent(file: &Path) -> &Path {
    file.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Writes `data` to `file` (mode 0644), creating or replacing it through a new file in the same
/// directory and a rename: a symlink the command may have put at `file` is replaced, not
/// followed.
fn write_replacing(file: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = file
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".netcage-{}.tmp", std::process::id()));
    let tmp = parent(file).join(tmp_name);
    let written = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        out.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        out.write_all(data)?;
        out.sync_all()?;
        std::fs::rename(&tmp, file)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_0644_and_replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let file = dir.path().join("learned.toml");
        std::os::unix::fs::symlink(&target, &file).unwrap();
        write_replacing(&file, b"[egress]\n").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "[egress]\n");
        let meta = std::fs::symlink_metadata(&file).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        write_replacing(&file, b"again\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "again\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        assert!(write_replacing(dir.path(), b"x").is_err());
    }

    #[test]
    fn a_missing_directory_is_reported_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = Learning::new(Some(dir.path().join("nope/learned.toml")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(Learning::new(Some(dir.path().to_owned())).is_err());
        assert!(Learning::new(Some("learned.toml".into())).is_ok());
        assert!(Learning::new(None).is_ok());
    }
}
