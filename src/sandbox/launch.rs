//! Tier 1, the proxy side: starts the holder (`netcage __holder`, see `holder.rs`), waits until
//! the sandbox is built, and takes over its sockets and its control channel.
//!
//! The holder is exec'd, so this works from a multi-threaded process (an agent server's async
//! runtime): a user namespace can only be created by a single-threaded process, and a fresh
//! exec is one. `netcage run` forks it instead, first thing in `main`, while it is still
//! single-threaded and holds nothing but its environment ([`Pending::fork_here`]): that
//! saves the exec of a 15 MB binary on every run's critical path.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};

use super::control::{FromSandbox, HolderLayout, HolderSpec, SocketKind};
use super::fdpass;
use super::holder::CONTROL_FD;
use super::layout::Op;

/// The namespace's sockets, now owned by the proxy.
pub struct SandboxSockets {
    /// NFLOG socket of the drop rule (see `nflog::parse`).
    pub nflog: Option<OwnedFd>,
    pub tcp: Vec<TcpListener>,
    pub dns_udp: Vec<UdpSocket>,
    pub dns_tcp: Vec<TcpListener>,
}

pub struct Launched {
    /// The holder process (reap it after shutdown).
    pub holder: Holder,
    /// The control channel to the sandbox's init (see `control.rs`).
    pub control: OwnedFd,
    /// The sandbox's /proc (which process owns which socket: `owner.rs`).
    pub proc_dir: OwnedFd,
    pub sockets: SandboxSockets,
    /// What the holder said about the view (a fallback it took).
    pub notes: Vec<String>,
    /// The filesystem view the sandbox was built with (what is hidden, what is writable).
    pub view: super::layout::Layout,
    /// The real values of the sealed credential files in the view, for the proxy.
    pub sealed_values: Vec<crate::proxy::SealedValue>,
    /// The AWS keys of the sealed `~/.aws` files, for the proxy to re-sign with.
    pub sealed_aws: Vec<crate::aws::AwsCredential>,
}

/// A holder started (`exe __holder`) that has not been given its spec yet. Starting it is an
/// exec of netcage's own binary (milliseconds); `netcage run` starts it first and resolves
/// its configuration meanwhile. Dropped unfinished, the holder is killed and reaped.
pub struct Pending {
    holder: Unfinished,
    sock: OwnedFd,
}

/// The holder process: exec'd ([`Pending::spawn`]) or forked ([`Pending::fork_here`]).
pub enum Holder {
    Spawned(Child),
    Forked(Pid),
}

impl Holder {
    /// SIGKILL (init, its pid namespace's reaper, dies with it).
    pub fn kill(&mut self) {
        match self {
            Holder::Spawned(child) => drop(child.kill()),
            Holder::Forked(pid) => drop(kill(*pid, Signal::SIGKILL)),
        }
    }

    /// Blocks until the holder has exited, and reaps it.
    pub fn wait(&mut self) {
        match self {
            Holder::Spawned(child) => drop(child.wait()),
            Holder::Forked(pid) => while let Err(Errno::EINTR) = waitpid(*pid, None) {},
        }
    }
}

/// The holder until the sandbox is ready: killed and reaped if dropped before.
struct Unfinished(Option<Holder>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut holder) = self.0.take() {
            holder.kill();
            holder.wait();
        }
    }
}

/// What [`Pending::fork_here`] returns in each of the two processes.
pub enum Forked {
    /// In netcage: the holder, waiting for its layout.
    Netcage(Pending),
    /// In the holder, once it is done: its exit code.
    Holder(i32),
}

