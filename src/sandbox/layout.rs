//! The command's view of the filesystem, as one list of mount operations built from the
//! options and applied top to bottom by `mounts::apply` (bubblewrap's `SetupOp` list is the
//! model). Computing it only looks at the filesystem (what exists, what is a socket); nothing
//! is changed, so it is unit-tested without privileges.
//!
//! The view, in the order it is built:
//! 1. a writable copy of every writable root is taken (the working directory, `--write`);
//! 2. every mount becomes read-only;
//! 3. `/tmp`, `/var/tmp`, `/run` (and `/var/run`) are fresh, empty tmpfs; `/dev` is minimal;
//! 4. `$HOME` is seen through a throwaway layer (overlayfs on a tmpfs): writes there work and
//!    vanish with the sandbox, and no Unix socket of the host can be reached through it;
//! 5. the writable roots are mounted back, writable;
//! 6. every directory between a writable root and something hidden or protected in it is
//!    pinned (a mount point cannot be renamed), so nothing below can be moved out of the way;
//! 7. credential locations are hidden, the data dir shows only the public CA files, key files,
//!    the audit log, netcage's own state and the host's Unix sockets are covered;
//! 8. files that make code run later outside (`.git/hooks`, `.git/config`, shell start-up
//!    files when `$HOME` is writable) are read-only.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::credentials::{HOME_CODE, HOME_SECRETS, SYSTEM_SECRETS};

/// One step of the filesystem view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Keeps a copy of the mount tree at `path`, as it is now (writable), for [`Op::Attach`].
    Capture { slot: usize, path: PathBuf },
    /// Every mount of the sandbox read-only.
    ReadOnlyRoot,
    /// A fresh, empty tmpfs on `path` (a directory).
    Tmpfs { path: PathBuf, mode: u32 },
    /// The minimal `/dev`: null zero full random urandom tty, a new devpts with ptmx, a
    /// private shm, the fd/stdin/stdout/stderr links.
    Dev,
    /// A throwaway layer over the directory `path` (overlayfs, upper dir on a tmpfs).
    Overlay { path: PathBuf },
    /// The copy taken in `slot`, mounted at `path` (made in a fresh tmpfs when missing).
    Attach { slot: usize, path: PathBuf },
    /// `path` bound onto itself: a mount point cannot be renamed or removed.
    Pin { path: PathBuf },
    /// The directory `path` shows as empty and read-only.
    HideDir { path: PathBuf },
    /// The file (or socket) `path` shows as an empty read-only file.
    HideFile { path: PathBuf },
    /// The data dir: an empty read-only tmpfs holding copies of `files` (name, source read
    /// before anything is hidden).
    DataDir {
        path: PathBuf,
        files: Vec<(String, PathBuf)>,
    },
    /// `path` (a file or a directory tree) read-only.
    ReadOnly { path: PathBuf },
    /// The file `path` shows as a read-only file holding `contents`, with the real one's
    /// owner and mode: a sealed credential file (`credfiles`: tokens in place of secrets),
    /// built in memory (a tmpfs).
    SealedFile { path: PathBuf, contents: Vec<u8> },
    /// The directory `path` shows as a read-only directory (a tmpfs) holding only `files`
    /// (path relative to it, contents): a hidden credential directory with sealed files.
    SealedDir {
        path: PathBuf,
        files: Vec<(PathBuf, Vec<u8>)>,
    },
}

/// What the view is built from. Every path is absolute and canonical (symbolic links
/// resolved), as `Started::launch` makes them.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub cwd: PathBuf,
    /// netcage's `$HOME`.
    pub home: Option<PathBuf>,
    pub data_dir: PathBuf,
    /// Copied into the hidden data dir: (name, file).
    pub public_files: Vec<(String, PathBuf)>,
    /// Covered wherever they are: key file, audit log, serve's socket.
    pub secret_files: Vec<PathBuf>,
    /// netcage's own state (trusted keys): hidden.
    pub state_dir: Option<PathBuf>,
    /// Writable besides the working directory (`--write`, `[files] write`).
    pub write: Vec<PathBuf>,
    /// Hidden besides the built-in lists (`[files] hide`).
    pub hide: Vec<PathBuf>,
    /// Built-in entries not to hide (`[files] show`), expanded.
    pub show: Vec<PathBuf>,
    /// Pathname Unix sockets that processes outside are listening on.
    pub host_sockets: Vec<PathBuf>,
    /// Git hooks, configs and `.git` files in the writable directories (`gitdirs`).
    pub git: Vec<PathBuf>,
    /// Sealed credential files (canonical path, contents holding only tokens): shown in place
    /// of the real ones.
    pub sealed: Vec<(PathBuf, Vec<u8>)>,
}

