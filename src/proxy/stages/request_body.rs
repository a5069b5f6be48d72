//! Stage 3, the request body: a small body with a `Content-Length` is read whole (within the
//! memory budget), guarded and scanned before anything goes upstream, so a blocked token stops
//! the request before a byte leaves and `Content-Length` stays exact; any other body is
//! streamed through the leak guard and the scanner and sent without `Content-Length`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{Checks, Stop, blocked, refuse};
use crate::audit::Event;
use crate::policy::Limits;
use crate::proxy::Proxy;
use crate::proxy::body::{self, ProxyBody, Substitute, Transformed};
use crate::proxy::budget::Held;
use crate::proxy::decide::Decider;
use crate::proxy::timeouts::{Silent, Stall, TimedOut};
use crate::scan::{BodyScanner, LeakSet};

/// Request bodies with a `Content-Length` up to this size (and the memory budget,
/// `limits.body_memory_mib`) are read whole before anything goes upstream, so a blocked token
/// stops the request before a byte leaves and `Content-Length` stays exact after substitution.
/// Larger bodies, and bodies without a length, are streamed through the scanner and sent
/// without `Content-Length` (chunked on HTTP/1.1).
pub const BODY_BUFFER_LIMIT: u64 = 8 * 1024 * 1024;

/// The body to send upstream, and the count of bytes read from the client for it.
pub(in crate::proxy) struct Outgoing {
    pub body: ProxyBody,
    pub bytes_up: Arc<AtomicU64>,
}

/// The body of the request whose head is `parts`, ready to go upstream (`Content-Length` in
/// `parts` set to match), or the refusal.
pub(in crate::proxy) async fn prepare(
    proxy: &Proxy,
    parts: &mut Parts,
    incoming: Incoming,
    checks: &Checks,
    event: &mut Event,
) -> Result<Outgoing, Stop> {
    let bytes_up = Arc::new(AtomicU64::new(0));
    let length = incoming.size_hint().exact();
    let buffered = BODY_BUFFER_LIMIT.min(proxy.bodies.bytes());
    let body = if incoming.is_end_stream() {
        body::empty()
    } else if let Some(length) = length.filter(|n| *n <= buffered) {
        read_whole(proxy, parts, incoming, length, &bytes_up, checks, event).await?
    } else {
        parts.headers.remove(header::CONTENT_LENGTH);
        let scan = Substitute {
            guard: checks.guard.as_ref().map(LeakSet::scanner),
            scanner: BodyScanner::new(),
            decider: checks.decider.clone(),
        };
        let incoming = Stall::new(incoming, stall(proxy), Silent::RequestBody);
        Transformed::new(incoming, scan, bytes_up.clone()).boxed_unsync()
    };
    Ok(Outgoing { body, bytes_up })
}

fn stall(proxy: &Proxy) -> std::time::Duration {
    Limits::secs(proxy.cfg.policy.limits.body_stall_secs)
}

/// A body of `length` bytes read whole: takes its share of the memory budget (waiting for
/// room up to `limits.body_wait_secs`), reads it, guards and scans it.
async fn read_whole(
    proxy: &Proxy,
    parts: &mut Parts,
    incoming: Incoming,
    length: u64,
    bytes_up: &AtomicU64,
    checks: &Checks,
    event: &mut Event,
) -> Result<ProxyBody, Stop> {
    let (decider, name) = (&checks.decider, checks.name.as_str());
    let limits = &proxy.cfg.policy.limits;
    let wait = limits.body_wait_secs;
    let exec = event.exec.as_deref();
    let Some(share) = proxy.bodies.take(exec, length, Limits::secs(wait)).await else {
        let reason = format!(
            "limits.body_memory_mib: the {} MiB for request bodies had no room for this one ({length} bytes) within {wait} s (limits.body_wait_secs); try again later",
            limits.body_memory_mib
        );
        return Err(refuse(event, StatusCode::SERVICE_UNAVAILABLE, name, reason));
    };
    let incoming = Stall::new(incoming, stall(proxy), Silent::RequestBody);
    let data = match body::read_whole(incoming, length).await {
        Ok(data) => data,
        Err(e) => {
            let (status, reason) = match TimedOut::find(&e) {
                Some(timed_out) => (StatusCode::REQUEST_TIMEOUT, timed_out.0.clone()),
                None => (
                    StatusCode::BAD_REQUEST,
                    format!("the client's request body ended early: {e}"),
                ),
            };
            let mut resp = refuse(event, status, name, reason);
            if parts.version != Version::HTTP_2 {
                // The rest of the body is not read: this connection cannot carry another
                // request.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return Err(resp);
        }
    };
    bytes_up.store(data.len() as u64, Ordering::Relaxed);
    if let Some(id) = checks.guard.as_ref().and_then(|set| set.find(&data)) {
        let block = decider.leak("body", id);
        return Err(blocked(event, decider, &block));
    }
    let out = scan_whole(data, decider, "body");
    if let Some(block) = decider.blocked() {
        return Err(blocked(event, decider, &block));
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
    Ok(Held::new(out, share).boxed_unsync())
}

/// `data` with its tokens decided at `location` and substituted; empty when a token is
/// blocked (the caller asks the decider).
pub(in crate::proxy) fn scan_whole(data: Bytes, decider: &Decider, location: &str) -> Bytes {
    let mut scanner = BodyScanner::new();
    let decide = &mut |t: &str| decider.decide(location, t);
    match (scanner.push(data, decide), scanner.finish(decide)) {
        (Ok(a), Ok(b)) if b.is_empty() => a,
        (Ok(a), Ok(b)) => {
            let mut joined = Vec::with_capacity(a.len() + b.len());
            joined.extend_from_slice(&a);
            joined.extend_from_slice(&b);
            Bytes::from(joined)
        }
        _ => Bytes::new(),
    }
}
