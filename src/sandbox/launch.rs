//! Tier 1: builds the sandbox and starts the command in it (DESIGN §4).
//!
//! ```text
//! netcage (proxy, host namespaces) ── fork, before any thread ──▶ holder
//!   holder: unshare(user? | net | mount | pid), uid/gid map, lo + local routes, listeners,
//!           nft rules, tmpfs over the data dir; sends the listeners back (SCM_RIGHTS)
//!     └─ fork ─▶ init (pid 1 of the new pid namespace): mounts /proc, starts the command
//!           └─ command: no capabilities (bounding set too), no_new_privs, PDEATHSIG
//! ```
//! Every process gets PDEATHSIG, and the namespaces are anonymous: when netcage dies, the
//! holder dies, init dies, the pid namespace kills the rest, and the namespaces vanish.

use std::ffi::OsString;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork, getppid};

use super::plan::{MountPlan, Ports, nft_ruleset};
use super::{fdpass, netlink, nft};

/// What to build and run.
pub struct LaunchSpec {
    /// No CAP_NET_ADMIN: use a user namespace.
    pub rootless: bool,
    pub nft: PathBuf,
    pub mounts: MountPlan,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
}

/// The namespace's sockets, now owned by the proxy.
pub struct SandboxSockets {
    /// NFLOG socket of the drop rule (see `nflog::parse`).
    pub nflog: Option<OwnedFd>,
    pub tcp: Vec<TcpListener>,
    pub dns_udp: Vec<UdpSocket>,
    pub dns_tcp: Vec<TcpListener>,
}

pub struct Launched {
    pub holder: Pid,
    pub sockets: SandboxSockets,
}

/// Signals passed on to the command. SIGINT/SIGQUIT come from the terminal to the whole
/// process group, the command included, so they are not passed on a second time.
pub const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Forks the holder and waits until the sandbox is ready or has failed. Must be called while
/// this process has one thread.
pub fn launch(spec: &LaunchSpec) -> Result<Launched, String> {
    let (parent_end, child_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| format!("socketpair: {e}"))?;
    let uid = Uid::current();
    let gid = Gid::current();
    let parent = Pid::this();
    // From here on the forwarded signals (and the terminal's SIGINT/SIGQUIT) stay blocked in
    // every thread of netcage, the runtime's threads included (they inherit this mask): one
    // thread takes them with sigwait and passes them on. Without this, a SIGTERM that arrives
    // before the proxy has installed its handlers kills netcage with the default action, and
    // the command gets SIGKILL (PDEATHSIG) instead of the SIGTERM meant for it.
    let signals = netcage_signals();
    signals
        .thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    // SAFETY: the caller guarantees this process is single-threaded, so the child may do
    // anything the parent could (allocate, run a current-thread runtime) before it execs.
    let forked = unsafe { fork() }.map_err(|e| format!("fork: {e}"));
    if forked.is_err() {
        let _ = signals.thread_unblock();
    }
    match forked? {
        ForkResult::Child => {
            drop(parent_end);
            let code = holder(spec, child_end, parent, uid, gid);
            // SAFETY: _exit ends the forked child without running the parent's atexit handlers
            // or flushing its stdio buffers a second time.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(child_end);
            let started = fdpass::recv(&parent_end)
                .map_err(|e| format!("reading from the sandbox: {e}"))
                .and_then(|(text, fds)| match text.strip_prefix("ok:") {
                    Some(kinds) => Ok(sockets_from(kinds, fds)),
                    None => Err(text
                        .strip_prefix("err:")
                        .map(str::to_owned)
                        .unwrap_or_else(|| "the sandbox process died while starting".into())),
                })
                .and_then(|sockets| forward_signals(child, signals).map(|()| sockets));
            match started {
                Ok(sockets) => Ok(Launched {
                    holder: child,
                    sockets,
                }),
                Err(e) => {
                    // The holder exits by itself after a failed build; after any other failure
                    // it must not outlive this attempt either. Then this process is as it was
                    // (Tier 0 may follow, with its own signal handling).
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    let _ = signals.thread_unblock();
                    Err(e)
                }
            }
        }
    }
}

/// The signals netcage's own threads never take: [`FORWARDED`], SIGINT and SIGQUIT.
fn netcage_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(*sig);
    }
    set.add(Signal::SIGINT);
    set.add(Signal::SIGQUIT);
    set
}

/// Starts the thread that passes [`FORWARDED`] signals on to the holder (which passes them to
/// init, which passes them to the command). SIGINT and SIGQUIT come from the terminal to the
/// whole process group, the command included, so netcage only survives them.
fn forward_signals(holder: Pid, signals: SigSet) -> Result<(), String> {
    std::thread::Builder::new()
        .name("netcage-signals".into())
        .spawn(move || {
            loop {
                if let Ok(sig) = signals.wait()
                    && FORWARDED.contains(&sig)
                {
                    let _ = kill(holder, sig);
                }
            }
        })
        .map(drop)
        .map_err(|e| format!("signal thread: {e}"))
}

