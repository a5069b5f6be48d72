//! All netlink work: bring up `lo` and route every destination to it. Nothing else imports
//! rtnetlink.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
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
    let err = |what: &str, e: std::io::Error| format!("netlink {what}: {e}");
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| err("socket", e))?;
    socket.bind_auto().map_err(|e| err("bind", e))?;
    // The kernel answers at once; a missing answer must fail the start, not hang it.
    let wait = nix::sys::time::TimeVal::new(5, 0);
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::ReceiveTimeout, &wait)
        .map_err(|e| err("socket timeout", e.into()))?;
    let sent = socket.send(&batch, 0).map_err(|e| err("send", e))?;
    if sent != batch.len() {
        return Err(err("send", std::io::Error::other("short write")));
    }
    let mut answered = 0;
    while answered < requests.len() {
        let (reply, _) = socket.recv_from_full().map_err(|e| err("receive", e))?;
        let mut rest = reply.as_slice();
        while !rest.is_empty() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                .map_err(|e| format!("netlink: an answer that does not parse: {e}"))?;
            let len = (msg.header.length as usize).next_multiple_of(4);
            rest = &rest[len.clamp(1, rest.len())..];
            let NetlinkPayload::Error(answer) = msg.payload else {
                continue;
            };
            let what = (msg.header.sequence_number as usize)
                .checked_sub(1)
                .and_then(|i| requests.get(i))
                .map_or("netlink", |(what, _)| what);
            if let Some(code) = answer.code {
                return Err(format!(
                    "{what}: {}",
                    std::io::Error::from_raw_os_error(-code.get())
                ));
            }
            answered += 1;
        }
    }
    Ok(())
}
