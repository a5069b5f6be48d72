//! Where netcage keeps its key file (`.vault_key`), CA files and audit log when no
//! `--data-dir` is given: `./.starpod/db` when it already exists (a Starpod project: netcage
//! serves it as a drop-in), else the user's own data dir — `$XDG_DATA_HOME/netcage`, else
//! `/var/lib/netcage` for root, else `~/.local/share/netcage` (`/var/lib/netcage` without a
//! `$HOME`). Nothing is ever created in the working directory unasked.
//!
//! The user's data dir is the same directory as netcage's state (`keytrust::state_dir`, where
//! `trust.json` lives) for users other than root; the file names do not overlap
//! (`trust.json`, `trust.lock` there; `.vault_key`, `proxy-ca*.pem`, `netcage-audit.jsonl`
//! here), and a Tier 1 sandbox hides the whole directory either way.

use std::path::{Path, PathBuf};

/// Starpod's data dir, relative to the working directory.
pub const PROJECT: &str = ".starpod/db";

/// The default data dir and why it was chosen (for `doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    pub path: PathBuf,
    pub why: String,
}

/// The data dir to use when none is given, for this process's working directory,
/// environment and user.
pub fn default_dir() -> DataDir {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    choose(
        Path::new(PROJECT).is_dir(),
        var("XDG_DATA_HOME"),
        var("HOME"),
        nix::unistd::geteuid().is_root(),
    )
}

/// [`default_dir`] from its inputs: does `./.starpod/db` exist, `$XDG_DATA_HOME`, `$HOME`,
/// is the user root.
pub fn choose(
    project: bool,
    xdg_data_home: Option<PathBuf>,
    home: Option<PathBuf>,
    root: bool,
) -> DataDir {
    let at = |path: PathBuf, why: &str| DataDir {
        path,
        why: why.to_owned(),
    };
    if project {
        return at(
            PathBuf::from(PROJECT),
            "./.starpod/db exists in the working directory (a Starpod project)",
        );
    }
    // Relative values are to be ignored (XDG Base Directory specification).
    if let Some(dir) = xdg_data_home.filter(|d| d.is_absolute()) {
        return at(
            dir.join("netcage"),
            "no ./.starpod/db here; $XDG_DATA_HOME/netcage",
        );
    }
    if root {
        return at(
            PathBuf::from("/var/lib/netcage"),
            "no ./.starpod/db here, and $XDG_DATA_HOME is not set: root's data dir",
        );
    }
    match home.filter(|h| h.is_absolute() && h != Path::new("/")) {
        Some(home) => at(
            home.join(".local/share/netcage"),
            "no ./.starpod/db here; ~/.local/share/netcage ($XDG_DATA_HOME is not set)",
        ),
        None => at(
            PathBuf::from("/var/lib/netcage"),
            "no ./.starpod/db here, and no $HOME or $XDG_DATA_HOME",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<PathBuf> {
        Some(PathBuf::from(s))
    }

    #[test]
    fn a_starpod_project_wins() {
        let d = choose(true, p("/x"), p("/home/me"), false);
        assert_eq!(d.path, PathBuf::from(".starpod/db"));
        assert_eq!(
            choose(true, None, None, true).path,
            PathBuf::from(".starpod/db")
        );
    }

    #[test]
    fn else_the_users_own() {
        let path = |project, xdg, home, root| choose(project, xdg, home, root).path;
        assert_eq!(
            path(false, p("/data"), p("/home/me"), false),
            PathBuf::from("/data/netcage")
        );
        assert_eq!(
            path(false, p("/data"), p("/root"), true),
            PathBuf::from("/data/netcage")
        );
        assert_eq!(
            path(false, p("rel"), p("/home/me"), false),
            PathBuf::from("/home/me/.local/share/netcage")
        );
        assert_eq!(
            path(false, None, p("/home/me"), false),
            PathBuf::from("/home/me/.local/share/netcage")
        );
        assert_eq!(
            path(false, None, p("/root"), true),
            PathBuf::from("/var/lib/netcage")
        );
        assert_eq!(
            path(false, None, None, false),
            PathBuf::from("/var/lib/netcage")
        );
        assert_eq!(
            path(false, None, p("/"), false),
            PathBuf::from("/var/lib/netcage")
        );
    }
}
