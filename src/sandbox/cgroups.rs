//! One cgroup per exec, when the eBPF program is loaded: the program records the cgroup id
//! of the task that connects, and a cgroup, unlike a session or a parent, is kept by every
//! process an exec starts (a `setsid` double-forked daemon too) and cannot be left from
//! inside the sandbox (its cgroup.procs is not there to write to). It names the exec even
//! after the process has exited.
//!
//! `<cgroup2 root>/netcage-<pid>/exec-<id>`: empty cgroups with no controllers, removed when
//! their exec has exited and nothing is left in them, the rest when the sandbox ends. Those
//! of a netcage that is gone (killed with SIGKILL, or whose processes were still dying when
//! it ended) are removed by the next one to start (nothing runs in them once its sandbox
//! is gone).

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct ExecCgroups {
    base: PathBuf,
}

/// A new exec's cgroup: its id (what the eBPF program records), its directory, and its
/// cgroup.procs open for writing (the command writes "0" to it before it execs).
pub struct ExecCgroup {
    pub id: u64,
    pub dir: PathBuf,
    pub procs: OwnedFd,
}

impl ExecCgroups {
    /// Creates `netcage-<pid>` under the cgroup2 root (and removes those of netcages gone).
    pub fn new(root: &Path) -> std::io::Result<ExecCgroups> {
        sweep(root);
        let base = root.join(format!("netcage-{}", std::process::id()));
        match std::fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(ExecCgroups { base })
    }

    pub fn create(&self, exec: u64) -> std::io::Result<ExecCgroup> {
        let dir = self.base.join(format!("exec-{exec}"));
        std::fs::create_dir(&dir)?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        // A cgroup2 directory's inode number is the cgroup id (bpf_get_current_cgroup_id).
        let id = std::fs::metadata(&dir)?.ino();
        Ok(ExecCgroup {
            id,
            dir,
            procs: procs.into(),
        })
    }
}

/// Removes the empty cgroups of netcage processes that no longer exist.
fn sweep(root: &Path) {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return;
    };
    for dir in dirs.flatten() {
        let name = dir.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("netcage-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            drop(ExecCgroups { base: dir.path() });
        }
    }
}

/// Removes an exec's cgroup if nothing is left in it (true when it is gone).
pub fn remove(dir: &Path) -> bool {
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

impl Drop for ExecCgroups {
    fn drop(&mut self) {
        if let Ok(dirs) = std::fs::read_dir(&self.base) {
            for dir in dirs.flatten() {
                if dir.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(dir.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.base);
    }
}
