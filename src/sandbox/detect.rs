//! What this machine allows: CAP_NET_ADMIN, unprivileged user namespaces.

use std::path::PathBuf;

use caps::{CapSet, Capability};

/// The facts `doctor` and `--tier auto` decide on.
#[derive(Debug, Clone)]
pub struct Facts {
    pub cap_net_admin: bool,
    /// `unshare(CLONE_NEWNET)` works in this process's context (root path).
    pub netns: Result<(), String>,
    /// `unshare(CLONE_NEWUSER | CLONE_NEWNET)` works (rootless path).
    pub userns: Result<(), String>,
}

/// What `run` decides on without forking probes (each probe creates and destroys a network
/// namespace, which costs milliseconds): whether we hold CAP_NET_ADMIN (root path) or must use
/// a user namespace. A sandbox that then cannot be built reports why.
pub fn quick() -> bool {
    caps::has_cap(None, CapSet::Effective, Capability::CAP_NET_ADMIN).unwrap_or(false)
}

pub fn facts() -> Facts {
    Facts {
        cap_net_admin: quick(),
        netns: probe_unshare(libc::CLONE_NEWNET),
        userns: probe_unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET),
    }
}

/// Does the kernel have `mount_setattr` (Linux 5.12), the newest call of the mount API the
/// filesystem view needs? (Asked with invalid arguments: EINVAL or EBADF means it exists.)
pub fn mount_api() -> bool {
    // SAFETY: a NULL path and attribute with size 0 make the kernel fail early without
    // touching memory; only the error tells whether the syscall exists.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            std::ptr::null::<libc::c_char>(),
            0,
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Tries `unshare(flags)` in a forked child so this process is left as it was.
fn probe_unshare(flags: libc::c_int) -> Result<(), String> {
    // SAFETY: fork in a process that may have other threads: the child calls only
    // async-signal-safe functions (unshare, __errno_location via the return, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork failed: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the forked child; unshare and _exit are async-signal-safe.
        unsafe {
            let rc = libc::unshare(flags);
            let code = if rc == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code.clamp(0, 255));
        }
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above; status is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc != pid || !libc::WIFEXITED(status) {
        return Err("probe process did not exit normally".into());
    }
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno).to_string()),
    }
}

/// Known reasons unprivileged user namespaces are off, for `doctor`.
pub fn userns_knobs() -> Vec<String> {
    [
        "/proc/sys/kernel/unprivileged_userns_clone",
        "/proc/sys/user/max_user_namespaces",
        "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
    ]
    .iter()
    .filter_map(|p| Some(format!("{p} = {}", std::fs::read_to_string(p).ok()?.trim())))
    .collect()
}
