//! Messages with file descriptors over a `SOCK_SEQPACKET` Unix socket (SCM_RIGHTS): how the
//! sandbox hands its sockets to the proxy and how commands get their stdin/stdout/stderr.
//! Each message is one postcard-encoded value.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAX_FDS: usize = 8;

/// The largest message: a command line and environment must fit (the kernel's limit for one
/// datagram is the socket's send buffer, about 208 KiB unless raised).
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Sends `msg` and `fds` as one message. Never raises SIGPIPE.
pub fn send<T: Serialize>(sock: &impl AsRawFd, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let bytes = postcard::to_allocvec(msg).map_err(std::io::Error::other)?;
    if bytes.len() > MAX_MESSAGE {
        return Err(std::io::Error::other(format!(
            "message of {} bytes is over the limit of {MAX_MESSAGE} (command line and environment too large)",
            bytes.len()
        )));
    }
    let iov = [IoSlice::new(&bytes)];
    let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message and the descriptors it carried (close-on-exec). `None` when the peer
/// closed the socket.
pub fn recv<T: DeserializeOwned>(
    sock: &impl AsRawFd,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (len, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        for fd in raw {
                            // SAFETY: the kernel just installed this descriptor in our table for
                            // us; nothing else owns it.
                            fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                        }
                    }
                }
                break (msg.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 {
        return Ok(None);
    }
    let msg = postcard::from_bytes(&buf[..len])
        .map_err(|e| std::io::Error::other(format!("malformed message: {e}")))?;
    Ok(Some((msg, fds)))
}
