//! What arrives inside a tunnel (after `CONNECT`, or a transparently redirected connection):
//! TLS is intercepted, plain HTTP is served, and anything else is relayed as raw bytes only when
//! the policy lists its `host:port`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::io::Prefixed;
use super::rest::{self, Handoff};
use super::service::{self, ReflectSet};
use super::timeouts::{self, Activity, Answer, Expiry, Watched};
use super::{ConnInfo, Proxy};
use crate::audit::Event;
use crate::policy::Limits;

const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"HEAD ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"PRI ",
];

fn connection_event(conn: &ConnInfo, decision: &'static str, reason: String) -> Event {
    let mut event = Event::new("connection", decision);
    event.exec = conn.exec.clone();
    super::name_process(&mut event, conn.process.as_deref());
    event.client = Some(conn.client.to_string());
    event.host = conn.target_host.clone();
    event.dst = conn
        .target_host
        .as_ref()
        .map(|h| format!("{h}:{}", conn.port));
    event.sni = conn.sni.clone();
    event.reason = Some(reason);
    event
}

/// Handles one tunnelled connection to completion.
pub async fn handle<IO>(proxy: Arc<Proxy>, mut io: IO, mut conn: ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    if let Some(host) = conn.target_host.clone()
        && proxy.cfg.policy.raw_tcp_allowed(&host, conn.port)
    {
        // Boxed: its state (the resolver's lookup, the connect, the relay) would otherwise take
        // room in every intercepted connection's future for as long as it lives.
        Box::pin(relay_raw(&proxy, io, &conn, &host, started)).await;
        return;
    }
    // From the connection's first byte to a finished TLS handshake (and, as the protocol is
    // not known yet, for the first byte too): `limits.tls_handshake_secs`.
    let handshake = proxy.cfg.policy.limits.tls_handshake_secs;
    let timed_out = |what: &str| {
        let reason = timeouts::reason("tls_handshake_secs", what, handshake);
        proxy
            .cfg
            .audit
            .log(connection_event(&conn, "block", reason));
    };
    let mut first = vec![0u8; 8];
    let n = match tokio::time::timeout(Limits::secs(handshake), io.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        Ok(_) => return,
        Err(_) => return timed_out("the client sent nothing for"),
    };
    let first_byte = tokio::time::Instant::now();
    first.truncate(n);
    let is_tls = first[0] == 0x16;
    let is_http = HTTP_METHODS
        .iter()
        .any(|m| m.starts_with(&first) || first.starts_with(m));
    let prior_knowledge_h2 = first.starts_with(b"PRI ");
    let io = Prefixed::new(Bytes::from(first), io);
    if is_tls {
        let fallback = conn.target_host.clone();
        let deadline = first_byte + Limits::secs(handshake);
        // Boxed (as the serving below): only what is live stays in this future's state.
        let accept = Box::pin(proxy.tls.accept(io, fallback.as_deref()));
        // The TLS stream (1.2 KB) on the heap once, as soon as it is there: rustc keeps room in
        // a future for every local whose scope spans an await, moved out or not, and each
        // future that serves the stream would otherwise keep room for a copy of it.
        let (tls, sni) = match tokio::time::timeout_at(deadline, accept).await {
            Ok(Ok((tls, sni))) => (Box::new(tls), sni),
            Ok(Err(e)) => {
                let event = connection_event(&conn, "error", e.to_string());
                return proxy.cfg.audit.log(event);
            }
            Err(_) => return timed_out("the TLS handshake was not finished after"),
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        conn.sni = sni;
        conn.tls = true;
        Box::pin(serve_http(proxy, tls, conn, h2)).await;
    } else if is_http {
        Box::pin(serve_http(proxy, io, conn, prior_knowledge_h2)).await;
    } else {
        let target = conn.target_host.as_deref().unwrap_or("?");
        let reason = format!(
            "non-HTTP TCP to {target}:{} is refused; list it in [egress] tcp to allow it",
            conn.port
        );
        proxy
            .cfg
            .audit
            .log(connection_event(&conn, "block", reason));
    }
}

/// Serves HTTP/1.1, or HTTP/2 when `h2` (ALPN `h2`, or the prior-knowledge preface), until
/// the client closes or a limit closes it: a request head that takes longer than
/// `limits.request_head_secs`, or nothing in flight for `limits.idle_secs` (then the one
/// audit line says which). HTTP/2 also pings an idle client (a dead one is dropped), bounds
/// concurrent streams (`limits.h2_max_streams`) and, as HTTP/1.1 does for the head, the header
/// list (`limits.max_header_bytes`).
pub async fn serve_http<IO>(proxy: Arc<Proxy>, io: IO, conn: ConnInfo, h2: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = proxy.cfg.policy.limits.clone();
    let (head, idle) = (
        Limits::secs(limits.request_head_secs),
        Limits::secs(limits.idle_secs),
    );
    let activity = Activity::new(h2);
    let conn = Arc::new(conn);
    let handoff = Handoff::default();
    let svc = {
        let (proxy, conn, activity) = (proxy.clone(), conn.clone(), activity.clone());
        let (reflect, handoff) = (ReflectSet::default(), handoff.clone());
        service_fn(move |req| {
            let in_flight = activity.begin();
            let response = service::handle(
                proxy.clone(),
                conn.clone(),
                reflect.clone(),
                handoff.clone(),
                req,
            );
            // The request's state (kilobytes) on the heap: hyper keeps room for one service
            // future per connection for as long as the connection lives, and idle keep-alive
            // connections should not hold that. (And `rest::serve` needs it `Unpin`.)
            Answer::new(response, in_flight)
        })
    };
    let io = Watched::new(io, activity.clone());
    let secs = (limits.request_head_secs, limits.idle_secs);
    if h2 {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(idle)
            .keep_alive_timeout(idle.min(Duration::from_secs(20)))
            .max_concurrent_streams(limits.h2_max_streams)
            .max_header_list_size(limits.max_header_bytes);
        // On the heap with its own size: HTTP/1.1 connections then do not carry the room an
        // HTTP/2 one needs in the same future.
        let mut connection = Box::pin(builder.serve_connection(TokioIo::new(io), svc));
        let expired = tokio::select! {
            _ = connection.as_mut() => None,
            expiry = activity.expired(head, idle, None) => {
                if expiry == Expiry::Idle {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
                Some(expiry)
            }
        };
        return log_expiry(&proxy, &conn, secs, expired);
    }
    let mut builder = http1::Builder::new();
    let max_head = limits.max_header_bytes as usize;
    builder.max_header_size(max_head);
    if max_head > H1_BUFFER {
        builder.max_buf_size(max_head + 8192);
    }
    // The rest of the connection in a task of its own on this worker, with what the
    // connection keeps (`workers::detach`): the futures that brought it here (the accept, the
    // CONNECT or the redirect, the handshake, the tunnel) end now, and a connection at rest
    // between requests holds only this task's state.
    let kept = super::workers::detach();
    let detached = kept.is_some();
    let serving = async move {
        let _kept = kept;
        let expired = rest::serve(builder, io, svc, activity, handoff, (head, idle)).await;
        log_expiry(&proxy, &conn, secs, expired);
    };
    if detached {
        tokio::spawn(serving);
    } else {
        Box::pin(serving).await;
    }
}

/// The audit line for a connection a limit closed: `limits.request_head_secs` or
/// `limits.idle_secs` (`secs`, in that order); nothing when it ended otherwise.
fn log_expiry(proxy: &Proxy, conn: &ConnInfo, secs: (f64, f64), expired: Option<Expiry>) {
    let reason = match expired {
        None => return,
        Some(Expiry::Head) => timeouts::reason(
            "request_head_secs",
            "the request head was not complete after",
            secs.0,
        ),
        Some(Expiry::Idle) => timeouts::reason("idle_secs", "idle for", secs.1),
        // Not returned: a connection at rest is picked up again.
        Some(Expiry::Rest) => return,
    };
    proxy.cfg.audit.log(connection_event(conn, "block", reason));
}

/// hyper's HTTP/1.1 read buffer (its default `max_buf_size`): a larger head limit raises it.
const H1_BUFFER: usize = 8192 + 4096 * 100;

async fn relay_raw<IO>(proxy: &Arc<Proxy>, io: IO, conn: &ConnInfo, host: &str, started: Instant)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut event = connection_event(
        conn,
        "allow",
        format!("raw TCP allowed by [egress] tcp {host}:{}", conn.port),
    );
    event.kind = "tunnel";
    let addrs = proxy
        .upstream
        .resolver
        .lookup(host, conn.port)
        .await
        .unwrap_or_default();
    match tokio::net::TcpStream::connect(&addrs[..]).await {
        Ok(upstream) => {
            let idle = proxy.cfg.policy.limits.idle_secs;
            let relayed = timeouts::relay(io, upstream, Limits::secs(idle)).await;
            event.bytes_up = relayed.up;
            event.bytes_down = relayed.down;
            if relayed.idle {
                event.decision = "block";
                event.reason = Some(timeouts::reason("idle_secs", "idle for", idle));
            }
        }
        Err(e) => {
            event.decision = "error";
            event.reason = Some(format!("cannot connect to {host}:{}: {e}", conn.port));
        }
    }
    event.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    proxy.cfg.audit.log(event);
}
