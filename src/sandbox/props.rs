//! Property tests (see `crate::fuzz`) for what the proxy side reads from the sandbox: NFLOG
//! datagrams (packets the command sent, as the kernel describes them) and the control
//! messages of the holder and init (which run where the command does), through
//! [`fdpass::recv`] with descriptors attached. Arbitrary bytes and mutated valid input; no
//! panic, output bounded by the input.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{PacketNla, ULogMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::control::{FromSandbox, HolderLayout, HolderSpec, SocketKind, Spawn, ToSandbox};
use super::layout::Op;
use super::{fdpass, nflog};
use crate::fuzz::{bytes, check, mutated};

/// An IPv4 or IPv6 packet's first bytes, as NFLOG copies them (TCP, UDP, ICMP, other).
fn ip_packet() -> impl Strategy<Value = Vec<u8>> {
    let proto = prop::sample::select(vec![6u8, 17, 1, 58, 132, 47]);
    prop_oneof![
        (proto.clone(), any::<[u8; 4]>(), any::<u16>()).prop_map(|(p, dst, port)| {
            let mut v = vec![0x45, 0, 0, 40, 0, 0, 0, 0, 64, p, 0, 0, 10, 0, 0, 1];
            v.extend(dst);
            v.extend([0x30, 0x39]);
            v.extend(port.to_be_bytes());
            v.extend([0; 16]);
            v
        }),
        (proto, any::<[u8; 16]>(), any::<u16>()).prop_map(|(p, dst, port)| {
            let mut v = vec![0x60, 0, 0, 0, 0, 20, p, 64];
            v.extend([0; 16]);
            v.extend(dst);
            v.extend([0x30, 0x39]);
            v.extend(port.to_be_bytes());
            v.extend([0; 16]);
            v
        }),
    ]
}

/// One NFLOG packet message as the kernel sends it.
fn nflog_message(packet: Vec<u8>, uid: Option<u32>) -> Vec<u8> {
    let mut nlas = vec![PacketNla::Mark(0), PacketNla::Payload(packet)];
    if let Some(uid) = uid {
        nlas.push(PacketNla::Uid(uid));
    }
    let inner = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 1),
        ULogMessage::Packet(nlas),
    );
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(inner));
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    buf
}

/// A datagram of one to four messages: (datagram, number of messages).
fn nflog_datagram() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let message = (ip_packet(), prop::option::of(any::<u32>()))
        .prop_map(|(packet, uid)| nflog_message(packet, uid));
    prop::collection::vec(message, 1..=4).prop_map(|m| (m.concat(), m.len()))
}

/// At most one fact per 16-byte netlink header; every destination is an address (and port).
fn check_dropped(datagram: &[u8], dropped: &[nflog::Dropped]) -> Result<(), TestCaseError> {
    prop_assert!(dropped.len() <= datagram.len() / 16);
    for d in dropped {
        prop_assert!(d.dst.len() <= "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".len());
    }
    Ok(())
}

#[test]
fn nflog_parse_on_any_bytes() {
    // Arbitrary bytes, and arbitrary messages behind netlink headers of the NFLOG packet type
    // with lengths that fit (so the parser gets past the framing).
    let message = bytes(200).prop_map(|body| {
        let mut m = ((16 + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend(0x0400u16.to_ne_bytes());
        m.extend([0; 10]);
        m.extend(body);
        m
    });
    let strategy = prop_oneof![
        bytes(1024),
        prop::collection::vec(message, 1..4).prop_map(|m| m.concat()),
    ];
    check("nflog_any", 512, strategy, |datagram| {
        check_dropped(&datagram, &nflog::parse(&datagram))
    });
}

#[test]
fn nflog_parse_on_mutated_datagrams() {
    let strategy = nflog_datagram().prop_flat_map(|(d, n)| (Just(n), mutated(Just(d))));
    check(
        "nflog_mutated",
        512,
        strategy,
        |(count, (valid, changed))| {
            // Unchanged, every message is one fact.
            prop_assert_eq!(nflog::parse(&valid).len(), count);
            check_dropped(&changed, &nflog::parse(&changed))
        },
    );
}

fn path() -> impl Strategy<Value = std::path::PathBuf> {
    "(/[a-z.]{0,8}){0,4}".prop_map(std::path::PathBuf::from)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<usize>(), path()).prop_map(|(slot, path)| Op::Capture { slot, path }),
        Just(Op::ReadOnlyRoot),
        (path(), any::<u32>()).prop_map(|(path, mode)| Op::Tmpfs { path, mode }),
        Just(Op::Dev),
        path().prop_map(|path| Op::HideFile { path }),
        (path(), prop::collection::vec(("[a-z]{0,8}", path()), 0..3))
            .prop_map(|(path, files)| Op::DataDir { path, files }),
    ]
}

fn blob() -> impl Strategy<Value = Vec<u8>> {
    bytes(24)
}

fn spawn() -> impl Strategy<Value = Spawn> {
    (
        any::<u64>(),
        blob(),
        prop::collection::vec(blob(), 0..4),
        prop::collection::vec((blob(), blob()), 0..4),
        prop::option::of(blob()),
        any::<(bool, bool, bool, bool)>(),
        prop::option::of(any::<u8>()),
        any::<[bool; 3]>(),
    )
        .prop_map(|(id, program, args, env, cwd, flags, tty, stdio)| Spawn {
            id,
            program,
            args,
            env,
            cwd,
            new_session: flags.0,
            tty,
            foreground: flags.1,
            keep_ignored: flags.2,
            stdio,
            cgroup: flags.3,
        })
}

