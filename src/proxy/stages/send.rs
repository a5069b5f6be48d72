//! Stage 4, upstream: the request as it goes to the server (absolute URI for the verified
//! name, hop-by-hop headers removed, HTTP/1.1 unless the client spoke HTTP/2) and the call
//! itself, with `limits.upstream_idle_secs` and every failure turned into its response.

use std::sync::atomic::{AtomicU64, Ordering};

use http::request::Parts;
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use super::host::Destination;
use super::{Checks, Stop, blocked, hop, refuse, token_uses};
use crate::audit::Event;
use crate::policy::Limits;
use crate::proxy::body::ProxyBody;
use crate::proxy::{ConnInfo, Proxy, respond, timeouts};

/// A request ready for the upstream client.
pub(in crate::proxy) struct UpstreamRequest {
    req: Request<ProxyBody>,
    /// Sent over HTTP/1.1 only: the client spoke HTTP/1.x, or asks to upgrade.
    http1: bool,
    /// `name:port`, for error messages.
    pub authority: String,
}

impl UpstreamRequest {
    /// The request as it will be sent (SigV4 re-signing signs it last).
    pub(in crate::proxy) fn request_mut(&mut self) -> &mut Request<ProxyBody> {
        &mut self.req
    }
}

/// The request for `dest`: `target` (substituted) under the verified name, the head of
/// `parts` without hop-by-hop headers (`Upgrade` kept when `upgrade`), and `body`.
pub(in crate::proxy) fn build(
    conn: &ConnInfo,
    dest: &Destination,
    target: &str,
    mut parts: Parts,
    body: ProxyBody,
    upgrade: bool,
    event: &mut Event,
) -> Result<UpstreamRequest, Stop> {
    let te = hop::te_trailers(&parts.headers);
    hop::strip(&mut parts.headers, upgrade);
    parts.headers.extend(te);
    parts.headers.remove(http::header::HOST);
    let scheme = if conn.tls { "https" } else { "http" };
    let authority = dest.authority();
    let uri: Uri = match format!("{scheme}://{authority}{target}").parse() {
        Ok(uri) => uri,
        Err(_) => {
            return Err(refuse(
                event,
                StatusCode::BAD_REQUEST,
                &dest.name,
                "the request target is not a valid URI".into(),
            ));
        }
    };
    parts.uri = uri;
    // An HTTP/1.x client's request goes upstream as HTTP/1.1 (its framing, `Expect` and
    // trailer semantics stay as the client chose); HTTP/2 may use HTTP/2 when offered.
    let client_h1 = matches!(
        parts.version,
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    parts.version = Version::HTTP_11;
    Ok(UpstreamRequest {
        req: Request::from_parts(parts, body),
        http1: upgrade || client_h1,
        authority,
    })
}

/// Sends `request` and waits for the response head; `bytes_up` counts what the body has
/// sent, so a long upload is not taken for a silent upstream.
pub(in crate::proxy) async fn call(
    proxy: &Proxy,
    request: UpstreamRequest,
    bytes_up: &AtomicU64,
    checks: &Checks,
    event: &mut Event,
) -> Result<Response<Incoming>, Stop> {
    let UpstreamRequest {
        req,
        http1,
        authority,
    } = request;
    let name = &checks.name;
    let client = if http1 {
        proxy.upstream.http1()
    } else {
        proxy.upstream.any()
    };
    let limits = &proxy.cfg.policy.limits;
    let upstream_idle = Limits::secs(limits.upstream_idle_secs);
    match timeouts::answer(client.request(req), bytes_up, upstream_idle).await {
        Some(Ok(resp)) => {
            event.status = Some(resp.status().as_u16());
            Ok(resp)
        }
        None => {
            let reason = timeouts::reason(
                "upstream_idle_secs",
                &format!("{authority} sent no response for"),
                limits.upstream_idle_secs,
            );
            event.bytes_up = bytes_up.load(Ordering::Relaxed);
            event.decision = "error";
            event.reason = Some(reason.clone());
            Err(Box::new(respond::refused(
                StatusCode::GATEWAY_TIMEOUT,
                name,
                &reason,
            )))
        }
        Some(Err(e)) => {
            if let Some(block) = checks.decider.blocked() {
                return Err(blocked(event, &checks.decider, &block));
            }
            let (status, reason) = respond::upstream_failure(&e, &authority);
            event.bytes_up = bytes_up.load(Ordering::Relaxed);
            // 403: the name led to this machine or a metadata address, refused unconnected;
            // 408: the client's streamed body stopped (`limits.body_stall_secs`).
            event.decision =
                if status == StatusCode::FORBIDDEN || status == StatusCode::REQUEST_TIMEOUT {
                    "block"
                } else {
                    "error"
                };
            event.reason = Some(reason.clone());
            event.tokens = token_uses(&checks.decider);
            Err(Box::new(respond::refused(status, name, &reason)))
        }
    }
}