/// The view, and what a user is told about it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub ops: Vec<Op>,
    /// Writable directories (real ones, whose changes persist).
    pub writable: Vec<PathBuf>,
    /// Credential locations hidden (for the one line `run` prints).
    pub hidden: Vec<PathBuf>,
    /// Credential files shown sealed (tokens in place of their secrets).
    #[serde(default)]
    pub sealed: Vec<PathBuf>,
    /// Things a user should know (a working directory left read-only, …).
    pub notes: Vec<String>,
}

/// Directories that are empty and private in the sandbox.
pub const FRESH_DIRS: &[&str] = &["/tmp", "/var/tmp", "/run", "/var/run"];

/// A working directory here stays read-only: making it writable would open the system.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
    "/sys", "/usr", "/var",
];

/// `~/x` with `home`, for the tables.
pub fn expand(entry: &str, home: Option<&Path>) -> Option<PathBuf> {
    match entry.strip_prefix("~/") {
        Some(rest) => home.map(|h| h.join(rest)),
        None => Some(PathBuf::from(entry)),
    }
}

/// `path` under `home` written as `~/…`, for messages.
pub fn tilde(path: &Path, home: Option<&Path>) -> String {
    match home.and_then(|h| path.strip_prefix(h).ok()) {
        Some(rest) if !rest.as_os_str().is_empty() => format!("~/{}", rest.display()),
        _ => path.display().to_string(),
    }
}

fn is_system_dir(dir: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|s| dir == Path::new(s))
        || [
            "/usr", "/etc", "/boot", "/proc", "/sys", "/dev", "/bin", "/sbin",
        ]
        .iter()
        .any(|s| dir.starts_with(s))
}

/// Is `path` under (or equal to) `dir`?
fn within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}

fn is_real_dir(path: &Path) -> bool {
    path.symlink_metadata().is_ok_and(|m| m.is_dir())
}

/// The directories a command may change for real: the working directory (unless it is a
/// system directory) and `write`, parents before children (a child is mounted on top).
pub fn writable_roots(cwd: &Path, write: &[PathBuf]) -> Vec<PathBuf> {
    let mut writable: Vec<PathBuf> = Vec::new();
    if !is_system_dir(cwd) {
        writable.push(cwd.to_owned());
    }
    for w in write {
        if !writable.contains(w) {
            writable.push(w.clone());
        }
    }
    writable.sort_by_key(|p| p.components().count());
    writable
}

