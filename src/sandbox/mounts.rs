//! Applies a `layout::Layout` in the holder's new mount namespace, one op at a time (the
//! order is the layout's). Uses the mount API of Linux 5.12+ (`open_tree`, `move_mount`,
//! `mount_setattr`, `fsopen`/`fsmount`), which works the same as root and inside a user
//! namespace.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::layout::Op;

// linux/mount.h and linux/fcntl.h; libc does not name them all.
const OPEN_TREE_CLONE: u32 = 1;
const OPEN_TREE_CLOEXEC: u32 = libc::O_CLOEXEC as u32;
const AT_RECURSIVE: u32 = 0x8000;
const AT_EMPTY_PATH: u32 = libc::AT_EMPTY_PATH as u32;
const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u32 = 0x2;
const MOUNT_ATTR_NODEV: u32 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;
const FSOPEN_CLOEXEC: u32 = 1;
const FSCONFIG_SET_STRING: u32 = 1;
const FSCONFIG_CMD_CREATE: u32 = 6;
const FSMOUNT_CLOEXEC: u32 = 1;

/// Device nodes of the minimal /dev (bubblewrap's set).
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// `mount_setattr(2)`'s argument.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a path with a NUL byte", path.display()))
}

fn errno(what: &str) -> String {
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENOSYS) {
        format!("{what}: the kernel lacks the mount API of Linux 5.12 (Tier 1 needs it)")
    } else {
        format!("{what}: {e}")
    }
}

/// A detached copy of the mount (tree) at `path` (`dfd`-relative, or the mount `dfd` itself
/// when `path` is empty).
fn open_tree(dfd: RawFd, path: &Path, recursive: bool) -> Result<OwnedFd, String> {
    let c = cpath(path)?;
    let mut flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    if path.as_os_str().is_empty() {
        flags |= AT_EMPTY_PATH;
    }
    // SAFETY: open_tree takes a descriptor, a NUL-terminated path and flags; it returns a new
    // descriptor, which we own from here on.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dfd, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(errno(&format!("copy the mount at {}", path.display())));
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Mounts the detached tree `tree` at `target`.
fn move_mount(tree: &OwnedFd, target: &Path) -> Result<(), String> {
    let empty = CString::default();
    let to = cpath(target)?;
    // SAFETY: move_mount takes two (descriptor, NUL-terminated path) pairs and flags; it only
    // changes this process's mount namespace.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(errno(&format!("mount at {}", target.display())));
    }
    Ok(())
}

/// Sets `attr` (and clears `clear`) on the mount at `path` (or on the detached mount `dfd`
/// with an empty path), and on every mount below it when `recursive`.
fn set_attr(dfd: RawFd, path: &Path, recursive: bool, attr: u64, clear: u64) -> Result<(), String> {
    let c = cpath(path)?;
    let mut flags = 0;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    if path.as_os_str().is_empty() {
        flags |= AT_EMPTY_PATH;
    }
    let attr = MountAttr {
        attr_set: attr,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a live, properly laid
    // out struct and a NUL-terminated path; it changes only mounts of this mount namespace.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dfd,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(errno(&format!(
            "set the flags of the mount at {}",
            path.display()
        )));
    }
    Ok(())
}

/// Makes `path` read-only (and every mount below it when `recursive`).
fn read_only(path: &Path, recursive: bool) -> Result<(), String> {
    set_attr(libc::AT_FDCWD, path, recursive, MOUNT_ATTR_RDONLY, 0)
}

/// No device node and no set-user-ID bit works on any mount of the sandbox but the minimal
/// /dev's nodes: device nodes lie around in chroots, container root trees and backups, and
/// one for `kmsg` or `kvm` opens the host's.
const NO_DEV_SUID: u64 = (MOUNT_ATTR_NODEV | MOUNT_ATTR_NOSUID) as u64;

