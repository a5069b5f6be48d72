//! The sandbox side: `netcage __holder`, exec'd by `launch`, or for `netcage run` forked at the
//! top of `main` and made into the same (`launch::Pending::fork_here`). Either way it starts
//! single-threaded and holds no secret of the proxy's: not its memory (the fork comes before
//! netcage reads a key or a secret), not its environment (cleared, or zeroed and cleared).
//!
//! ```text
//! holder: reads the HolderSpec on fd 3, builds the namespaces and the network (build.rs)
//!         while netcage works out the view, applies the HolderLayout that follows, sends the
//!         sockets back, unshares the pid namespace and forks init, then only waits for it
//!   └─ init (pid 1): mounts /proc, sends Ready; then serves the control socket: forks each
//!        command asked for, reports its pid and its exit, passes signals on
//!        └─ commands: no capabilities (bounding set too), no_new_privs
//! ```
//! The proxy side closing the control socket (or dying) is a shutdown with no grace: init
//! SIGKILLs everything and exits, the pid namespace takes the rest with it, and the holder
//! exits after init. Nothing outlives the proxy side.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl, open};
use nix::mount::{MsFlags, mount};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use super::build;
use super::control::{FromSandbox, HolderLayout, HolderSpec, Spawn, ToSandbox};
use super::fdpass;
use super::mounts::{READ_ONLY, make_read_only};

/// The descriptor `launch` puts the control socket on.
pub const CONTROL_FD: i32 = 3;

/// `netcage __holder`: returns the process's exit code. `cpus`: the CPUs to take back once
/// the spec has come (a forked holder that netcage moved off its own CPU to start it).
pub fn holder_main(cpus: Option<nix::sched::CpuSet>) -> i32 {
    crate::timing::mark("holder: main");
    // SAFETY: `launch` put the control socket on this descriptor (before exec, or in the forked
    // child), and nothing in this process has taken ownership of it.
    let sock = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    if fcntl(&sock, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).is_err() {
        eprintln!(
            "netcage: __holder is started by netcage itself, with its control socket on fd 3"
        );
        return 2;
    }
    // Descriptors netcage's caller leaked to it (not close-on-exec) must not reach the
    // commands: only the control socket stays.
    close_from(CONTROL_FD + 1);
    // Not even the commands' uid may read this process's memory or environment.
    let _ = prctl::set_dumpable(false);
    let spec: HolderSpec = match fdpass::recv(&sock) {
        Ok(Some((spec, _))) => spec,
        _ => return 1,
    };
    crate::timing::mark("holder: spec received");
    if let Some(cpus) = cpus
        && let Err(e) = nix::sched::sched_setaffinity(Pid::from_raw(0), &cpus)
    {
        eprintln!("netcage: the sandbox cannot run on all of netcage's CPUs: {e}");
    }
    // The network is built while netcage works out the view; a failure is reported after the
    // view has come, as the answer to it.
    let network = build::network(&spec);
    let layout: HolderLayout = match fdpass::recv(&sock) {
        Ok(Some((layout, _))) => layout,
        _ => return 1,
    };
    crate::timing::mark("holder: layout received");
    let built = network
        .and_then(|(kinds, fds)| build::filesystem(&layout.ops).map(|notes| (kinds, fds, notes)));
    drop(layout);
    crate::timing::mark("holder: built");
    let sent = match &built {
        Ok((kinds, fds, notes)) => {
            let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            fdpass::send(
                &sock,
                &FromSandbox::Built {
                    kinds: kinds.clone(),
                    notes: notes.clone(),
                },
                &raw,
            )
        }
        Err(msg) => fdpass::send(&sock, &FromSandbox::BuildFailed(msg.clone()), &[]),
    };
    let ok = built.is_ok() && sent.is_ok();
    drop(built);
    if !ok {
        return 1;
    }
    if SigSet::all().thread_block().is_err() {
        return 1;
    }
    // The pid namespace comes last, just before init is forked: the first process forked after
    // it becomes its pid 1.
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        let _ = fdpass::send(
            &sock,
            &FromSandbox::BuildFailed(format!("unshare(pid): {e}")),
            &[],
        );
        return 1;
    }
    // SAFETY: the holder is single-threaded (build starts no thread; its netlink is plain
    // blocking sockets), so the child may allocate and do anything the parent could.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = init(sock);
            // SAFETY: ends the forked child without the parent's atexit handlers.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(sock);
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return 0,
                    Err(nix::errno::Errno::ECHILD) => return 0,
                    _ => continue,
                }
            }
        }
        Err(e) => {
            let _ = fdpass::send(&sock, &FromSandbox::BuildFailed(format!("fork: {e}")), &[]);
            1
        }
    }
}

