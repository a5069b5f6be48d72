//! Property tests (see `crate::fuzz`) for what the proxy parses from a command: the DNS
//! resolver's query handling and the TLS ClientHello read before interception. Arbitrary bytes
//! and mutated valid messages; no panic, bounded replies, and nothing but the synthetic range
//! handed out; and WebSocket traffic from the client through the message relay, bounded in
//! what it sends on. (The response decoders' targets are in decode_tests.rs.)

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

use super::dns::{self, SyntheticNames};
use super::tls::Interceptor;
use crate::fuzz::{bytes, check, mutated};

/// The resolver's reply to `query`, names containing `deny` refused by the policy.
/// (No rate limit: every query is looked at in full.)
fn dns_reply(names: &Arc<SyntheticNames>, query: &[u8]) -> Option<Vec<u8>> {
    let allowed = |name: &str| !name.contains("deny");
    let resolver = dns::Resolver::new(names.clone(), u32::MAX);
    resolver.answer(query, &allowed).map(|(reply, _)| reply)
}

/// A reply holds the question (a name of at most 255 bytes, re-encoded) and at most one A
/// record: nothing a query can make much larger.
const MAX_REPLY: usize = 12 + 2 * (255 + 14) + 64;

fn qtype() -> impl Strategy<Value = RecordType> {
    prop::sample::select(vec![
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::ANY,
        RecordType::MX,
        RecordType::CNAME,
        RecordType::PTR,
        RecordType::SRV,
        RecordType::HTTPS,
        RecordType::Unknown(65280),
    ])
}

/// Host-like names, and names with labels no host has (any printable ASCII).
fn dns_name() -> impl Strategy<Value = Name> {
    prop::collection::vec("[a-z0-9-]{1,30}|deny|xn--[a-z]{1,8}|\\*|[ -~]{1,10}", 1..6).prop_map(
        |labels| {
            let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes())).unwrap();
            name.set_fqdn(true);
            name
        },
    )
}

/// A valid query: one question (sometimes two), recursion desired or not, any id.
fn valid_query() -> impl Strategy<Value = Vec<u8>> {
    (
        dns_name(),
        qtype(),
        any::<u16>(),
        any::<bool>(),
        prop::option::of(dns_name()),
    )
        .prop_map(|(name, qtype, id, rd, second)| {
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = rd;
            m.add_query(Query::query(name, qtype));
            if let Some(second) = second {
                m.add_query(Query::query(second, qtype));
            }
            m.to_vec().unwrap()
        })
}

fn check_reply(names: &SyntheticNames, query: &[u8], reply: &[u8]) -> Result<(), TestCaseError> {
    prop_assert!(reply.len() <= MAX_REPLY, "reply of {} bytes", reply.len());
    let reply = Message::from_vec(reply).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
    prop_assert_eq!(&reply.metadata.id.to_be_bytes()[..], &query[..2]);
    prop_assert!(reply.answers.len() <= 1);
    for answer in &reply.answers {
        let RData::A(a) = &answer.data else {
            return Err(TestCaseError::fail("an answer that is not A"));
        };
        let ip = IpAddr::V4(a.0);
        prop_assert!(SyntheticNames::is_synthetic(ip));
        let name = crate::hosts::normalize(&answer.name.to_ascii());
        prop_assert_eq!(names.name_of(ip), Some(name));
    }
    Ok(())
}

#[test]
fn dns_answer_on_any_bytes() {
    // Arbitrary bytes, and arbitrary bytes behind a query header that asks one question (so
    // the parser gets past the header).
    let strategy = prop_oneof![
        bytes(600),
        (any::<u16>(), any::<[u8; 6]>(), bytes(300)).prop_map(|(id, counts, rest)| {
            let mut m = id.to_be_bytes().to_vec();
            m.extend([0x01, 0x00, 0x00, 0x01]);
            m.extend(counts.map(|c| c & 0x03));
            m.extend(rest);
            m
        }),
    ];
    check("dns_any", 512, strategy, |query| {
        let names = Arc::new(SyntheticNames::default());
        if let Some(reply) = dns_reply(&names, &query) {
            check_reply(&names, &query, &reply)?;
        }
        Ok(())
    });
}

