//! The commands' seccomp filter: no injecting input into a terminal.
//!
//! A command that shares netcage's terminal (`netcage run` keeps it, so job control works)
//! could push keystrokes into it with `ioctl(TIOCSTI)` — they are read by the shell that
//! started netcage, outside the sandbox, after the command exits: an escape. `TIOCLINUX` can
//! do the same on a virtual console. Both fail with EPERM; everything else is allowed. The
//! filter also stops syscalls of another ABI (i386) from slipping past it: such a process is
//! killed (netcage runs 64-bit commands only).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// x32 syscalls on x86_64 carry this bit and have numbers of their own (ioctl is 514).
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// Builds the filter (before fork: this allocates).
// The ioctl request type is u64 on glibc targets but not on every libc.
#[allow(clippy::unnecessary_cast)]
pub fn filter() -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| format!("no seccomp filter for {}", std::env::consts::ARCH))?;
    let err = |e: seccompiler::BackendError| format!("seccomp filter: {e}");
    let cmd_is = |cmd: u64| {
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, cmd)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    let rules = || -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        Ok(vec![
            cmd_is(libc::TIOCSTI as u64)?,
            cmd_is(libc::TIOCLINUX as u64)?,
        ])
    };
    let mut map = BTreeMap::new();
    map.insert(libc::SYS_ioctl, rules().map_err(err)?);
    if arch == TargetArch::x86_64 {
        map.insert(X32_SYSCALL_BIT | 514, rules().map_err(err)?);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    BpfProgram::try_from(filter).map_err(|e| format!("seccomp filter: {e}"))
}

/// Installs `prog` on the calling thread (no_new_privs must be set). Allocates nothing:
/// callable between fork and exec.
pub fn apply(prog: &BpfProgram) -> std::io::Result<()> {
    seccompiler::apply_filter(prog).map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filter_builds_for_this_machine() {
        let prog = super::filter().expect("filter");
        assert!(prog.len() > 5, "{prog:?}");
    }
}