/// A new tmpfs that is not mounted anywhere (yet).
fn detached_tmpfs(mode: &str) -> Result<OwnedFd, String> {
    let call = |what: &str, rc: libc::c_long| -> Result<libc::c_long, String> {
        if rc < 0 { Err(errno(what)) } else { Ok(rc) }
    };
    let name = c"tmpfs";
    // SAFETY: fsopen takes a NUL-terminated file system name and flags and returns a new
    // descriptor, owned below.
    let fs = call("fsopen(tmpfs)", unsafe {
        libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC)
    })?;
    // SAFETY: `fs` is the fresh descriptor fsopen returned.
    let fs = unsafe { OwnedFd::from_raw_fd(fs as RawFd) };
    let key = c"mode";
    let value = CString::new(mode).map_err(|e| e.to_string())?;
    // SAFETY: fsconfig reads NUL-terminated key and value strings; the fs context is ours.
    call("fsconfig(tmpfs mode)", unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            key.as_ptr(),
            value.as_ptr(),
            0,
        )
    })?;
    // SAFETY: as above; CMD_CREATE takes no key or value.
    call("fsconfig(create tmpfs)", unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_char>(),
            0,
        )
    })?;
    // SAFETY: fsmount takes the fs context and flags and returns a new mount descriptor.
    let mnt = call("fsmount(tmpfs)", unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd(),
            FSMOUNT_CLOEXEC,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        )
    })?;
    // SAFETY: `mnt` is the fresh descriptor fsmount returned.
    Ok(unsafe { OwnedFd::from_raw_fd(mnt as RawFd) })
}

/// `/proc/self/fd/N/REL`: a path into a detached mount, for APIs that take paths.
fn fd_path(fd: &OwnedFd, rel: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{rel}", fd.as_raw_fd()))
}

fn tmpfs(path: &Path, flags: MsFlags, data: &str) -> Result<(), String> {
    mount(Some("tmpfs"), path, Some("tmpfs"), flags, Some(data))
        .map_err(|e| format!("mount a tmpfs on {}: {e}", path.display()))
}

fn bind(path: &Path) -> Result<(), String> {
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} onto itself: {e}", path.display()))
}

/// Overlay options quote `\`, `,` and `:` in paths with a backslash.
fn overlay_escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Creates `path` (a directory, or an empty file when `file`) and its missing parents. Only
/// works where the holder may write: in the fresh tmpfs of the view.
fn make_mount_point(path: &Path, file: bool) -> Result<(), String> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    let made = if file {
        path.parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(path, b""))
    } else {
        std::fs::create_dir_all(path)
    };
    made.map_err(|e| format!("make the mount point {}: {e}", path.display()))
}

/// What [`apply`] keeps between ops.
#[derive(Default)]
struct State {
    captured: HashMap<usize, (OwnedFd, bool)>,
    /// A read-only detached tmpfs holding one empty file (`empty`) and directory.
    empties: Option<OwnedFd>,
    /// The data dir's public files, each a detached read-only mount of the real file, taken
    /// before anything was hidden.
    public: HashMap<PathBuf, OwnedFd>,
    notes: Vec<String>,
}

impl State {
    fn empties(&mut self) -> Result<&OwnedFd, String> {
        if self.empties.is_none() {
            let mnt = detached_tmpfs("0755")?;
            std::fs::write(fd_path(&mnt, "empty"), b"")
                .map_err(|e| format!("make an empty file: {e}"))?;
            set_attr(mnt.as_raw_fd(), Path::new(""), false, MOUNT_ATTR_RDONLY, 0)?;
            self.empties = Some(mnt);
        }
        Ok(self.empties.as_ref().expect("set above"))
    }
}

/// Applies `ops` in order. Returns notes for the user (a fallback that was taken).
pub fn apply(ops: &[Op]) -> Result<Vec<String>, String> {
    let mut st = State::default();
    // Public files first: they may sit where a later op hides them. Each is mounted, not
    // copied: the CA bundle and the Java truststore are ~400 KB together, and reading and
    // writing them took ~0.8 ms of every start.
    for op in ops {
        if let Op::DataDir { files, .. } = op {
            for (_, src) in files {
                if st.public.contains_key(src) {
                    continue;
                }
                let file = open_tree(libc::AT_FDCWD, src, false)
                    .map_err(|e| format!("cannot read {}: {e}", src.display()))?;
                let locked = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOEXEC | NO_DEV_SUID;
                set_attr(file.as_raw_fd(), Path::new(""), false, locked, 0)?;
                st.public.insert(src.clone(), file);
            }
        }
    }
    for op in ops {
        apply_one(op, &mut st)?;
    }
    Ok(st.notes)
}

