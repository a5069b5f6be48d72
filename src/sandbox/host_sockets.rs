//! The pathname Unix sockets processes outside the sandbox are bound to, from the kernel's
//! socket table (`sock_diag`, as `ss -xl` reads it). The network namespace does not cover
//! filesystem sockets, so the sandbox's view covers each of these with an empty file.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::nlas::UnixDiagName;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

/// Absolute paths of every Unix socket of this network namespace that has one, deduplicated.
/// Sockets bound with a relative path (rare) are not found. Any failure yields what was read
/// so far: this is a cover on top of the rest of the view, not its foundation.
pub fn bound_paths() -> Result<Vec<PathBuf>, String> {
    let err = |what: &str, e: std::io::Error| format!("sock_diag {what}: {e}");
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| err("socket", e))?;
    socket.bind_auto().map_err(|e| err("bind", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| err("connect", e))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::UnixRequest(UnixRequest {
            state_flags: StateFlags::from_bits_retain(u32::MAX),
            inode: 0,
            show_flags: ShowFlags::NAME,
            cookie: [0xff; 8],
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0).map_err(|e| err("send", e))?;

    let mut paths = Vec::new();
    let mut recv = vec![0u8; 64 * 1024];
    loop {
        let n = socket
            .recv(&mut &mut recv[..], 0)
            .map_err(|e| err("recv", e))?;
        let mut offset = 0;
        while offset < n {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&recv[offset..n])
                .map_err(|e| format!("sock_diag: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::UnixResponse(resp)) => {
                    if let Some(UnixDiagName::Pathname(p)) = resp.name()
                        && p.as_bytes().first() == Some(&b'/')
                    {
                        let p = PathBuf::from(p);
                        if !paths.contains(&p) {
                            paths.push(p);
                        }
                    }
                }
                NetlinkPayload::Done(_) => return Ok(paths),
                NetlinkPayload::Error(e) => return Err(format!("sock_diag: {e:?}")),
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listening_socket_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::fs::canonicalize(dir.path()).unwrap().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let found = super::bound_paths().unwrap();
        assert!(found.contains(&path), "{found:?}");
    }
}
