//! The explicit proxy (Tier 0, `netcage proxy`): HTTP forward-proxy requests and `CONNECT`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::io::Prefixed;
use super::{ConnInfo, Proxy, quota, timeouts, tunnel};
use crate::audit::Event;
use crate::policy::Limits;

/// Accepts connections until the listener fails for good.
pub async fn serve_explicit(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let ticket = quota::ticket(&proxy).await;
        match listener.accept().await {
            Ok((stream, client)) => {
                proxy.audit().stats().connection();
                let served = proxy.clone();
                proxy.hand_off(stream, move |stream| {
                    handle_conn(served, stream, client, ticket)
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

enum Head {
    Connect {
        host: String,
        port: u16,
        consumed: usize,
    },
    Other,
    Bad(String),
}

fn parse_head(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => None,
        Ok(httparse::Status::Complete(consumed)) => {
            if req.method != Some("CONNECT") {
                return Some(Head::Other);
            }
            let target = req.path.unwrap_or("");
            Some(match target.parse::<http::uri::Authority>() {
                Ok(a) if a.port_u16().is_some() && !a.host().is_empty() => Head::Connect {
                    host: crate::hosts::normalize(a.host()),
                    port: a.port_u16().unwrap_or(443),
                    consumed,
                },
                _ => Head::Bad(format!("CONNECT target {target:?} is not host:port")),
            })
        }
        Err(e) => Some(Head::Bad(format!("malformed request: {e}"))),
    }
}

async fn reply(stream: &mut TcpStream, status: &str, reason: &str) {
    let body = serde_json::json!({ "error": format!("netcage: {reason}") }).to_string();
    let text = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn handle_conn(
    proxy: Arc<Proxy>,
    mut stream: TcpStream,
    client: SocketAddr,
    ticket: quota::Ticket,
) {
    let Some(admitted) = quota::admit(&proxy, &stream, client, ticket).await else {
        return;
    };
    let exec = admitted.exec.clone();
    let process = admitted.process.clone();
    // Its place in the exec's budget, for as long as the connection is open.
    let _admitted = super::workers::keep(admitted);
    let log = |decision, host: Option<String>, reason: String| {
        let mut event = Event::new("connection", decision);
        event.exec = exec.clone();
        super::name_process(&mut event, process.as_deref());
        event.client = Some(client.to_string());
        event.host = host;
        event.reason = Some(reason);
        proxy.cfg.audit.log(event);
    };
    // The head (CONNECT or a forward-proxy request), from the connection's start.
    let limits = &proxy.cfg.policy.limits;
    let deadline = tokio::time::Instant::now() + Limits::secs(limits.request_head_secs);
    let max_head = limits.max_header_bytes as usize;
    let mut buf = BytesMut::with_capacity(4096);
    let head = loop {
        if let Some(head) = parse_head(&buf) {
            break head;
        }
        if buf.len() >= max_head {
            break Head::Bad(format!(
                "request head larger than {max_head} bytes (limits.max_header_bytes)"
            ));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return,
            Err(_) => {
                let what = "the request head was not complete after";
                let reason = timeouts::reason("request_head_secs", what, limits.request_head_secs);
                return log("block", None, reason);
            }
        }
    };
    match head {
        Head::Bad(reason) => {
            log("block", None, reason.clone());
            reply(&mut stream, "400 Bad Request", &reason).await;
        }
        Head::Connect {
            host,
            port,
            consumed,
        } => {
            let verdict = proxy.cfg.policy.egress(&host);
            if !verdict.allowed {
                let reason = format!(
                    "{host} is not allowed by the egress policy ({})",
                    verdict.rule
                );
                log("block", Some(host), reason.clone());
                reply(&mut stream, "403 Forbidden", &reason).await;
                return;
            }
            if stream
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            // A copy, and the head's buffer dropped: the tunnel lives as long as the
            // connection, and a slice of `buf` would keep all 4 KiB of it.
            let rest = Bytes::copy_from_slice(&buf[consumed..]);
            drop(buf);
            let conn = ConnInfo {
                client,
                exec,
                process: process.clone(),
                target_host: Some(host),
                port,
                sni: None,
                tls: false,
            };
            // Boxed, here and below: a future awaited in place takes its room in this one's
            // state for the whole connection, and rustc lays such nested futures out with
            // room to spare (this task was 33 KB, twice the tunnel's own state).
            Box::pin(tunnel::handle(proxy, Prefixed::new(rest, stream), conn)).await;
        }
        Head::Other => {
            let conn = ConnInfo {
                client,
                exec,
                process: process.clone(),
                target_host: None,
                port: 80,
                sni: None,
                tls: false,
            };
            let h2 = buf.starts_with(b"PRI ");
            let io = Prefixed::new(buf.freeze(), stream);
            Box::pin(tunnel::serve_http(proxy, io, conn, h2)).await;
        }
    }
}
