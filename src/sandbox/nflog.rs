//! Packets the namespace's filter drops are logged to an NFLOG group; this opens the group's
//! netlink socket inside the namespace and turns its messages into audit facts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    ConfigCmd, ConfigMode, ConfigNla, PacketNla, ULogMessage, config_request,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_NETFILTER;

/// Bytes of each dropped packet copied to us: enough for the IP and transport headers.
const COPY_RANGE: u32 = 64;

/// Opens a netlink socket bound to NFLOG `group` (call inside the namespace).
pub fn open(group: u16) -> Result<OwnedFd, String> {
    let err = |what: &str, e: std::io::Error| format!("NFLOG {what}: {e}");
    let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| err("socket", e))?;
    socket.bind_auto().map_err(|e| err("bind", e))?;
    for nla in [
        ConfigNla::Cmd(ConfigCmd::Bind),
        ConfigNla::Mode(ConfigMode::new_packet(COPY_RANGE)),
        // Deliver each packet at once instead of batching for up to a second.
        ConfigNla::QThresh(1),
    ] {
        let mut msg = config_request(NetfilterProtoFamily::Unspec, group, vec![nla]);
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.finalize();
        msg.serialize(&mut buf);
        socket.send(&buf, 0).map_err(|e| err("configure", e))?;
        let (reply, _) = socket.recv_from_full().map_err(|e| err("configure", e))?;
        if let Ok(reply) = NetlinkMessage::<NetfilterMessage>::deserialize(&reply)
            && let NetlinkPayload::Error(e) = reply.payload
            && e.code.is_some()
        {
            return Err(format!("NFLOG configure: {}", e.to_io()));
        }
    }
    // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
}

/// One dropped packet: what it was and where it was going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub protocol: &'static str,
    pub dst: String,
    pub uid: Option<u32>,
}

/// Parses one datagram read from the NFLOG socket (it may hold several messages).
pub fn parse(mut buf: &[u8]) -> Vec<Dropped> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        if let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[..len])
            && let NetlinkPayload::InnerMessage(inner) = msg.payload
            && let NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)) = inner.inner
        {
            let uid = nlas.iter().find_map(|n| match n {
                PacketNla::Uid(uid) => Some(*uid),
                _ => None,
            });
            if let Some((protocol, dst)) = nlas.iter().find_map(|n| match n {
                PacketNla::Payload(p) => describe(p),
                _ => None,
            }) {
                out.push(Dropped { protocol, dst, uid });
            }
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// Protocol name and destination of an IP packet (`addr:port` for TCP/UDP).
fn describe(packet: &[u8]) -> Option<(&'static str, String)> {
    let (proto, dst, transport): (u8, IpAddr, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                *packet.get(9)?,
                Ipv4Addr::from(dst).into(),
                packet.get(ihl..).unwrap_or(&[]),
            )
        }
        6 => {
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                *packet.get(6)?,
                Ipv6Addr::from(dst).into(),
                packet.get(40..).unwrap_or(&[]),
            )
        }
        _ => return None,
    };
    let port = transport
        .get(2..4)
        .map(|p| u16::from_be_bytes([p[0], p[1]]));
    let (name, with_port) = match proto {
        6 => ("tcp", true),
        17 => ("udp", true),
        1 => ("icmp", false),
        58 => ("icmpv6", false),
        132 => ("sctp", true),
        _ => ("other", false),
    };
    let dst = match (with_port, port, dst) {
        (true, Some(port), IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
        (true, Some(port), ip) => format!("{ip}:{port}"),
        (_, _, ip) => ip.to_string(),
    };
    Some((name, dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_ipv4_udp_and_icmp_and_ipv6_tcp() {
        let mut udp = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 8, 8, 4, 4,
        ];
        udp.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0]);
        assert_eq!(describe(&udp), Some(("udp", "8.8.4.4:53".to_owned())));
        let mut icmp = udp.clone();
        icmp[9] = 1;
        assert_eq!(describe(&icmp), Some(("icmp", "8.8.4.4".to_owned())));
        let mut v6 = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        v6.extend_from_slice(&[0; 16]);
        v6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
        assert_eq!(describe(&v6), Some(("tcp", "[2001:db8::1]:443".to_owned())));
        assert_eq!(describe(&[0x45, 0]), None);
        assert!(parse(&[1, 2, 3]).is_empty());
    }
}
