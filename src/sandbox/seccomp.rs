//! The commands' seccomp filter: one table of what is refused, and why.
//!
//! The table follows Docker's default profile where that profile refuses something the
//! namespaces do not already take away, plus what reaches past the namespaces (vsock to the
//! hypervisor, kernel keyrings, new namespaces of the command's own). Every refusal is EPERM,
//! except `clone3`, which gets ENOSYS so that C libraries fall back to `clone`, whose flags
//! the filter can see (clone3 passes them in memory). Syscalls of another ABI are stopped too:
//! i386 ones kill the process, x32 ones get ENOSYS (netcage runs 64-bit commands).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

/// When a syscall is refused.
#[derive(Debug, Clone, Copy)]
pub enum When {
    Always,
    /// Argument `.0` equals `.1`.
    ArgIs(u8, u64),
    /// Argument `.0` has any of the bits of `.1` set.
    ArgHasAny(u8, u64),
}

/// One refused syscall.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub name: &'static str,
    pub nr: i64,
    pub when: When,
    pub why: &'static str,
}

/// Namespace flags of `clone` (its low byte is the exit signal, so CLONE_NEWTIME's bit is
/// not one of them there).
const CLONE_NS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;
const UNSHARE_NS: u64 = CLONE_NS | 0x80; // CLONE_NEWTIME

const fn r(name: &'static str, nr: i64, when: When, why: &'static str) -> Refusal {
    Refusal {
        name,
        nr,
        when,
        why,
    }
}

/// What commands may not do. README's table is this one.
// The ioctl request type is u64 on glibc targets but not on every libc.
#[allow(clippy::unnecessary_cast)]
pub const REFUSED: &[Refusal] = &[
    r(
        "socket",
        libc::SYS_socket,
        When::ArgIs(0, libc::AF_VSOCK as u64),
        "vsock reaches the hypervisor and its other guests around the network namespace and the proxy",
    ),
    r(
        "ioctl",
        libc::SYS_ioctl,
        When::ArgIs(1, libc::TIOCSTI as u64),
        "pushes keystrokes into a terminal the command shares with the shell outside",
    ),
    r(
        "ioctl",
        libc::SYS_ioctl,
        When::ArgIs(1, libc::TIOCLINUX as u64),
        "can push keystrokes into a virtual console",
    ),
    r(
        "keyctl",
        libc::SYS_keyctl,
        When::Always,
        "kernel keyrings (the user's and session's) are not the sandbox's",
    ),
    r(
        "add_key",
        libc::SYS_add_key,
        When::Always,
        "kernel keyrings are not the sandbox's",
    ),
    r(
        "request_key",
        libc::SYS_request_key,
        When::Always,
        "kernel keyrings are not the sandbox's",
    ),
    r(
        "bpf",
        libc::SYS_bpf,
        When::Always,
        "kernel programs and maps: a large attack surface, and a way to observe the host",
    ),
    r(
        "perf_event_open",
        libc::SYS_perf_event_open,
        When::Always,
        "kernel and hardware events of the host; side channels",
    ),
    r(
        "userfaultfd",
        libc::SYS_userfaultfd,
        When::Always,
        "a common ingredient of kernel exploits",
    ),
    r(
        "io_uring_setup",
        libc::SYS_io_uring_setup,
        When::Always,
        "io_uring bypasses syscall filtering and has been a rich source of kernel bugs",
    ),
    r(
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        When::Always,
        "io_uring (see io_uring_setup)",
    ),
    r(
        "io_uring_register",
        libc::SYS_io_uring_register,
        When::Always,
        "io_uring (see io_uring_setup)",
    ),
    r(
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        When::Always,
        "opens files by handle, around the mount namespace that hides them",
    ),
    r(
        "kexec_load",
        libc::SYS_kexec_load,
        When::Always,
        "loads a new kernel",
    ),
    r(
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        When::Always,
        "loads a new kernel",
    ),
    r(
        "init_module",
        libc::SYS_init_module,
        When::Always,
        "loads kernel modules",
    ),
    r(
        "finit_module",
        libc::SYS_finit_module,
        When::Always,
        "loads kernel modules",
    ),
    r(
        "delete_module",
        libc::SYS_delete_module,
        When::Always,
        "unloads kernel modules",
    ),
    r(
        "unshare",
        libc::SYS_unshare,
        When::ArgHasAny(0, UNSHARE_NS),
        "new namespaces of the command's own (a user namespace gives back capabilities inside it: more kernel attack surface)",
    ),
    r(
        "clone",
        libc::SYS_clone,
        When::ArgHasAny(0, CLONE_NS),
        "new namespaces (see unshare)",
    ),
    r(
        "setns",
        libc::SYS_setns,
        When::Always,
        "entering other namespaces",
    ),
    r(
        "mount",
        libc::SYS_mount,
        When::Always,
        "changing the filesystem view",
    ),
    r(
        "umount2",
        libc::SYS_umount2,
        When::Always,
        "uncovering what the view hides",
    ),
    r(
        "pivot_root",
        libc::SYS_pivot_root,
        When::Always,
        "changing the filesystem view",
    ),
    r(
        "chroot",
        libc::SYS_chroot,
        When::Always,
        "changing the filesystem view",
    ),
    r(
        "open_tree",
        libc::SYS_open_tree,
        When::Always,
        "copying mounts (the new mount API)",
    ),
    r(
        "move_mount",
        libc::SYS_move_mount,
        When::Always,
        "moving mounts (the new mount API)",
    ),
    r(
        "fsopen",
        libc::SYS_fsopen,
        When::Always,
        "new file systems (the new mount API)",
    ),
    r(
        "fsconfig",
        libc::SYS_fsconfig,
        When::Always,
        "new file systems (the new mount API)",
    ),
    r(
        "fsmount",
        libc::SYS_fsmount,
        When::Always,
        "new file systems (the new mount API)",
    ),
    r(
        "fspick",
        libc::SYS_fspick,
        When::Always,
        "reconfiguring file systems (the new mount API)",
    ),
    r(
        "mount_setattr",
        libc::SYS_mount_setattr,
        When::Always,
        "changing mount flags (the new mount API)",
    ),
    r(
        "syslog",
        libc::SYS_syslog,
        When::Always,
        "the kernel log (addresses, other users' activity)",
    ),
    r(
        "acct",
        libc::SYS_acct,
        When::Always,
        "process accounting of the host",
    ),
    r("swapon", libc::SYS_swapon, When::Always, "the host's swap"),
    r(
        "swapoff",
        libc::SYS_swapoff,
        When::Always,
        "the host's swap",
    ),
    r(
        "reboot",
        libc::SYS_reboot,
        When::Always,
        "rebooting the host",
    ),
    r(
        "quotactl",
        libc::SYS_quotactl,
        When::Always,
        "disk quotas of the host",
    ),
    r(
        "lookup_dcookie",
        libc::SYS_lookup_dcookie,
        When::Always,
        "kernel profiling",
    ),
    r(
        "fanotify_init",
        libc::SYS_fanotify_init,
        When::Always,
        "watching the host's file accesses",
    ),
    r(
        "vhangup",
        libc::SYS_vhangup,
        When::Always,
        "hanging up the terminal",
    ),
    r("iopl", libc::SYS_iopl, When::Always, "raw I/O ports"),
    r("ioperm", libc::SYS_ioperm, When::Always, "raw I/O ports"),
    r(
        "settimeofday",
        libc::SYS_settimeofday,
        When::Always,
        "the host's clock",
    ),
    r(
        "clock_settime",
        libc::SYS_clock_settime,
        When::Always,
        "the host's clock",
    ),
    r(
        "clock_adjtime",
        libc::SYS_clock_adjtime,
        When::Always,
        "the host's clock",
    ),
    r(
        "adjtimex",
        libc::SYS_adjtimex,
        When::Always,
        "the host's clock",
    ),
    r("uselib", libc::SYS_uselib, When::Always, "obsolete"),
    r("ustat", libc::SYS_ustat, When::Always, "obsolete"),
    r("sysfs", libc::SYS_sysfs, When::Always, "obsolete"),
    r("_sysctl", libc::SYS__sysctl, When::Always, "obsolete"),
    r("nfsservctl", libc::SYS_nfsservctl, When::Always, "obsolete"),
];