fn sockets_from(kinds: &str, fds: Vec<OwnedFd>) -> SandboxSockets {
    let mut out = SandboxSockets {
        nflog: None,
        tcp: Vec::new(),
        dns_udp: Vec::new(),
        dns_tcp: Vec::new(),
    };
    for (kind, fd) in kinds.split(',').zip(fds) {
        match kind {
            "tcp" => out.tcp.push(TcpListener::from(fd)),
            "dns" => out.dns_udp.push(UdpSocket::from(fd)),
            "dnstcp" => out.dns_tcp.push(TcpListener::from(fd)),
            "nflog" => out.nflog = Some(fd),
            _ => {}
        }
    }
    out
}

/// Waits for the holder (blocking); its exit code is the command's.
pub fn wait(holder: Pid) -> i32 {
    loop {
        match waitpid(holder, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// The holder process: builds the namespaces, reports to the parent, then supervises init.
fn holder(spec: &LaunchSpec, sock: OwnedFd, parent: Pid, uid: Uid, gid: Gid) -> i32 {
    let built = build(spec, parent, uid, gid);
    let sent = match &built {
        Ok((kinds, fds)) => {
            let raw: Vec<_> = fds.iter().map(|f| f.as_raw_fd()).collect();
            fdpass::send(&sock, &format!("ok:{kinds}"), &raw)
        }
        Err(msg) => fdpass::send(&sock, &format!("err:{msg}"), &[]),
    };
    let ok = built.is_ok() && sent.is_ok();
    drop(built);
    drop(sock);
    if !ok {
        return 1;
    }
    let mask = supervisor_mask();
    if mask.thread_block().is_err() || unshare(CloneFlags::CLONE_NEWPID).is_err() {
        return 1;
    }
    // SAFETY: the holder is single-threaded (its netlink runtime was current-thread and is gone).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = init(spec);
            // SAFETY: ends the forked child without the parent's atexit handlers.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => supervise(child, &mask, false),
        Err(_) => 1,
    }
}

fn build(
    spec: &LaunchSpec,
    parent: Pid,
    uid: Uid,
    gid: Gid,
) -> Result<(String, Vec<OwnedFd>), String> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("PDEATHSIG: {e}"))?;
    if getppid() != parent {
        return Err("netcage exited while the sandbox was starting".into());
    }
    // The pid namespace comes last, just before init is forked: the first process forked after
    // it (here that would be `nft`) becomes its pid 1.
    let mut flags = CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS;
    if spec.rootless {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(|e| {
        format!(
            "unshare({}): {e}",
            if spec.rootless {
                "user, net, mount"
            } else {
                "net, mount"
            }
        )
    })?;
    if spec.rootless {
        // /proc/self of a non-dumpable process belongs to root: writable again only while
        // dumpable. Nothing of the sandbox runs yet, and it is switched off right after.
        prctl::set_dumpable(true).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
        let write = |file: &str, text: String| {
            std::fs::write(format!("/proc/self/{file}"), text)
                .map_err(|e| format!("write /proc/self/{file}: {e}"))
        };
        let mapped = write("setgroups", "deny".into())
            .and_then(|()| write("uid_map", format!("{uid} {uid} 1")))
            .and_then(|()| write("gid_map", format!("{gid} {gid} 1")));
        prctl::set_dumpable(false).map_err(|e| format!("PR_SET_DUMPABLE: {e}"))?;
        mapped?;
    }
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    netlink::isolate_loopback()?;

    let mut kinds = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    // Keeps a bound socket (its kind and descriptor) and returns its port; 0 when the bind
    // failed (IPv6 may be off: its traffic then meets the drop rule).
    let mut keep = |kind: &'static str, bound: std::io::Result<(OwnedFd, u16)>| match bound {
        Ok((fd, port)) => {
            kinds.push(kind);
            fds.push(fd);
            port
        }
        Err(_) => 0,
    };
    let tcp = |addr: &str| {
        let l = TcpListener::bind(addr)?;
        let port = l.local_addr()?.port();
        Ok((OwnedFd::from(l), port))
    };
    let udp = |addr: &str| {
        let s = UdpSocket::bind(addr)?;
        let port = s.local_addr()?.port();
        Ok((OwnedFd::from(s), port))
    };
    let ports = Ports {
        tcp4: keep("tcp", tcp("127.0.0.1:0")),
        tcp6: keep("tcp", tcp("[::1]:0")),
        dns4: keep("dns", udp("127.0.0.1:0")),
        dns6: keep("dns", udp("[::1]:0")),
        dns_tcp4: keep("dnstcp", tcp("127.0.0.1:0")),
        dns_tcp6: keep("dnstcp", tcp("[::1]:0")),
    };
    if ports.tcp4 == 0 || ports.dns4 == 0 {
        return Err("cannot listen on 127.0.0.1 inside the sandbox".into());
    }
    nft::load(&spec.nft, &nft_ruleset(&ports))?;
    // Without it dropped packets are still dropped, only not named in the audit log.
    if let Ok(fd) = super::nflog::open(super::plan::NFLOG_GROUP) {
        kinds.push("nflog");
        fds.push(fd);
    }
    apply_mounts(&spec.mounts)?;
    // A working directory inside the hidden directory would still reach the old contents:
    // enter it again by path, through the new mounts.
    if let Ok(cwd) = std::env::current_dir() {
        std::env::set_current_dir(&cwd).map_err(|e| format!("re-enter {}: {e}", cwd.display()))?;
    }
    Ok((kinds.join(","), fds))
}

