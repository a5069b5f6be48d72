//! What arrives inside a tunnel (after `CONNECT`, or a transparently redirected connection):
//! TLS is intercepted, plain HTTP is served, and anything else is relayed as raw bytes only when
//! the policy lists its `host:port`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::io::Prefixed;
use super::service::{self, ReflectSet};
use super::{ConnInfo, Proxy};
use crate::audit::Event;

/// How long a client may take to send its first bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

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
        relay_raw(&proxy, io, &conn, &host, started).await;
        return;
    }
    let mut first = vec![0u8; 8];
    let n = match tokio::time::timeout(FIRST_BYTES_TIMEOUT, io.read(&mut first)).await {
        Ok(Ok(n)) if n > 0 => n,
        _ => return,
    };
    first.truncate(n);
    let is_tls = first[0] == 0x16;
    let is_http = HTTP_METHODS
        .iter()
        .any(|m| m.starts_with(&first) || first.starts_with(m));
    let io = Prefixed::new(Bytes::from(first), io);
    if is_tls {
        let fallback = conn.target_host.clone();
        match proxy.tls.accept(io, fallback.as_deref()).await {
            Ok((tls, sni)) => {
                conn.sni = sni;
                conn.tls = true;
                serve_http(proxy, tls, conn).await;
            }
            Err(e) => {
                let event = connection_event(&conn, "error", e.to_string());
                proxy.cfg.audit.log(event);
            }
        }
    } else if is_http {
        serve_http(proxy, io, conn).await;
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

/// Serves HTTP/1.1 or HTTP/2 (by preface) on an intercepted or plain connection.
pub async fn serve_http<IO>(proxy: Arc<Proxy>, io: IO, conn: ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let reflect = ReflectSet::default();
    let svc =
        service_fn(move |req| service::handle(proxy.clone(), conn.clone(), reflect.clone(), req));
    let builder = auto::Builder::new(TokioExecutor::new());
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

async fn relay_raw<IO>(
    proxy: &Arc<Proxy>,
    mut io: IO,
    conn: &ConnInfo,
    host: &str,
    started: Instant,
) where
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
        Ok(mut upstream) => {
            if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
                event.bytes_up = up;
                event.bytes_down = down;
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