/// Closes every descriptor from `first` up.
fn close_from(first: i32) {
    // SAFETY: close_range takes plain integers; this single-threaded process owns no
    // descriptor above `first` that anything will use (none is open yet but leaked ones).
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first as nix::libc::c_uint,
            nix::libc::c_uint::MAX,
            0 as nix::libc::c_uint,
        )
    };
    if rc != 0 {
        // Before Linux 5.9: one by one.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd >= first)
                .collect();
            for fd in fds {
                let _ = nix::unistd::close(fd);
            }
        }
    }
}

/// pid 1 of the sandbox.
fn init(sock: OwnedFd) -> i32 {
    let fail = |msg: String| {
        let _ = fdpass::send(&sock, &FromSandbox::BuildFailed(msg), &[]);
        1
    };
    // The holder only dies when killed; then the sandbox must not live on.
    if let Err(e) = prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail(format!("PDEATHSIG: {e}"));
    }
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        return fail(format!("mount /proc: {e}"));
    }
    for path in READ_ONLY {
        if let Err(e) = make_read_only(path) {
            return fail(e);
        }
    }
    if let Err(e) = super::mounts::mask_kernel_files() {
        return fail(e);
    }
    let proc_dir = match open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(e) => return fail(format!("open /proc: {e}")),
    };
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    let sigfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => fd,
        Err(e) => return fail(format!("signalfd: {e}")),
    };
    crate::timing::mark("init: ready");
    if fdpass::send(&sock, &FromSandbox::Ready, &[proc_dir.as_raw_fd()]).is_err() {
        return 1;
    }
    drop(proc_dir);
    let mut init = Init {
        sock,
        sigfd,
        running: HashMap::new(),
        starting: Vec::new(),
        seccomp: None,
    };
    init.serve()
}

struct Running {
    id: u64,
    /// The terminal netcage runs on, to give back to the command's group when it resumes.
    tty: Option<OwnedFd>,
}

/// A forked command that has not exec'd yet: its status pipe (close-on-exec) reaches EOF at
/// exec, or carries the error. init never waits for it — a command could stop the child
/// (SIGSTOP, same uid) before it execs, and a blocked init would outlive netcage.
struct Starting {
    id: u64,
    pid: Pid,
    tty: Option<OwnedFd>,
    status: OwnedFd,
}

struct Init {
    sock: OwnedFd,
    sigfd: SignalFd,
    running: HashMap<Pid, Running>,
    starting: Vec<Starting>,
    /// The commands' seccomp programs, compiled once.
    seccomp: Option<Vec<seccompiler::BpfProgram>>,
}

impl Init {
    fn serve(&mut self) -> i32 {
        loop {
            let (sock_ready, sig_ready, started) = {
                let mut fds = vec![
                    PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN),
                ];
                for s in &self.starting {
                    fds.push(PollFd::new(s.status.as_fd(), PollFlags::POLLIN));
                }
                if poll(&mut fds, PollTimeout::NONE).is_err() {
                    continue;
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let started: Vec<Pid> = fds[2..]
                    .iter()
                    .zip(&self.starting)
                    .filter(|(f, _)| ready(f))
                    .map(|(_, s)| s.pid)
                    .collect();
                (ready(&fds[0]), ready(&fds[1]), started)
            };
            // Exec outcomes before exits: a command that ran and ended is Started, then Exited.
            for pid in started {
                self.resolve(pid);
            }
            if sig_ready {
                self.reap();
            }
            if sock_ready {
                match fdpass::recv::<ToSandbox>(&self.sock) {
                    Ok(Some((ToSandbox::Spawn(req), fds))) => self.spawn(req, fds),
                    Ok(Some((ToSandbox::Signal { id, signal }, _))) => self.signal(id, signal),
                    Ok(Some((ToSandbox::Resume { id, foreground }, _))) => {
                        self.resume(id, foreground)
                    }
                    Ok(Some((ToSandbox::Shutdown { grace_ms }, _))) => {
                        return self.shutdown(Duration::from_millis(grace_ms));
                    }
                    // A message that does not decode is a peer that is not netcage.
                    Ok(None) | Err(_) => return self.shutdown(Duration::ZERO),
                }
            }
        }
    }

    fn spawn(&mut self, req: Spawn, fds: Vec<OwnedFd>) {
        crate::timing::mark("init: spawn asked");
        let id = req.id;
        if self.seccomp.is_none() {
            match super::seccomp::filter() {
                Ok(progs) => self.seccomp = Some(progs),
                Err(error) => {
                    let _ = fdpass::send(&self.sock, &FromSandbox::SpawnFailed { id, error }, &[]);
                    return;
                }
            }
        }
        let seccomp = self.seccomp.clone().unwrap_or_default();
        crate::timing::mark("init: seccomp ready");
        match start(req, fds, seccomp) {
            Ok((pid, tty, status)) => self.starting.push(Starting {
                id,
                pid,
                tty,
                status,
            }),
            Err(error) => {
                let _ = fdpass::send(&self.sock, &FromSandbox::SpawnFailed { id, error }, &[]);
            }
        }
    }