fn apply_mounts(plan: &MountPlan) -> Result<(), String> {
    let dir = &plan.hide_dir;
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
    .map_err(|e| format!("hide {} behind a tmpfs: {e}", dir.display()))?;
    for (name, data) in &plan.public_files {
        std::fs::write(dir.join(name), data)
            .map_err(|e| format!("write {name} in the sandbox: {e}"))?;
    }
    for file in &plan.hide_files {
        mount(
            Some("/dev/null"),
            file,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("hide {}: {e}", file.display()))?;
    }
    for dir in &plan.empty_dirs {
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0755,size=1m"),
        )
        .map_err(|e| format!("hide {} behind a tmpfs: {e}", dir.display()))?;
    }
    Ok(())
}

fn supervisor_mask() -> SigSet {
    let mut mask = SigSet::empty();
    for sig in FORWARDED {
        mask.add(*sig);
    }
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGQUIT);
    mask
}

/// Waits for `child`, passing on forwarded signals; `reap_all` (init) also reaps orphans.
fn supervise(child: Pid, mask: &SigSet, reap_all: bool) -> i32 {
    loop {
        let Ok(sig) = mask.wait() else { continue };
        if sig != Signal::SIGCHLD {
            if FORWARDED.contains(&sig) {
                let _ = kill(child, sig);
            }
            continue;
        }
        loop {
            let target = if reap_all { Pid::from_raw(-1) } else { child };
            match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => return code,
                Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => return 128 + s as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

/// pid 1 of the sandbox: a /proc of its own, then the command.
fn init(spec: &LaunchSpec) -> i32 {
    let fail = |msg: String| {
        eprintln!("netcage: cannot build the sandbox: {msg}");
        1
    };
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
    let mut cmd = std::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: init is single-threaded; the closure runs in the forked command before exec and
    // only changes that process's own signal mask, capabilities and prctl flags.
    unsafe {
        cmd.pre_exec(|| {
            SigSet::all()
                .thread_unblock()
                .map_err(std::io::Error::from)?;
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            super::caps::drop_all()?;
            Ok(())
        });
    }
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return fail(format!(
                "cannot start {}: {e}",
                spec.program.to_string_lossy()
            ));
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    supervise(pid, &supervisor_mask(), true)
}

/// Kernel interfaces that file permissions alone guard: as root (uid 0, even with no
/// capabilities) the command could otherwise write global sysctls such as
/// `kernel.core_pattern` (code execution outside the sandbox on the next crash) or the host
/// name, trigger SysRq, or write cgroup and sysfs files. Read-only in the sandbox only.
const READ_ONLY: &[&str] = &["/proc/sys", "/proc/sysrq-trigger", "/sys"];

/// `mount_setattr(2)`'s argument (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// Makes `path` (a file or a directory tree, submounts included) read-only in this mount
/// namespace: a recursive bind mount of it onto itself, then the read-only flag on that tree.
/// Missing paths are skipped.
fn make_read_only(path: &str) -> Result<(), String> {
    if !std::path::Path::new(path).exists() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind {path} for a read-only view: {e}"))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let cpath = std::ffi::CString::new(path).map_err(|e| e.to_string())?;
    // SAFETY: mount_setattr reads `size_of::<MountAttr>()` bytes from a live, properly laid
    // out struct and a NUL-terminated path; it changes only mounts of this mount namespace.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            nix::libc::AT_FDCWD,
            cpath.as_ptr(),
            nix::libc::AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(nix::libc::ENOSYS) {
        return Err(format!("make {path} read-only: {err}"));
    }
    // Before Linux 5.12: remount each mount of the tree, keeping the flags it has (a mount
    // inherited from another user namespace may not lose nosuid, nodev or noexec).
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read /proc/self/mountinfo: {e}"))?;
    let prefix = format!("{}/", path.trim_end_matches('/'));
    let points = table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| *p == path || p.starts_with(&prefix));
    for point in points {
        let kept = statvfs(point)
            .map(|s| s.flags())
            .map_err(|e| format!("statvfs {point}: {e}"))?;
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        for (st, ms) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
            (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        ] {
            if kept.contains(st) {
                flags |= ms;
            }
        }
        mount(None::<&str>, point, None::<&str>, flags, None::<&str>)
            .map_err(|e| format!("make {point} read-only: {e}"))?;
    }
    Ok(())
}
