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
        Ok(()) => Ok(sock),
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
