//! Netlink: one batch on one socket, acknowledged request by request ([`exchange`], also
//! what `nft` sends its rules with), and bringing up `lo` with every destination routed to
//! it. Nothing else imports rtnetlink.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage};
use netlink_sys::Socket;
use netlink_sys::protocols::NETLINK_ROUTE;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

/// lo is always interface 1 in a new network namespace.
const LO: u32 = 1;

/// Brings up `lo` and adds the local default routes: every destination becomes local. One
/// batch on one netlink socket, answered in order (each request is acknowledged or refused),
/// without a runtime: the caller is a freshly exec'd, single-threaded holder, and this is on
/// the path of every start.
pub fn isolate_loopback() -> Result<(), String> {
    let mut requests = vec![(
        "bring up lo",
        RouteNetlinkMessage::SetLink(LinkUnspec::new_with_index(LO).up().build()),
    )];
    // `ip route add local default dev lo` (IPv4, and IPv6 when the kernel has it).
    let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
        .output_interface(LO)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(255)
        .build();
    requests.push((
        "route local default (IPv4)",
        RouteNetlinkMessage::NewRoute(v4),
    ));
    if std::path::Path::new("/proc/sys/net/ipv6/conf/lo").exists() {
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(Ipv6Addr::UNSPECIFIED, 0)
            .output_interface(LO)
            .kind(RouteType::Local)
            .table_id(255)
            .build();
        requests.push((
            "route local default (IPv6)",
            RouteNetlinkMessage::NewRoute(v6),
        ));
    }
    let mut batch = Vec::new();
    for (seq, (_, msg)) in requests.iter().enumerate() {
        let mut nl = NetlinkMessage::from(msg.clone());
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
        nl.header.sequence_number = seq as u32 + 1;
        nl.finalize();
        let at = batch.len();
        batch.resize(at + nl.buffer_len(), 0);
        nl.serialize(&mut batch[at..]);
    }
    exchange(NETLINK_ROUTE, &batch, requests.len()).map_err(|e| match e {
        BatchError::Refused { seq, errno } => {
            let what = (seq as usize)
                .checked_sub(1)
                .and_then(|i| requests.get(i))
                .map_or("netlink", |(what, _)| what);
            format!("{what}: {}", std::io::Error::from_raw_os_error(errno))
        }
        BatchError::Failed(msg) => format!("netlink {msg}"),
    })
}

// linux/netlink.h
const NLMSG_ERROR: u16 = 2;

/// Why a batch did not go through.
pub enum BatchError {
    /// The kernel refused the request with sequence number `seq` with this errno.
    Refused { seq: u32, errno: i32 },
    /// The socket failed: what was being done, and why.
    Failed(String),
}

/// Sends `batch` on a new netlink socket of `protocol` and reads until `acks` requests are
/// acknowledged; the first refusal ends it.
pub fn exchange(protocol: isize, batch: &[u8], acks: usize) -> Result<(), BatchError> {
    let failed = |what: &str, e: std::io::Error| BatchError::Failed(format!("{what}: {e}"));
    let mut socket = Socket::new(protocol).map_err(|e| failed("socket", e))?;
    socket.bind_auto().map_err(|e| failed("bind", e))?;
    // The kernel answers at once; a missing answer must fail the start, not hang it.
    let wait = nix::sys::time::TimeVal::new(5, 0);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &wait)
        .map_err(|e| failed("socket timeout", e.into()))?;
    let sent = socket.send(batch, 0).map_err(|e| failed("send", e))?;
    if sent != batch.len() {
        return Err(failed("send", std::io::Error::other("short write")));
    }
    let mut acked = 0;
    while acked < acks {
        let (reply, _) = socket.recv_from_full().map_err(|e| failed("receive", e))?;
        for (seq, code) in answers(&reply) {
            if code != 0 {
                return Err(BatchError::Refused { seq, errno: -code });
            }
            acked += 1;
        }
    }
    Ok(())
}

/// The sequence number and error code (0 = success) of each NLMSG_ERROR message in one
/// datagram.
fn answers(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= 20 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < 16 || len > buf.len() {
            break;
        }
        if kind == NLMSG_ERROR && len >= 20 {
            let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
            out.push((
                seq,
                i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]),
            ));
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_are_read_from_every_acknowledgement() {
        let mut datagram = Vec::new();
        for code in [0i32, -libc::EPERM] {
            datagram.extend_from_slice(&36u32.to_ne_bytes());
            datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            datagram.extend_from_slice(&[0; 10]);
            datagram.extend_from_slice(&code.to_ne_bytes());
            datagram.extend_from_slice(&[0; 16]); // the echoed request header
        }
        assert_eq!(answers(&datagram), [(0, 0), (0, -libc::EPERM)]);
        assert_eq!(
            answers(&datagram[..20]),
            Vec::<(u32, i32)>::new(),
            "a cut message is ignored"
        );
    }
}
