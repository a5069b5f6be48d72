//! Tier 1, the proxy side: starts the holder (`netcage __holder`, see `holder.rs`), waits until
//! the sandbox is built, and takes over its sockets and its control channel.
//!
//! The holder is exec'd rather than forked, so this works from a multi-threaded process (an
//! agent server's async runtime): a user namespace can only be created by a single-threaded
//! process, and a fresh exec is one.

use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

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
    pub holder: Child,
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

/// The holder until the sandbox is ready: killed and reaped if dropped before.
struct Unfinished(Option<Child>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut holder) = self.0.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
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
        let pending = Pending {
            holder: Unfinished(Some(holder)),
            sock: ours,
        };
        let spec = HolderSpec {
            rootless: !super::detect::quick(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        };
        // Dropping `pending` on an error kills the holder.
        fdpass::send(&pending.sock, &spec, &[])
            .map_err(|e| format!("starting the sandbox: {e}"))?;
        Ok(pending)
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