fn apply_one(op: &Op, st: &mut State) -> Result<(), String> {
    let nosuid_nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    match op {
        Op::Capture { slot, path } => {
            let is_file = !path.is_dir();
            let tree = open_tree(libc::AT_FDCWD, path, true)?;
            st.captured.insert(*slot, (tree, is_file));
        }
        Op::ReadOnlyRoot => set_attr(
            libc::AT_FDCWD,
            Path::new("/"),
            true,
            MOUNT_ATTR_RDONLY | NO_DEV_SUID,
            0,
        )?,
        Op::Tmpfs { path, mode } => tmpfs(path, nosuid_nodev, &format!("mode={mode:o}"))?,
        Op::Dev => dev()?,
        Op::Overlay { path } => {
            if let Err(e) = overlay(path) {
                // Still read-only: stricter, never weaker.
                st.notes.push(format!(
                    "{} is read-only instead of a throwaway layer ({e})",
                    path.display()
                ));
            }
        }
        Op::Attach { slot, path } => {
            let (tree, is_file) = st
                .captured
                .remove(slot)
                .ok_or_else(|| format!("nothing captured for {}", path.display()))?;
            // Writable, but no device node or set-user-ID file works there either.
            set_attr(tree.as_raw_fd(), Path::new(""), true, NO_DEV_SUID, 0)?;
            make_mount_point(path, is_file)?;
            move_mount(&tree, path)?;
        }
        Op::Pin { path } => {
            if path.is_dir() {
                bind(path)?;
            }
        }
        Op::HideDir { path } => {
            if path.is_dir() {
                tmpfs(
                    path,
                    nosuid_nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                    "mode=0700,size=4k,nr_inodes=1",
                )?;
            }
        }
        Op::HideFile { path } => {
            let meta = path.symlink_metadata();
            if meta.is_ok_and(|m| !m.is_dir() && !m.file_type().is_symlink()) {
                let empties = st.empties()?;
                let file = open_tree(empties.as_raw_fd(), Path::new("empty"), false)?;
                move_mount(&file, path)?;
            }
        }
        Op::DataDir { path, files } => {
            make_mount_point(path, false)?;
            tmpfs(
                path,
                nosuid_nodev | MsFlags::MS_NOEXEC,
                "mode=0755,size=16m",
            )?;
            for (name, src) in files {
                let public = st
                    .public
                    .get(src)
                    .ok_or_else(|| format!("nothing opened for {}", src.display()))?;
                // A copy of the detached mount: the same file may be public in two places.
                let file = open_tree(public.as_raw_fd(), Path::new(""), false)?;
                let at = path.join(name);
                make_mount_point(&at, true)?;
                move_mount(&file, &at)?;
            }
            read_only(path, false)?;
        }
        Op::ReadOnly { path } => {
            if path.symlink_metadata().is_ok() {
                bind(path)?;
                read_only(path, true)?;
            }
        }
        Op::SealedFile { path, contents } => {
            let Ok(meta) = path.symlink_metadata() else {
                return Ok(());
            };
            if !meta.is_file() {
                return Ok(());
            }
            let mnt = detached_tmpfs("0755")?;
            write_like(&fd_path(&mnt, "sealed"), contents, Some(&meta))?;
            set_attr(mnt.as_raw_fd(), Path::new(""), false, MOUNT_ATTR_RDONLY, 0)?;
            let file = open_tree(mnt.as_raw_fd(), Path::new("sealed"), false)?;
            move_mount(&file, path)?;
        }
        Op::SealedDir { path, files } => {
            if !path.is_dir() {
                return Ok(());
            }
            // Owners and modes of the real files, before they are covered.
            let metas: Vec<_> = files
                .iter()
                .map(|(rel, _)| path.join(rel).symlink_metadata().ok())
                .collect();
            let dir = path.metadata().ok();
            tmpfs(path, nosuid_nodev | MsFlags::MS_NOEXEC, "mode=0700,size=4m")?;
            for ((rel, contents), meta) in files.iter().zip(&metas) {
                let file = path.join(rel);
                if let Some(parent) = file.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("make {} in the sandbox: {e}", parent.display()))?;
                }
                write_like(&file, contents, meta.as_ref())?;
            }
            if let Some(dir) = dir {
                use std::os::unix::fs::MetadataExt;
                let _ = std::os::unix::fs::chown(path, Some(dir.uid()), Some(dir.gid()));
            }
            read_only(path, false)?;
        }
    }
    Ok(())
}

/// Writes `contents` to the new file `path` with the owner and permission bits of `like` (the
/// real file it stands in for: some clients refuse a credential file others may read).
fn write_like(
    path: &Path,
    contents: &[u8],
    like: Option<&std::fs::Metadata>,
) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::write(path, contents)
        .map_err(|e| format!("write the sealed {} in the sandbox: {e}", path.display()))?;
    let mode = like.map_or(0o600, |m| m.mode() & 0o777);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("set the mode of the sealed {}: {e}", path.display()))?;
    if let Some(m) = like {
        // Root may give it the real file's owner; in a user namespace it is the user's anyway.
        let _ = std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()));
    }
    Ok(())
}