/// Builds the view for `input`.
pub fn layout(input: &Input) -> Layout {
    let mut out = Layout::default();
    let home = input.home.as_deref();

    let writable = writable_roots(&input.cwd, &input.write);
    if is_system_dir(&input.cwd) {
        out.notes.push(format!(
            "the working directory {} stays read-only (a system directory); add --write DIR to change that",
            input.cwd.display()
        ));
    }
    let root_of = |path: &Path| -> Option<&PathBuf> {
        writable
            .iter()
            .filter(|w| within(path, w))
            .max_by_key(|w| w.components().count())
    };

    let fresh: Vec<PathBuf> = FRESH_DIRS
        .iter()
        .map(PathBuf::from)
        .filter(|d| is_real_dir(d))
        .collect();
    let in_fresh = |p: &Path| fresh.iter().any(|d| within(p, d)) || within(p, Path::new("/dev"));
    // $HOME gets a throwaway layer unless it is writable for real (or not there at all).
    let overlay_home = home
        .filter(|h| is_real_dir(h) && *h != Path::new("/") && root_of(h).is_none() && !in_fresh(h));
    let home_writable = home.is_some_and(|h| root_of(h).is_some());
    if let Some(h) = home.filter(|_| home_writable) {
        out.notes.push(format!(
            "the command may change all of your home directory {} (it is the working directory or under --write) except the start-up files and credential locations that exist; it could add new ones: run it in a project directory instead",
            h.display()
        ));
    }
    // A path whose changes would persist, i.e. on a writable root and not on a throwaway
    // layer: only there can a rename outlive the sandbox.
    let persistent = |p: &Path| root_of(p).is_some();

    for (slot, w) in writable.iter().enumerate() {
        out.ops.push(Op::Capture {
            slot,
            path: w.clone(),
        });
    }
    out.ops.push(Op::ReadOnlyRoot);
    for d in &fresh {
        let mode = if d.ends_with("tmp") { 0o1777 } else { 0o755 };
        out.ops.push(Op::Tmpfs {
            path: d.clone(),
            mode,
        });
    }
    out.ops.push(Op::Dev);
    if let Some(h) = overlay_home {
        out.ops.push(Op::Overlay { path: h.to_owned() });
    }
    for (slot, w) in writable.iter().enumerate() {
        out.ops.push(Op::Attach {
            slot,
            path: w.clone(),
        });
    }
    out.writable = writable.clone();

    // What gets covered, and what stays read-only, before pins are worked out.
    let mut hide_dirs: Vec<PathBuf> = Vec::new();
    let mut hide_files: Vec<PathBuf> = Vec::new();
    let mut read_only: Vec<PathBuf> = Vec::new();
    // Neither the writable roots nor what holds them are hidden: an explicit --write wins.
    let holds_root = |p: &Path| writable.iter().any(|w| within(w, p));
    let is_sealed = |p: &Path| input.sealed.iter().any(|(s, _)| s == p);
    // Sealed files are shown in place of the real ones (inside a hidden directory, in its
    // place's tmpfs), unless `show` or a writable root says otherwise.
    let sealed: Vec<&(PathBuf, Vec<u8>)> = input
        .sealed
        .iter()
        .filter(|(p, _)| {
            let gone = in_fresh(p) && root_of(p).is_none();
            exists(p) && !is_real_dir(p) && !input.show.contains(p) && !holds_root(p) && !gone
        })
        .collect();
    let mut hide_credential = |path: PathBuf, out: &mut Layout| {
        if input.show.contains(&path) || holds_root(&path) || !exists(&path) {
            return;
        }
        // Behind a fresh tmpfs it is not there anyway.
        if in_fresh(&path) && root_of(&path).is_none() {
            return;
        }
        // A symbolic link (~/.ssh -> dotfiles/ssh): what it points to is hidden.
        let target = std::fs::canonicalize(&path).unwrap_or(path);
        if holds_root(&target) || out.hidden.contains(&target) || is_sealed(&target) {
            return;
        }
        if is_real_dir(&target) {
            hide_dirs.push(target.clone());
        } else {
            hide_files.push(target.clone());
        }
        out.hidden.push(target);
    };
    for (entry, _) in HOME_SECRETS {
        if let Some(path) = expand(entry, home) {
            hide_credential(path, &mut out);
        }
    }
    for (entry, _) in SYSTEM_SECRETS {
        hide_credential(PathBuf::from(entry), &mut out);
    }
    for path in &input.hide {
        hide_credential(path.clone(), &mut out);
    }
    // netcage's own secrets: always, whatever the lists say.
    let data_dir = &input.data_dir;
    if let Some(state) = &input.state_dir
        && is_real_dir(state)
        && !within(state, data_dir)
        && !(in_fresh(state) && root_of(state).is_none())
    {
        hide_dirs.push(state.clone());
    }
    for file in &input.secret_files {
        if within(file, data_dir) || !exists(file) || is_real_dir(file) {
            continue;
        }
        if in_fresh(file) && root_of(file).is_none() {
            continue;
        }
        hide_files.push(file.clone());
    }
    // Host sockets: out of reach through a fresh tmpfs or the $HOME layer already.
    for sock in &input.host_sockets {
        let behind_layer = overlay_home.is_some_and(|h| within(sock, h)) && !persistent(sock);
        if behind_layer || (in_fresh(sock) && root_of(sock).is_none()) || within(sock, data_dir) {
            continue;
        }
        if sock
            .symlink_metadata()
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
            && !hide_files.contains(sock)
        {
            hide_files.push(sock.clone());
        }
    }
    // Code that runs later outside, where it would persist.
    let mut code: Vec<PathBuf> = Vec::new();
    for path in HOME_CODE.iter().filter_map(|e| expand(e, home)) {
        // A start-up file that links into a writable directory (a dotfiles checkout) would
        // be written through the link even behind the $HOME layer: the target stays
        // read-only.
        if let Ok(real) = std::fs::canonicalize(&path)
            && real != path
        {
            code.push(real);
        }
        if home_writable {
            code.push(path);
        }
    }
    code.extend(input.git.iter().cloned());
    for path in code {
        if exists(&path)
            && persistent(&path)
            && !holds_root(&path)
            && !read_only.contains(&path)
            && !hidden_by(&path, &hide_dirs)
        {
            read_only.push(path);
        }
    }

    // Pins: every directory strictly between a writable root and something covered in it.
    let mut pins: Vec<PathBuf> = Vec::new();
    let covered = hide_dirs
        .iter()
        .chain(&hide_files)
        .chain(sealed.iter().map(|(p, _)| p))
        .chain(&read_only)
        .chain(std::iter::once(data_dir));
    for target in covered {
        let Some(root) = root_of(target) else {
            continue;
        };
        let mut dir = target.parent();
        while let Some(d) = dir {
            if d == root.as_path() || !within(d, root) {
                break;
            }
            if !pins.iter().any(|p| p == d) {
                pins.push(d.to_owned());
            }
            dir = d.parent();
        }
    }
    // Outer pins first: an inner one is then made on the outer mount.
    pins.sort_by_key(|p| p.components().count());
    pins.retain(|p| is_real_dir(p));
    out.ops
        .extend(pins.into_iter().map(|path| Op::Pin { path }));

    out.ops.push(Op::DataDir {
        path: data_dir.clone(),
        files: input.public_files.clone(),
    });
    let mut gone = vec![data_dir.clone()];
    for path in hide_dirs {
        if !within(&path, data_dir) && !hidden_by(&path, &gone) {
            gone.push(path.clone());
            let files: Vec<(PathBuf, Vec<u8>)> = sealed
                .iter()
                .filter_map(|(p, contents)| {
                    let rel = p.strip_prefix(&path).ok()?;
                    (!rel.as_os_str().is_empty()).then(|| (rel.to_owned(), contents.clone()))
                })
                .collect();
            if files.is_empty() {
                out.ops.push(Op::HideDir { path });
            } else {
                out.sealed
                    .extend(files.iter().map(|(rel, _)| path.join(rel)));
                out.ops.push(Op::SealedDir { path, files });
            }
        }
    }
    for (path, contents) in &sealed {
        if !hidden_by(path, &gone) && !within(path, data_dir) {
            out.sealed.push(path.clone());
            out.ops.push(Op::SealedFile {
                path: path.clone(),
                contents: contents.clone(),
            });
        }
    }
    for path in hide_files {
        if !hidden_by(&path, &gone) && path != *data_dir {
            out.ops.push(Op::HideFile { path });
        }
    }
    for path in read_only {
        if !hidden_by(&path, &gone) {
            out.ops.push(Op::ReadOnly { path });
        }
    }
    out
}

/// Is `path` inside one of `dirs` (which hide everything below them)?
fn hidden_by(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|d| path != d.as_path() && within(path, d))
}

/// `path` made absolute against `cwd` and cleaned of `.` and `..` (without touching the
/// filesystem: for paths that may not exist yet).
pub fn absolute(path: &Path, cwd: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    };
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests;