fn to_sandbox() -> impl Strategy<Value = ToSandbox> {
    prop_oneof![
        spawn().prop_map(ToSandbox::Spawn),
        any::<(u64, i32)>().prop_map(|(id, signal)| ToSandbox::Signal { id, signal }),
        any::<(u64, bool)>().prop_map(|(id, foreground)| ToSandbox::Resume { id, foreground }),
        any::<u64>().prop_map(|grace_ms| ToSandbox::Shutdown { grace_ms }),
    ]
}

fn from_sandbox() -> impl Strategy<Value = FromSandbox> {
    let kind = prop::sample::select(vec![
        SocketKind::Tcp,
        SocketKind::DnsUdp,
        SocketKind::DnsTcp,
        SocketKind::Nflog,
    ]);
    prop_oneof![
        (
            prop::collection::vec(kind, 0..5),
            prop::collection::vec(".{0,20}", 0..3)
        )
            .prop_map(|(kinds, notes)| FromSandbox::Built { kinds, notes }),
        ".{0,40}".prop_map(FromSandbox::BuildFailed),
        Just(FromSandbox::Ready),
        any::<(u64, i32)>().prop_map(|(id, pid)| FromSandbox::Started { id, pid }),
        (any::<u64>(), ".{0,40}").prop_map(|(id, error)| FromSandbox::SpawnFailed { id, error }),
        any::<(u64, i32)>().prop_map(|(id, signal)| FromSandbox::Stopped { id, signal }),
        any::<(u64, i32)>().prop_map(|(id, status)| FromSandbox::Exited { id, status }),
    ]
}

fn holder_spec() -> impl Strategy<Value = HolderSpec> {
    (any::<bool>(), any::<u32>(), any::<u32>()).prop_map(|(rootless, uid, gid)| HolderSpec {
        rootless,
        uid,
        gid,
    })
}

fn holder_layout() -> impl Strategy<Value = HolderLayout> {
    prop::collection::vec(op(), 0..6).prop_map(|ops| HolderLayout { ops })
}

/// `bytes` decoded as a `T` (as [`fdpass::recv`] does): no panic, and what comes out is no
/// larger than what went in (its canonical encoding is at most as long; nothing was made up
/// from a length field).
fn decodes_within<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(value) = postcard::from_bytes::<T>(bytes) {
        let again = postcard::to_allocvec(&value).unwrap();
        prop_assert!(
            again.len() <= bytes.len(),
            "{} > {}",
            again.len(),
            bytes.len()
        );
    }
    Ok(())
}

fn encoded<T: Serialize + std::fmt::Debug>(
    valid: impl Strategy<Value = T>,
) -> impl Strategy<Value = Vec<u8>> {
    valid.prop_map(|v| postcard::to_allocvec(&v).unwrap())
}

/// Every control message type, on `bytes`.
fn decode_all_kinds(bytes: &[u8]) -> Result<(), TestCaseError> {
    decodes_within::<HolderSpec>(bytes)?;
    decodes_within::<HolderLayout>(bytes)?;
    decodes_within::<ToSandbox>(bytes)?;
    decodes_within::<FromSandbox>(bytes)?;
    Ok(())
}

#[test]
fn control_messages_on_any_bytes() {
    // Varints of every length and big counts first: a length field asking for a huge vector.
    let strategy = prop_oneof![
        bytes(512),
        (any::<u8>(), bytes(16)).prop_map(|(tag, rest)| {
            [&[tag & 7, 0xff, 0xff, 0xff, 0xff, 0x0f][..], &rest].concat()
        }),
    ];
    check("control_any", 512, strategy, |bytes| {
        decode_all_kinds(&bytes)
    });
}

#[test]
fn control_messages_on_mutated_messages() {
    let strategy = mutated(prop_oneof![
        encoded(holder_spec()),
        encoded(holder_layout()),
        encoded(to_sandbox()),
        encoded(from_sandbox()),
    ]);
    check("control_mutated", 512, strategy, |(_, bytes)| {
        decode_all_kinds(&bytes)
    });
}

/// Sends `bytes` with `fds` copies of a descriptor as one packet on a new socket pair, and
/// receives it with [`fdpass::recv`] as `T`.
fn through_socket<T: DeserializeOwned>(bytes: &[u8], fds: usize) -> Result<(), TestCaseError> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let null: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
    let raw = vec![null.as_raw_fd(); fds];
    let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    let iov = [IoSlice::new(bytes)];
    sendmsg::<()>(a.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
    drop(a);
    match fdpass::recv::<T>(&b) {
        // An empty packet reads as the peer having closed the socket.
        Ok(None) => prop_assert!(bytes.is_empty()),
        Ok(Some((_, got))) => prop_assert!(got.len() <= fds.min(8)),
        Err(_) => {}
    }
    Ok(())
}

#[test]
fn fdpass_recv_on_any_packet_with_any_descriptors() {
    let strategy = (
        prop_oneof![
            bytes(512),
            mutated(encoded(to_sandbox())).prop_map(|(_, m)| m)
        ],
        0usize..12,
    );
    check("fdpass_recv", 128, strategy, |(bytes, fds)| {
        through_socket::<ToSandbox>(&bytes, fds)?;
        through_socket::<FromSandbox>(&bytes, fds)
    });
}
