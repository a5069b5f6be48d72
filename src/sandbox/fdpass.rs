//! Messages with file descriptors over a `SOCK_SEQPACKET` Unix socket (SCM_RIGHTS): how the
//! sandbox hands its sockets to the proxy and how commands get their stdin/stdout/stderr.
//! Each message is one postcard-encoded value.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::Serialize;
use serde::de::DeserializeOwned;

const MAX_FDS: usize = 8;

/// The most descriptors one message can carry (the kernel's `SCM_MAX_FD`). [`recv`] has room
/// for that many, so the control data is never cut short: the descriptors of a truncated
/// message cannot be taken, and would stay open in this process for good.
const SCM_MAX_FD: usize = 253;

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

/// Receives one message and the descriptors it carried (close-on-exec; more than
/// [`MAX_FDS`] are closed and make an error). `None` when the peer closed the socket.
pub fn recv<T: DeserializeOwned>(
    sock: &impl AsRawFd,
) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
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
    if fds.len() > MAX_FDS {
        // Dropped here, so closed.
        return Err(std::io::Error::other(format!(
            "a message carried {} descriptors, more than the {MAX_FDS} any message has",
            fds.len()
        )));
    }
    if len == 0 {
        return Ok(None);
    }
    let msg = postcard::from_bytes(&buf[..len])
        .map_err(|e| std::io::Error::other(format!("malformed message: {e}")))?;
    Ok(Some((msg, fds)))
}

/// A non-blocking `SOCK_SEQPACKET` socket (a listener or a connection) driven by the tokio
/// runtime: `netcage serve`'s control socket.
pub struct AsyncPacket(tokio::io::unix::AsyncFd<OwnedFd>);

impl AsyncPacket {
    /// Registers `fd` (set non-blocking here) with the current runtime.
    pub fn new(fd: OwnedFd) -> std::io::Result<Self> {
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        // SAFETY: the OwnedFd is moved in and owned by the AsyncFd until it is dropped, so the
        // descriptor stays open, refers to the same socket, and as_raw_fd never changes.
        unsafe { tokio::io::unix::AsyncFd::register(fd) }
            .map(AsyncPacket)
            .map_err(std::io::Error::from)
    }

    pub fn get_ref(&self) -> &OwnedFd {
        self.0.get_ref()
    }

    /// Accepts one connection (close-on-exec).
    pub async fn accept(&self) -> std::io::Result<OwnedFd> {
        loop {
            let mut guard = self.0.readable().await?;
            let accepted = guard.try_io(|fd| {
                nix::sys::socket::accept4(fd.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)
                    .map_err(std::io::Error::from)
            });
            if let Ok(result) = accepted {
                // SAFETY: accept4 just returned this new descriptor; nothing else owns it.
                return result.map(|raw| unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
    }

    pub async fn recv<T: DeserializeOwned>(&self) -> std::io::Result<Option<(T, Vec<OwnedFd>)>> {
        loop {
            let mut guard = self.0.readable().await?;
            if let Ok(result) = guard.try_io(|fd| recv(fd.get_ref())) {
                return result;
            }
        }
    }

    pub async fn send<T: Serialize>(&self, msg: &T, fds: &[RawFd]) -> std::io::Result<()> {
        loop {
            let mut guard = self.0.writable().await?;
            if let Ok(result) = guard.try_io(|fd| send(fd.get_ref(), msg, fds)) {
                return result;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::os::fd::{AsRawFd, OwnedFd};

    use nix::sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
    };

    use super::super::control::ToSandbox;
    use super::*;

    /// How many of this process's descriptors refer to `path`.
    fn open_descriptors_of(path: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target == path)
            .count()
    }

    /// A message with more descriptors than any message has is refused, and its descriptors are
    /// closed: before, a truncated control buffer left them open for good (one caller or sandbox
    /// could use up the proxy's descriptor table).
    #[test]
    fn recv_closes_the_descriptors_of_a_message_with_too_many() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap().join("marker");
        let file: OwnedFd = std::fs::File::create(&path).unwrap().into();
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let msg = postcard::to_allocvec(&ToSandbox::Shutdown { grace_ms: 1 }).unwrap();
        for count in [3, 9, 40, 253] {
            let raw = vec![file.as_raw_fd(); count];
            let iov = [IoSlice::new(&msg)];
            let cmsgs = [ControlMessage::ScmRights(&raw)];
            sendmsg::<()>(a.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
            let got = recv::<ToSandbox>(&b);
            match got {
                Ok(Some((_, fds))) => assert_eq!((count, fds.len()), (3, 3)),
                Ok(None) => panic!("{count} descriptors read as end of stream"),
                Err(e) => assert!(count > 8, "{count}: {e}"),
            }
        }
        drop(file);
        assert_eq!(open_descriptors_of(&path), 0, "descriptors left open");
    }
}