/// Kernel interfaces that file permissions alone guard: as root (uid 0, even with no
/// capabilities) the command could otherwise write global sysctls such as
/// `kernel.core_pattern` (code execution outside the sandbox on the next crash) or the host
/// name, trigger SysRq, or write cgroup and sysfs files. Read-only in the sandbox only (the
/// root's read-only flag covers `/sys`; init's new /proc needs this).
pub const READ_ONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/sys"];

/// Makes `path` (a file or a directory tree, submounts included) read-only: a recursive bind
/// of it onto itself, then the read-only flag on that tree. A missing path is skipped.
pub fn make_read_only(path: &str) -> Result<(), String> {
    let path = Path::new(path);
    if !path.exists() {
        return Ok(());
    }
    bind(path)?;
    read_only(path, true)
}

/// Kernel files in the sandbox's new /proc (and /sys) that tell about the host or its other
/// users, masked as Docker does: the key descriptions of the uid (`keys`, `key-users`),
/// timers and scheduling of every process, kernel memory, hardware lists.
pub const MASKED: &[&str] = &[
    "/proc/keys",
    "/proc/key-users",
    "/proc/kcore",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
    "/sys/firmware",
];

/// Covers each of [`MASKED`] that exists: a file with an empty read-only one, a directory
/// with an empty read-only tmpfs (init calls this after mounting /proc).
pub fn mask_kernel_files() -> Result<(), String> {
    let mut empties = State::default();
    for path in MASKED.iter().map(Path::new) {
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() {
            tmpfs(
                path,
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                "mode=0555,size=4k,nr_inodes=1",
            )?;
        } else {
            let file = open_tree(empties.empties()?.as_raw_fd(), Path::new("empty"), false)?;
            move_mount(&file, path)?;
        }
    }
    Ok(())
}

/// A throwaway layer over `path`: overlayfs, lower `path` itself, upper and work dirs on a
/// tmpfs that is mounted nowhere else (so nothing can write to it behind the overlay's back).
fn overlay(path: &Path) -> Result<(), String> {
    let scratch = detached_tmpfs("0755")?;
    for dir in ["up", "work"] {
        std::fs::create_dir(fd_path(&scratch, dir))
            .map_err(|e| format!("make the overlay's {dir} dir: {e}"))?;
    }
    // The upper root takes the lower's owner and mode, so the layer looks like `path`.
    if let Ok(meta) = path.metadata() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let up = fd_path(&scratch, "up");
        let _ = std::os::unix::fs::chown(&up, Some(meta.uid()), Some(meta.gid()));
        let _ =
            std::fs::set_permissions(&up, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        overlay_escape(path),
        overlay_escape(&fd_path(&scratch, "up")),
        overlay_escape(&fd_path(&scratch, "work")),
    );
    mount(
        Some("overlay"),
        path,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(|e| format!("overlay on {}: {e}", path.display()))
}

/// The minimal /dev.
fn dev() -> Result<(), String> {
    let dev = Path::new("/dev");
    // Copies of the host's device nodes, taken before /dev is covered.
    let mut nodes = Vec::new();
    for name in DEVICES {
        let host = dev.join(name);
        if host.exists() {
            let node = open_tree(libc::AT_FDCWD, &host, false)?;
            // The copy inherits the read-only root's nodev: these are the nodes that work.
            set_attr(
                node.as_raw_fd(),
                Path::new(""),
                false,
                0,
                MOUNT_ATTR_NODEV as u64,
            )?;
            nodes.push((name, node));
        }
    }
    tmpfs(
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    for (name, node) in nodes {
        let path = dev.join(name);
        make_mount_point(&path, true)?;
        move_mount(&node, &path)?;
    }
    let pts = dev.join("pts");
    make_mount_point(&pts, false)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )
    .map_err(|e| format!("mount a devpts on /dev/pts: {e}"))?;
    let shm = dev.join("shm");
    make_mount_point(&shm, false)?;
    tmpfs(&shm, MsFlags::MS_NOSUID | MsFlags::MS_NODEV, "mode=1777")?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(link))
            .map_err(|e| format!("make /dev/{link}: {e}"))?;
    }
    // Nothing more is created in /dev; its submounts (the nodes, pts, shm) keep their flags.
    read_only(dev, false)
}
