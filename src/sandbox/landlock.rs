//! Landlock scoping for each command (Linux 6.12+, Landlock ABI 6): its signals reach only
//! processes it started itself. The pid namespace already hides every process outside the
//! sandbox, but process groups and terminals reach across it (`kill(0, …)` from a command
//! that shares a group with something outside); with the scope, no signal leaves the
//! command — not to the shell that started netcage, not to init, not to another exec of the
//! same `serve`. Landlock also keeps ptrace within the command. Older kernels: not applied
//! (the command's own process group and the pid namespace still hold).

/// `landlock_ruleset_attr` with the ABI 6 `scoped` field.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_SCOPE_SIGNAL: u64 = 1 << 1;

/// The Landlock ABI this kernel speaks (0: none).
pub fn abi() -> i64 {
    // SAFETY: with a NULL attribute, size 0 and the VERSION flag, landlock_create_ruleset
    // only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    v.max(0)
}

/// Scopes the calling process's signals (no_new_privs must be set). Allocates nothing:
/// callable between fork and exec. A kernel without ABI 6 is not an error.
pub fn scope_signals() -> std::io::Result<()> {
    if abi() < 6 {
        return Ok(());
    }
    let attr = RulesetAttr {
        handled_access_fs: 0,
        handled_access_net: 0,
        scoped: LANDLOCK_SCOPE_SIGNAL,
    };
    // SAFETY: the kernel reads `size_of::<RulesetAttr>()` bytes of a live struct and returns
    // a new descriptor.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            std::mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: restrict_self takes the ruleset descriptor created above and flags.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor created above, which nothing else uses.
    unsafe { libc::close(fd as libc::c_int) };
    if rc != 0 {
        return Err(err);
    }
    Ok(())
}