impl Pending {
    /// Starts the holder and gives it its [`HolderSpec`]: it builds the namespaces and the
    /// network, then waits for the filesystem view ([`Pending::start`]).
    pub fn spawn(exe: &Path) -> Result<Pending, String> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let theirs_raw = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(exe);
        cmd.arg("__holder")
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if crate::timing::enabled() {
            cmd.env(crate::timing::VAR, "1");
        }
        // The holder and init take no signals but SIGKILL: a terminal's SIGINT reaches the
        // whole process group, and it is the command's to handle, not theirs. (std resets the
        // mask before this hook runs.)
        let all = nix::sys::signal::SigSet::all();
        // SAFETY: runs between fork and exec; sigprocmask, dup2, fcntl and setrlimit are
        // async-signal-safe and touch only the child's own state, so this is sound in a
        // multi-threaded parent.
        unsafe {
            cmd.pre_exec(move || {
                // The sandbox's commands get the descriptor limit netcage started with.
                super::process::restore_nofile_limit()?;
                if nix::libc::sigprocmask(nix::libc::SIG_BLOCK, all.as_ref(), std::ptr::null_mut())
                    < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if theirs_raw == CONTROL_FD {
                    // dup2 onto itself would keep close-on-exec set.
                    if nix::libc::fcntl(CONTROL_FD, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if nix::libc::dup2(theirs_raw, CONTROL_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let holder = cmd
            .spawn()
            .map_err(|e| format!("cannot start the sandbox holder {}: {e}", exe.display()))?;
        drop(theirs);
        crate::timing::mark("holder spawned");
        Pending {
            holder: Unfinished(Some(Holder::Spawned(holder))),
            sock: ours,
        }
        .send_spec()
    }

    /// Forks the holder from this process, which must not have started a thread yet: `None`
    /// when it has (a forked child of a multi-threaded process may only exec), or when the
    /// fork failed; [`Pending::spawn`] is the way then. The holder gets what an exec'd one
    /// has: no environment (its copy of the variables, which may hold the real values of
    /// sealed secrets, is zeroed before anything else), /dev/null for stdin and stdout, every
    /// signal blocked, not dumpable, no descriptor but the control socket and stderr.
    pub fn fork_here() -> Option<Forked> {
        if !single_threaded() {
            return None;
        }
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .ok()?;
        // Read before the environment is zeroed: the holder's steps are timed too.
        crate::timing::enabled();
        let cpus = nix::sched::sched_getaffinity(Pid::from_raw(0)).ok();
        // SAFETY: this process has one thread (checked above), so the child is a full copy
        // that may allocate and run any code; it never returns into netcage's own work.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                drop(ours);
                Some(Forked::Holder(become_holder(theirs, cpus)))
            }
            Ok(ForkResult::Parent { child }) => {
                drop(theirs);
                if let Some(cpus) = &cpus {
                    move_off_this_cpu(child, cpus);
                }
                crate::timing::mark("holder forked");
                let pending = Pending {
                    holder: Unfinished(Some(Holder::Forked(child))),
                    sock: ours,
                };
                pending.send_spec().ok().map(Forked::Netcage)
            }
            Err(_) => None,
        }
    }

    /// Sends the holder its [`HolderSpec`]; dropping `self` on an error kills it.
    fn send_spec(self) -> Result<Pending, String> {
        let spec = HolderSpec {
            rootless: !super::detect::quick(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        fdpass::send(&self.sock, &spec, &[]).map_err(|e| format!("starting the sandbox: {e}"))?;
        Ok(self)
    }

    /// Gives the holder the filesystem view; it finishes the sandbox meanwhile
    /// ([`Building::wait`]).
    pub fn start(self, layout: &[Op]) -> Result<Building, String> {
        let layout = HolderLayout {
            ops: layout.to_vec(),
        };
        fdpass::send(&self.sock, &layout, &[]).map_err(|e| format!("starting the sandbox: {e}"))?;
        Ok(Building {
            holder: self.holder,
            sock: self.sock,
        })
    }
}

/// A holder building the sandbox from its spec.
pub struct Building {
    holder: Unfinished,
    sock: OwnedFd,
}

impl Building {
    /// Waits (blocking) until the sandbox is ready or has failed.
    pub fn wait(mut self) -> Result<Launched, String> {
        let (sockets, proc_dir, notes) = handshake(&self.sock)?;
        let holder = self.holder.0.take().ok_or("the sandbox holder is gone")?;
        Ok(Launched {
            holder,
            control: self.sock,
            proc_dir,
            sockets,
            notes,
            view: Default::default(),
            sealed_values: Vec::new(),
            sealed_aws: Vec::new(),
        })
    }
}

/// Does this process have only one thread (`/proc/self/task` lists one)?
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|tasks| tasks.take(2).count() == 1)
}

/// Starts the just forked holder on another of `cpus` than this one, where it runs at once:
/// left to the scheduler, it is queued on netcage's own CPU about half the time, behind
/// netcage's work, and starts 1–3 ms late (0.3 ms moved, on this 2-CPU VM). The holder takes
/// `cpus` back once it has its spec, which comes after this (see `holder::holder_main`), so
/// the sandbox's commands may run on every CPU netcage may.
fn move_off_this_cpu(child: Pid, cpus: &nix::sched::CpuSet) {
    let Ok(here) = nix::sched::sched_getcpu() else {
        return;
    };
    let mut others = *cpus;
    if others.unset(here).is_err() {
        return;
    }
    if others != nix::sched::CpuSet::new() {
        let _ = nix::sched::sched_setaffinity(child, &others);
    }
}

/// The forked child turned into what [`Pending::spawn`]'s exec makes: see
/// [`Pending::fork_here`]. Returns the holder's exit code.
fn become_holder(sock: OwnedFd, cpus: Option<nix::sched::CpuSet>) -> i32 {
    if SigSet::all().thread_block().is_err() {
        return 1;
    }
    // Not even the commands' uid may read this process's memory, from here on.
    if super::process::set_non_dumpable().is_err() {
        return 1;
    }
    super::process::scrub_environment();
    let Ok(null) = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    ) else {
        return 1;
    };
    for fd in [0, 1] {
        // SAFETY: dup2 onto stdin and stdout, which this process owns; `null` stays valid.
        if unsafe { nix::libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return 1;
        }
    }
    drop(null);
    // The holder's own start expects its control socket on CONTROL_FD and closes the rest.
    if sock.as_raw_fd() != CONTROL_FD {
        // SAFETY: dup2 onto CONTROL_FD, whatever was there (a descriptor netcage's caller
        // leaked) is closed; `sock` stays valid and is closed below.
        if unsafe { nix::libc::dup2(sock.as_raw_fd(), CONTROL_FD) } < 0 {
            return 1;
        }
        drop(sock);
    } else {
        // It is CONTROL_FD: holder_main takes ownership of it by number.
        std::mem::forget(sock);
    }
    super::holder::holder_main(cpus)
}

type Handshake = (SandboxSockets, OwnedFd, Vec<String>);

fn handshake(sock: &OwnedFd) -> Result<Handshake, String> {
    let died = || "the sandbox process died while starting".to_owned();
    let (sockets, notes) = match fdpass::recv::<FromSandbox>(sock) {
        Ok(Some((FromSandbox::Built { kinds, notes }, fds))) => (sockets_from(&kinds, fds), notes),
        Ok(Some((FromSandbox::BuildFailed(msg), _))) => return Err(msg),
        Ok(_) => return Err(died()),
        Err(e) => return Err(format!("reading from the sandbox: {e}")),
    };
    match fdpass::recv::<FromSandbox>(sock) {
        Ok(Some((FromSandbox::Ready, mut fds))) if fds.len() == 1 => {
            Ok((sockets, fds.pop().ok_or_else(died)?, notes))
        }
        Ok(Some((FromSandbox::BuildFailed(msg), _))) => Err(msg),
        Ok(_) => Err(died()),
        Err(e) => Err(format!("reading from the sandbox: {e}")),
    }
}

fn sockets_from(kinds: &[SocketKind], fds: Vec<OwnedFd>) -> SandboxSockets {
    let mut out = SandboxSockets {
        nflog: None,
        tcp: Vec::new(),
        dns_udp: Vec::new(),
        dns_tcp: Vec::new(),
    };
    for (kind, fd) in kinds.iter().zip(fds) {
        match kind {
            SocketKind::Tcp => out.tcp.push(TcpListener::from(fd)),
            SocketKind::DnsUdp => out.dns_udp.push(UdpSocket::from(fd)),
            SocketKind::DnsTcp => out.dns_tcp.push(TcpListener::from(fd)),
            SocketKind::Nflog => out.nflog = Some(fd),
        }
    }
    out
}
