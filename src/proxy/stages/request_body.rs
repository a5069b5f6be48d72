//! Stage 3, the request body: a small body with a `Content-Length` is read whole (within the
//! memory budget), guarded and scanned before anything goes upstream, so a blocked token stops
//! the request before a byte leaves and `Content-Length` stays exact; any other body is
//! streamed through the leak guard and the scanner and sent without `Content-Length` — except
//! a request netcage re-signs for AWS (S3 refuses a plain upload without it): that one keeps
//! its `Content-Length`, and fails if substitution changed the length.

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
use crate::proxy::body::{self, BoxError, ProxyBody, Substitute, Transform, Transformed};
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
    /// The body as it goes upstream when it was read whole (SigV4 re-signing hashes it).
    pub whole: Option<Bytes>,
}

/// The body of the request whose head is `parts`, ready to go upstream (`Content-Length` in
/// `parts` set to match), or the refusal. `keep_length`: a streamed body keeps its
/// `Content-Length` (a SigV4 request netcage re-signs).
pub(in crate::proxy) async fn prepare(
    proxy: &Proxy,
    parts: &mut Parts,
    incoming: Incoming,
    keep_length: bool,
    checks: &Checks,
    event: &mut Event,
) -> Result<Outgoing, Stop> {
    let bytes_up = Arc::new(AtomicU64::new(0));
    let length = incoming.size_hint().exact();
    let buffered = BODY_BUFFER_LIMIT.min(proxy.bodies.bytes());
    let mut whole = None;
    let body = if incoming.is_end_stream() {
        whole = Some(Bytes::new());
        body::empty()
    } else if let Some(length) = length.filter(|n| *n <= buffered) {
        let (body, data) =
            read_whole(proxy, parts, incoming, length, &bytes_up, checks, event).await?;
        whole = Some(data);
        body
    } else {
        let exact = length.filter(|_| keep_length);
        if exact.is_none() {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        let scan = Substitute {
            guard: checks.guard.as_ref().map(LeakSet::scanner),
            scanner: BodyScanner::new(),
            decider: checks.decider.clone(),
        };
        let incoming = Stall::new(incoming, stall(proxy), Silent::RequestBody);
        let scanned = Transformed::new(incoming, scan, bytes_up.clone());
        match exact {
            Some(length) => {
                let exact = ExactLength { left: length };
                Transformed::new(scanned, exact, Arc::default()).boxed_unsync()
            }
            None => scanned.boxed_unsync(),
        }
    };
    Ok(Outgoing {
        body,
        bytes_up,
        whole,
    })
}

/// A streamed body sent with its `Content-Length`: fails unless it comes out exactly that
/// long (hyper would cut a longer one short without a word).
struct ExactLength {
    left: u64,
}

/// Why a streamed body kept with its `Content-Length` failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body's length changed on the way (a token substituted into a body sent with its Content-Length, which a re-signed AWS request keeps)"
)]
struct LengthChanged;

impl Transform for ExactLength {
    fn push(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        self.left = self
            .left
            .checked_sub(data.len() as u64)
            .ok_or(LengthChanged)?;
        Ok(data)
    }
    fn finish(&mut self) -> Result<Bytes, BoxError> {
        if self.left == 0 {
            Ok(Bytes::new())
        } else {
            Err(LengthChanged.into())
        }
    }
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
) -> Result<(ProxyBody, Bytes), Stop> {
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
    Ok((Held::new(out.clone(), share).boxed_unsync(), out))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_kept_with_its_length_must_come_out_exactly_that_long() {
        let exact = |n: u64, pieces: &[&'static [u8]]| {
            let mut t = ExactLength { left: n };
            for p in pieces {
                t.push(Bytes::from_static(p))?;
            }
            t.finish()
        };
        assert!(exact(5, &[b"he", b"llo"]).is_ok());
        assert!(exact(5, &[b"hello", b"!"]).is_err(), "longer");
        assert!(exact(5, &[b"hell"]).is_err(), "shorter");
        assert!(exact(0, &[]).is_ok());
    }
}