/// x32 syscalls on x86_64 carry this bit and have numbers of their own.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn rule(when: When) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    // The low 32 bits only: the kernel takes these arguments as `int` or `unsigned int`
    // (socket's domain, ioctl's request) or uses no higher bit (namespace flags), so a value
    // with high bits set must match as the kernel will read it.
    let cond = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    Ok(match when {
        When::Always => Vec::new(),
        When::ArgIs(arg, value) => vec![cond(arg, SeccompCmpOp::Eq, value)?],
        // One rule per bit: the rules of a syscall are alternatives.
        When::ArgHasAny(arg, mask) => (0..64)
            .map(|bit| 1u64 << bit)
            .filter(|b| mask & b != 0)
            .map(|b| cond(arg, SeccompCmpOp::MaskedEq(b), b))
            .collect::<Result<_, _>>()?,
    })
}

/// The two programs (before fork: this allocates): the table, and the ABI guard.
pub fn filter() -> Result<Vec<BpfProgram>, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| format!("no seccomp filter for {}", std::env::consts::ARCH))?;
    let err = |e: seccompiler::BackendError| format!("seccomp filter: {e}");
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // No syscall is refused both always and under a condition (an empty rule list means
    // always).
    for r in REFUSED {
        map.entry(r.nr)
            .or_default()
            .extend(rule(r.when).map_err(err)?);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    let table = BpfProgram::try_from(filter).map_err(|e| format!("seccomp filter: {e}"))?;
    Ok(vec![table, abi_guard()])
}

/// `clone3` → ENOSYS, x32 syscalls → ENOSYS, the rest allowed (the table's program checks
/// the architecture).
fn abi_guard() -> BpfProgram {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code: u16, k: u32| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u16, k: u32, jt: u8, jf: u8| sock_filter { code, jt, jf, k };
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    vec![
        // seccomp_data.nr is at offset 0.
        stmt(LD_W_ABS, 0),
        jump(JGE_K, X32_SYSCALL_BIT, 2, 0),
        jump(JEQ_K, libc::SYS_clone3 as u32, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(RET_K, enosys),
    ]
}

/// Installs the programs on the calling thread (no_new_privs must be set). Allocates
/// nothing: callable between fork and exec.
pub fn apply(progs: &[BpfProgram]) -> std::io::Result<()> {
    for prog in progs {
        seccompiler::apply_filter(prog).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_filter_builds_for_this_machine() {
        let progs = super::filter().expect("filter");
        assert_eq!(progs.len(), 2);
        assert!(progs[0].len() > 50, "{:?}", progs[0].len());
    }

    #[test]
    fn every_refusal_says_why_and_none_is_both_always_and_conditional() {
        use super::{REFUSED, When};
        for r in REFUSED {
            assert!(r.why.len() > 5, "{}", r.name);
            let always = matches!(r.when, When::Always);
            assert!(
                REFUSED
                    .iter()
                    .filter(|o| o.nr == r.nr)
                    .all(|o| matches!(o.when, When::Always) == always),
                "{}",
                r.name
            );
        }
    }
}