#[test]
fn dns_answer_on_mutated_queries() {
    // Mutations hit the header's counts (question, answer, authority, additional), label
    // lengths and compression pointers as often as anything else.
    check(
        "dns_mutated",
        512,
        mutated(valid_query()),
        |(valid, query)| {
            let names = Arc::new(SyntheticNames::default());
            let reply = dns_reply(&names, &valid).expect("a valid query gets a reply");
            check_reply(&names, &valid, &reply)?;
            let parsed = Message::from_vec(&reply).unwrap();
            let asked = Message::from_vec(&valid).unwrap();
            let q = &asked.queries[0];
            let name = crate::hosts::normalize(&q.name().to_ascii());
            let host = crate::hosts::validate_pattern(&name).is_ok() && !name.starts_with("*.");
            if !host || name.contains("deny") {
                prop_assert_eq!(parsed.metadata.response_code, ResponseCode::NXDomain);
            } else if q.query_type() == RecordType::A {
                prop_assert_eq!(parsed.answers.len(), 1);
            } else {
                prop_assert_eq!(parsed.answers.len(), 0);
            }
            if let Some(reply) = dns_reply(&names, &query) {
                check_reply(&names, &query, &reply)?;
            }
            Ok(())
        },
    );
}

fn interceptor() -> &'static Interceptor {
    static INTERCEPTOR: OnceLock<Interceptor> = OnceLock::new();
    INTERCEPTOR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::ca::Ca::load_or_create(dir.path()).unwrap();
        // The CA keeps its paths; the files are not read again.
        std::mem::forget(dir);
        Interceptor::new(Arc::new(ca))
    })
}

/// What a real client (rustls) sends first: a ClientHello for `name` (an IP literal: no SNI),
/// offering `alpn`.
fn client_hello(name: &str, alpn: Vec<Vec<u8>>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn valid_hello() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        "[a-z]([a-z0-9-]{0,18}[a-z0-9])?(\\.[a-z]([a-z0-9-]{0,18}[a-z0-9])?){0,3}",
        Just("127.0.0.1".to_owned()),
        Just("::1".to_owned()),
    ];
    let alpn = prop::sample::subsequence(vec![b"h2".to_vec(), b"http/1.1".to_vec()], 0..=2);
    (name, alpn).prop_map(|(name, alpn)| client_hello(&name, alpn))
}

/// What the interceptor writes to the client.
#[derive(Clone, Default)]
struct Written(Arc<std::sync::Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for Written {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Runs the interception's ClientHello read and handshake on `input`, then end of stream: it
/// must end (it cannot succeed: the client says no more) within a few seconds. Returns what
/// the interceptor sent back.
fn intercept(input: Vec<u8>) -> Result<Vec<u8>, TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let written = Written::default();
    let io = tokio::io::join(std::io::Cursor::new(input), written.clone());
    let accepted = runtime.block_on(async {
        let accept = interceptor().accept(io, Some("fallback.example"));
        tokio::time::timeout(std::time::Duration::from_secs(5), accept).await
    });
    match accepted {
        Err(_) => Err(TestCaseError::fail(
            "the handshake did not end at end of input",
        )),
        Ok(Ok(_)) => Err(TestCaseError::fail(
            "a handshake finished without the client",
        )),
        Ok(Err(_)) => Ok(std::mem::take(&mut *written.0.lock().unwrap())),
    }
}

#[test]
fn tls_client_hello_on_any_bytes() {
    // A record header (0x16, version) in front half of the time, as the tunnel's sniffing
    // demands before it hands a connection to the interceptor.
    let strategy = (bytes(1024), any::<bool>()).prop_map(|(b, record)| {
        if record {
            [&[0x16, 0x03, 0x01][..], &b].concat()
        } else {
            b
        }
    });
    check("tls_any", 128, strategy, |input| intercept(input).map(drop));
}

#[test]
fn tls_client_hello_on_mutated_hellos() {
    check(
        "tls_mutated",
        128,
        mutated(valid_hello()),
        |(valid, input)| {
            // Unchanged, the ClientHello is answered with a ServerHello (a handshake record).
            let answer = intercept(valid)?;
            prop_assert_eq!(answer.get(..2), Some(&[0x16u8, 0x03][..]));
            intercept(input).map(drop)
        },
    );
}

/// One proxy for the WebSocket targets: default policy, a fresh key, no audit log.
fn ws_proxy() -> Arc<super::Proxy> {
    static PROXY: OnceLock<Arc<super::Proxy>> = OnceLock::new();
    PROXY
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let ca = crate::ca::Ca::load_or_create(dir.path()).unwrap();
            std::mem::forget(dir);
            let cfg = super::ProxyConfig {
                key: crate::token::Key::generate(),
                policy: crate::policy::Policy::default(),
                resolve: Default::default(),
                resolve_ports: Default::default(),
                upstream_cas: Vec::new(),
                audit: Arc::new(crate::audit::AuditLog::disabled()),
                ca: Arc::new(ca),
                sealed: Vec::new(),
                aws: Vec::new(),
            };
            super::Proxy::new(cfg).unwrap()
        })
        .clone()
}