    /// The exec of `pid` has an outcome (its status pipe is readable): Started or SpawnFailed.
    fn resolve(&mut self, pid: Pid) {
        let Some(i) = self.starting.iter().position(|s| s.pid == pid) else {
            return;
        };
        let s = self.starting.swap_remove(i);
        let mut buf = [0u8; 1024];
        let n = nix::unistd::read(&s.status, &mut buf).unwrap_or(0);
        let reply = if n == 0 {
            self.running.insert(
                s.pid,
                Running {
                    id: s.id,
                    tty: s.tty,
                },
            );
            FromSandbox::Started {
                id: s.id,
                pid: s.pid.as_raw(),
            }
        } else {
            FromSandbox::SpawnFailed {
                id: s.id,
                error: String::from_utf8_lossy(&buf[..n]).into_owned(),
            }
        };
        let _ = fdpass::send(&self.sock, &reply, &[]);
    }

    fn signal(&self, id: u64, signal: i32) {
        let Ok(sig) = Signal::try_from(signal) else {
            return;
        };
        for (pid, running) in &self.running {
            if running.id == id {
                // Every command leads a process group of its own.
                let _ = kill(Pid::from_raw(-pid.as_raw()), sig);
            }
        }
    }

    /// Job control: the command's group gets the terminal back (init shares netcage's
    /// session, and ignores SIGTTOU like every signal), then SIGCONT.
    fn resume(&self, id: u64, foreground: bool) {
        for (pid, running) in &self.running {
            if running.id == id {
                if let Some(tty) = running.tty.as_ref().filter(|_| foreground) {
                    let _ = nix::unistd::tcsetpgrp(tty, *pid);
                }
                let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGCONT);
            }
        }
    }

    /// Reaps every child that has exited (orphans included) and reports the commands'.
    fn reap(&mut self) {
        self.reap_with(Some(WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED));
    }

    /// With no flags: until no child is left.
    fn reap_with(&mut self, flags: Option<WaitPidFlag>) {
        while self.sigfd.read_signal().ok().flatten().is_some() {}
        loop {
            let (pid, status) = match waitpid(None, flags) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, (code & 0xff) << 8),
                Ok(WaitStatus::Signaled(pid, sig, core)) => {
                    (pid, sig as i32 | if core { 0x80 } else { 0 })
                }
                Ok(WaitStatus::Stopped(pid, sig)) => {
                    if let Some(running) = self.running.get(&pid) {
                        let msg = FromSandbox::Stopped {
                            id: running.id,
                            signal: sig as i32,
                        };
                        let _ = fdpass::send(&self.sock, &msg, &[]);
                    }
                    continue;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            crate::timing::mark("init: reaped");
            // Its exit closed the status pipe: the outcome of its exec is readable now.
            self.resolve(pid);
            if let Some(running) = self.running.remove(&pid) {
                let _ = fdpass::send(
                    &self.sock,
                    &FromSandbox::Exited {
                        id: running.id,
                        status,
                    },
                    &[],
                );
            }
        }
    }

    /// SIGTERM to every process of the sandbox, SIGKILL after `grace`, then exit (the pid
    /// namespace dies with its init).
    fn shutdown(&mut self, grace: Duration) -> i32 {
        crate::timing::mark("init: shutdown asked");
        if !grace.is_zero() {
            // kill(-1) from a pid namespace's init reaches every other process in it.
            let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                self.reap();
                if matches!(
                    waitpid(None, Some(WaitPidFlag::WNOHANG)),
                    Err(nix::errno::Errno::ECHILD)
                ) {
                    return 0;
                }
                let mut fds = [PollFd::new(self.sigfd.as_fd(), PollFlags::POLLIN)];
                let ms = left.as_millis().clamp(1, 1000) as u16;
                let _ = poll(&mut fds, PollTimeout::from(ms));
            }
        }
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        // Report the last exits (SIGKILL cannot be ignored: this ends quickly).
        self.reap_with(None);
        0
    }
}

/// What `start` hands init: the pid, the terminal (kept for job control), the status pipe
/// (EOF at exec, or the error).
type Forked = (Pid, Option<OwnedFd>, OwnedFd);

