//! Process attributes for netcage itself and for the child.

use std::io;
use std::os::unix::process::CommandExt;
use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Makes this process non-dumpable: no core dumps, and other processes of the same user can no
/// longer ptrace it or read `/proc/<pid>/mem` or `environ`.
pub fn set_non_dumpable() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes plain integers and changes only this process.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Zeroes this process's environment (every `NAME=value` string, in place) and empties it:
/// for a process forked from netcage that must hold none of the values (the sandbox holder),
/// which may be the real secrets netcage seals. Only for a single-threaded process: nothing
/// else may read the environment meanwhile.
pub(crate) fn scrub_environment() {
    // SAFETY: the caller is single-threaded, so nothing reads or changes `environ` meanwhile;
    // each entry is a NUL-terminated string that libc or the kernel put there, writable (the
    // process's stack, or memory setenv allocated), and zeroing its bytes up to the NUL
    // keeps it a valid (empty) string until clearenv drops the array.
    unsafe {
        let mut entry = libc::environ;
        while !entry.is_null() && !(*entry).is_null() {
            let s = *entry;
            let len = libc::strlen(s);
            zeroize::Zeroize::zeroize(std::slice::from_raw_parts_mut(s.cast::<u8>(), len));
            entry = entry.add(1);
        }
        libc::clearenv();
    }
}

/// The descriptor limits netcage started with, before [`raise_nofile_limit`].
static ORIGINAL_NOFILE: OnceLock<libc::rlimit> = OnceLock::new();

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit: the proxy holds a descriptor
/// for each connection and one for its upstream. Returns the new limit. Commands netcage
/// starts afterwards get the limit it started with back ([`restore_nofile_limit`]): many
/// programs still use `select`, which breaks past 1024.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    ORIGINAL_NOFILE.get_or_init(|| libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    });
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// In a forked child before exec: the descriptor limit netcage started with, if it raised
/// its own. Only a system call, so safe between fork and exec.
pub(crate) fn restore_nofile_limit() -> io::Result<()> {
    if let Some(original) = ORIGINAL_NOFILE.get() {
        // SAFETY: setrlimit reads the struct it is given and changes only this process; it is
        // async-signal-safe.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, original) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The child gets SIGKILL when the thread that spawned it (netcage's main thread) dies, and
/// the descriptor limit netcage started with.
pub fn kill_with_parent(cmd: &mut std::process::Command) {
    // SAFETY: the closure runs between fork and exec and calls only prctl, getppid and
    // setrlimit, which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            restore_nofile_limit()?;
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would kill us later.
            if libc::getppid() == 1 {
                return Err(io::Error::other(
                    "netcage exited while starting the command",
                ));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill takes plain integers; a stale pid yields ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Gives the C allocator's free memory back to the system: glibc's `malloc_trim(0)` returns
/// the free pages of every arena, not only those at the top of the heap. A no-op with other C
/// libraries.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and works on the allocator's own free lists under
    // its own locks; it frees nothing that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