/// A masked client frame (RFC 6455 §5.2): `fin`, `opcode`, a payload of at most 125 bytes.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![
        u8::from(fin) << 7 | opcode,
        0x80 | payload.len().min(125) as u8,
    ];
    f.extend(mask);
    f.extend(
        payload[..payload.len().min(125)]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    f
}

/// Valid client traffic: text and binary messages, some cut into continuation frames, pings,
/// a close at the end.
fn ws_client_traffic() -> impl Strategy<Value = Vec<u8>> {
    let message = (
        prop::bool::ANY,
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..4),
        any::<[u8; 4]>(),
    );
    prop::collection::vec(message, 0..6).prop_map(|messages| {
        let mut out = Vec::new();
        for (text, parts, mask) in messages {
            let n = parts.len();
            for (i, part) in parts.iter().enumerate() {
                let opcode = match (i, text) {
                    (0, true) => 0x1,
                    (0, false) => 0x2,
                    _ => 0x0,
                };
                // Text frames carry ASCII, so most messages are valid UTF-8.
                let payload: Vec<u8> = if text {
                    part.iter().map(|b| b'a' + b % 26).collect()
                } else {
                    part.clone()
                };
                out.extend(client_frame(i + 1 == n, opcode, &payload, mask));
            }
            out.extend(client_frame(true, 0x9, b"ping", mask));
        }
        out.extend(client_frame(true, 0x8, &[0x03, 0xe8], [1, 2, 3, 4]));
        out
    })
}

/// Feeds `from_client` to the WebSocket relay (the upstream side answers nothing and ends once
/// the relay has been quiet for 50 ms) and returns what it sent upstream and back to the client.
fn ws_relay(from_client: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = ws_proxy();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, mut client_peer) = tokio::io::duplex(1 << 16);
        let (upstream, mut upstream_peer) = tokio::io::duplex(1 << 16);
        let session = super::stages::websocket::Session::new(
            proxy,
            "ws.test",
            true,
            Default::default(),
            &crate::audit::Event::new("request", "allow"),
        );
        let relay = super::stages::websocket::relay(client, upstream, session);
        let talk = async {
            client_peer.write_all(from_client).await.ok();
            client_peer.shutdown().await.ok();
            // The upstream reads until the relay has been quiet for a moment, then ends.
            let mut up = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(50), upstream_peer.read(&mut chunk))
                    .await
            {
                if n == 0 {
                    break;
                }
                up.extend_from_slice(&chunk[..n]);
            }
            upstream_peer.shutdown().await.ok();
            drop(upstream_peer);
            let mut back = Vec::new();
            client_peer.read_to_end(&mut back).await.ok();
            (up, back)
        };
        let (_, out) =
            tokio::time::timeout(Duration::from_secs(8), async { tokio::join!(relay, talk) })
                .await
                .expect("the relay ends once both sides have");
        out
    })
}

/// The relay on `input` sends on no more than it got: frames are re-encoded, never
/// multiplied (at most the input again plus the masks and a close).
fn ws_bounded(input: &[u8]) -> Result<(), TestCaseError> {
    let (up, back) = ws_relay(input);
    prop_assert!(
        up.len() <= 2 * input.len() + 64,
        "{} bytes upstream",
        up.len()
    );
    prop_assert!(
        back.len() <= 2 * input.len() + 256,
        "{} bytes back",
        back.len()
    );
    Ok(())
}

#[test]
fn websocket_relay_on_any_client_bytes() {
    check("websocket_any", 64, bytes(2048), |input| ws_bounded(&input));
}

#[test]
fn websocket_relay_on_mutated_client_traffic() {
    check(
        "websocket_mutated",
        64,
        mutated(ws_client_traffic()),
        |(valid, input)| {
            let (up, _) = ws_relay(&valid);
            // Valid traffic reaches the upstream: every message and the close.
            prop_assert!(!up.is_empty() || valid.len() <= 12, "nothing went upstream");
            ws_bounded(&input)
        },
    );
}
