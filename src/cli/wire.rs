//! The control socket of `netcage serve` (SOCK_SEQPACKET, one postcard message per packet,
//! stdin/stdout/stderr passed as descriptors): what `exec` and `status` send and get back.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// Run a command; its stdin, stdout, stderr come along (those marked present).
    Exec {
        argv: Vec<Vec<u8>>,
        env: Vec<(Vec<u8>, Vec<u8>)>,
        cwd: Option<Vec<u8>>,
        stdio: [bool; 3],
    },
    /// Pass this signal to the running command's process group.
    Signal(i32),
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Started {
        exec: String,
        pid: i32,
    },
    Refused(String),
    /// Raw wait status.
    Exited {
        status: i32,
    },
    /// JSON: counters and running execs.
    Status(String),
}

/// Whether the process at the other end of `sock` is no deeper in the pid-namespace tree than
/// this one. A command in any netcage sandbox is deeper (the sandbox's own pid namespace): it
/// must neither drive a serve (running commands with that sandbox's tokens and policy) nor
/// pose as one (receiving a caller's command line, environment and terminal). Read from
/// `/proc/PID/status` (`NSpid`), which stays readable across users and for non-dumpable
/// processes, unlike `/proc/PID/ns/*`.
pub fn peer_not_deeper(sock: &OwnedFd) -> bool {
    let Ok(creds) = nix::sys::socket::getsockopt(sock, nix::sys::socket::sockopt::PeerCredentials)
    else {
        return false;
    };
    if creds.pid() <= 0 {
        return false;
    }
    let depth = |path: &str| {
        std::fs::read_to_string(path).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|ids| ids.split_whitespace().count())
        })
    };
    match (
        depth("/proc/self/status"),
        depth(&format!("/proc/{}/status", creds.pid())),
    ) {
        (Some(ours), Some(theirs)) => theirs <= ours,
        _ => false,
    }
}

/// Connects to a serve socket, with an error that says what to do.
pub fn connect_to(path: &Path) -> anyhow::Result<OwnedFd> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| anyhow::anyhow!("socket: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    match connect(sock.as_raw_fd(), &addr) {
        Ok(()) => {
            // The server's uid is checked by the server's side of things (its socket mode);
            // what a caller must not do is hand its command line, environment and terminal
            // to a process inside a sandbox that put a socket at this path.
            if !peer_not_deeper(&sock) {
                return Err(anyhow::anyhow!(
                    "{} is served from inside a netcage sandbox, not by netcage serve; refusing to send it a command",
                    path.display()
                ));
            }
            Ok(sock)
        }
        Err(nix::errno::Errno::ENOENT) => Err(anyhow::anyhow!(
            "no netcage serve at {}: start one with `netcage serve --socket {}`",
            path.display(),
            path.display()
        )),
        Err(nix::errno::Errno::EACCES | nix::errno::Errno::EPERM) => Err(anyhow::anyhow!(
            "permission denied on {}: only the user running netcage serve (or root) may use it",
            path.display()
        )),
        Err(nix::errno::Errno::ECONNREFUSED) => Err(anyhow::anyhow!(
            "nothing is listening on {} (netcage serve has stopped; start it again)",
            path.display()
        )),
        Err(nix::errno::Errno::EPROTOTYPE | nix::errno::Errno::ENOTSOCK) => Err(anyhow::anyhow!(
            "{} is not a netcage serve socket",
            path.display()
        )),
        Err(e) => Err(anyhow::anyhow!("cannot connect to {}: {e}", path.display())),
    }
}

#[cfg(test)]
#[path = "wire_props.rs"]
mod props;