/// Forks one command, which execs on its own, in a process group of its own.
fn start(
    req: Spawn,
    fds: Vec<OwnedFd>,
    seccomp: Vec<seccompiler::BpfProgram>,
) -> Result<Forked, String> {
    let program = req.program();
    // The terminal (one of the stdio descriptors), kept by init to hand it back on resume.
    let tty = match req.tty.filter(|_| !req.new_session) {
        Some(index) => {
            let slot = req.stdio[..usize::from(index).min(2)]
                .iter()
                .filter(|present| **present)
                .count();
            fds.get(slot)
                .filter(|_| req.stdio.get(usize::from(index)) == Some(&true))
                .map(|fd| fd.try_clone())
                .transpose()
                .map_err(|e| format!("dup the terminal: {e}"))?
        }
        None => None,
    };
    let tty_index = tty.as_ref().and(req.tty).map(i32::from);
    let foreground = req.foreground;
    let mut fds = fds;
    let cgroup = match req.cgroup {
        true => fds.pop(),
        false => None,
    };
    let cgroup_fd = cgroup.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    let mut fds = fds.into_iter();
    let mut stdio = Vec::with_capacity(3);
    for present in req.stdio {
        stdio.push(match present.then(|| fds.next()).flatten() {
            Some(fd) => Stdio::from(fd),
            None => Stdio::null(),
        });
    }
    let mut stdio = stdio.into_iter();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(req.args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .env_clear()
        .envs(req.env.iter().map(|(k, v)| {
            (
                std::ffi::OsStr::from_bytes(k),
                std::ffi::OsStr::from_bytes(v),
            )
        }))
        .stdin(stdio.next().unwrap_or_else(Stdio::null))
        .stdout(stdio.next().unwrap_or_else(Stdio::null))
        .stderr(stdio.next().unwrap_or_else(Stdio::null));
    if let Some(cwd) = &req.cwd {
        let cwd = std::path::Path::new(std::ffi::OsStr::from_bytes(cwd));
        if !cwd.is_dir() {
            return Err(format!(
                "the working directory {} does not exist in the sandbox",
                cwd.display()
            ));
        }
        cmd.current_dir(cwd);
    }
    let new_session = req.new_session;
    let reset_signals = new_session && !req.keep_ignored;
    let rtmax = nix::libc::SIGRTMAX();
    // SAFETY: init is single-threaded; the closure runs in the forked command before exec and
    // only changes that process's own cgroup (a write to a descriptor kept open until after
    // the fork), signal mask, session or group, terminal foreground, capabilities, keyring,
    // Landlock domain and prctl flags.
    unsafe {
        cmd.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if let Some(fd) = cgroup_fd {
                // Into the exec's own cgroup (what names it to the eBPF program); a failure
                // leaves it where init is, and attribution falls back to its lineage.
                let _ = nix::unistd::write(std::os::fd::BorrowedFd::borrow_raw(fd), b"0");
            }
            if new_session {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
            }
            if reset_signals {
                // Signals ignored by whoever started serve (nohup, `&` in a script) are not
                // the command's: exec's forwarded SIGINT/SIGHUP must work. (`run` keeps them,
                // so `nohup netcage run …` means what it says.)
                for sig in 1..=rtmax {
                    if sig != nix::libc::SIGKILL && sig != nix::libc::SIGSTOP {
                        nix::libc::signal(sig, nix::libc::SIG_DFL);
                    }
                }
            }
            if !new_session {
                // A group of its own: `kill(0, …)` reaches only the command's processes, not
                // the shell or agent that started netcage.
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                    .map_err(std::io::Error::from)?;
                if foreground && let Some(fd) = tty_index {
                    // Still with every signal blocked, so SIGTTOU does not stop us.
                    let tty = std::os::fd::BorrowedFd::borrow_raw(fd);
                    nix::unistd::tcsetpgrp(tty, nix::unistd::getpid())
                        .map_err(std::io::Error::from)?;
                }
            }
            SigSet::all()
                .thread_unblock()
                .map_err(std::io::Error::from)?;
            super::caps::drop_all()?;
            // A fresh, empty session keyring (the syscalls are refused from here on anyway).
            nix::libc::syscall(
                nix::libc::SYS_keyctl,
                nix::libc::KEYCTL_JOIN_SESSION_KEYRING,
                std::ptr::null::<nix::libc::c_char>(),
            );
            // After no_new_privs (drop_all), which Landlock and an unprivileged filter need.
            super::landlock::scope_signals()?;
            super::seccomp::apply(&seccomp)?;
            Ok(())
        });
    }
    let (status_read, status_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: init is single-threaded, so the child may allocate; it only execs (through
    // std's exec, which runs the pre_exec hook above) or reports why it could not and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(status_read);
            let err = cmd.exec();
            let msg = format!("cannot start {}: {err}", program.to_string_lossy());
            let _ = nix::unistd::write(&status_write, msg.as_bytes());
            // SAFETY: ends the forked child without init's atexit handlers.
            unsafe { nix::libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(status_write);
            // The command's stdio descriptors (in `cmd`) close here; the child has its own.
            drop(cmd);
            drop(cgroup);
            Ok((child, tty, status_read))
        }
        Err(e) => Err(format!("fork: {e}")),
    }
}
