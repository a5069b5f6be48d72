//! One HTTP request through the proxy: which host it is for, whether policy lets it go, the leak
//! guard and token substitution in headers, target and body, the upstream call, and the response
//! on its way back with real values turned back into tokens.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use super::body::{self, Audited, ProxyBody, Redact, Substitute, Transformed};
use super::budget::Held;
use super::decide::Decider;
use super::timeouts::{self, Silent, Stall, TimedOut};
use super::{ConnInfo, Proxy, decode, guard, respond};
use crate::audit::Event;
use crate::hosts;
use crate::policy::{self, Limits};
use crate::scan::{self, BodyScanner, LeakSet, RedactSet};

/// Request bodies with a `Content-Length` up to this size (and the memory budget,
/// `limits.body_memory_mib`) are read whole before anything goes upstream, so a blocked token
/// stops the request before a byte leaves and `Content-Length` stays exact after substitution.
/// Larger bodies, and bodies without a length, are streamed through the scanner and sent
/// without `Content-Length` (chunked on HTTP/1.1).
pub const BODY_BUFFER_LIMIT: u64 = 8 * 1024 * 1024;

/// Values substituted on one client connection; responses on it must not show them.
pub type ReflectSet = Arc<Mutex<Reflect>>;

/// The (value, token) pairs of one connection and their compiled matcher, rebuilt only when a
/// new value joins.
#[derive(Default)]
pub struct Reflect {
    pairs: Vec<(Zeroizing<Vec<u8>>, Vec<u8>)>,
    compiled: Option<Arc<RedactSet>>,
}

const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut http::HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = if !headers.contains_key(header::CONNECTION) {
        Vec::new()
    } else {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .filter(|name| !(keep_upgrade && name == header::UPGRADE))
            .collect()
    };
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        if keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
    headers.remove("proxy-connection");
    headers.remove("keep-alive");
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// The host a request names: absolute-form / `:authority`, else the Host header. No port.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(host) = req.uri().host() {
        return Some(hosts::normalize(host));
    }
    let value = req.headers().get(header::HOST)?.to_str().ok()?;
    let authority: http::uri::Authority = value.parse().ok()?;
    Some(hosts::normalize(authority.host()))
}

/// Entry point for every request on an intercepted or forwarded connection.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    reflect: ReflectSet,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let mut event = Event::new("request", "allow");
    event.exec = conn.exec.clone();
    event.client = Some(conn.client.to_string());
    event.sni = conn.sni.clone();
    event.method = Some(req.method().to_string());
    event.path = Some(req.uri().path().to_owned());
    let result = forward(&proxy, &conn, &reflect, req, &mut event, started).await;
    let resp = match result {
        Ok(resp) => return Ok(resp),
        Err(resp) => resp,
    };
    event.status = Some(resp.status().as_u16());
    event.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    proxy.cfg.audit.log(event);
    Ok(resp)
}

/// `Ok` = the response whose body writes the audit line when done; `Err` = a refusal to send
/// now (its audit line is written by the caller).
async fn forward(
    proxy: &Arc<Proxy>,
    conn: &ConnInfo,
    reflect: &ReflectSet,
    mut req: Request<Incoming>,
    event: &mut Event,
    started: Instant,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    // 1. The host name every decision is made for: the TLS server name (verified upstream),
    //    which the Host header must agree with.
    let req_host = request_host(&req);
    let name = if conn.tls {
        conn.sni.clone().or_else(|| conn.target_host.clone())
    } else {
        req_host.clone().or_else(|| conn.target_host.clone())
    };
    let Some(name) = name else {
        return Err(refuse(
            event,
            StatusCode::BAD_REQUEST,
            "",
            "the request names no host; netcage is a proxy: send absolute-form requests or CONNECT"
                .into(),
        ));
    };
    let port = if conn.tls || conn.target_host.is_some() {
        conn.port
    } else {
        req.uri().port_u16().unwrap_or(80)
    };
    event.host = Some(name.clone());
    event.dst = Some(format!(
        "{}:{}",
        conn.target_host.as_deref().unwrap_or(&name),
        port
    ));
    if let (Some(sni), Some(target)) = (&conn.sni, &conn.target_host)
        && sni != target
        && hosts::ip_literal(target).is_none()
    {
        return Err(refuse(
            event,
            StatusCode::MISDIRECTED_REQUEST,
            &name,
            format!("TLS server name {sni} differs from the requested host {target}"),
        ));
    }
    if let Some(req_host) = &req_host
        && *req_host != name
    {
        return Err(refuse(
            event,
            StatusCode::MISDIRECTED_REQUEST,
            &name,
            format!(
                "Host {req_host} does not match the TLS server name {name} (domain fronting is refused)"
            ),
        ));
    }

    // 2. Egress policy, for the name and (Tier 1) for a metadata address the connection was
    //    made to: a request naming another host there is refused rather than sent elsewhere.
    let verdict = proxy.cfg.policy.egress(&name);
    if !verdict.allowed {
        return Err(refuse(
            event,
            StatusCode::FORBIDDEN,
            &name,
            format!(
                "{name} is not allowed by the egress policy ({})",
                verdict.rule
            ),
        ));
    }
    if let Some(target) = &conn.target_host
        && *target != name
        && policy::is_metadata(target)
        && !proxy.cfg.policy.egress(target).allowed
    {
        return Err(refuse(
            event,
            StatusCode::FORBIDDEN,
            &name,
            format!(
                "the connection went to {target}, a cloud metadata address (allow it by exact address to reach it)"
            ),
        ));
    }

    if let Some(reason) = proxy.upstream.resolver.refuse_literal(&name) {
        return Err(refuse(event, StatusCode::FORBIDDEN, &name, reason));
    }

    // 3. The leak guard, on what the client sent: real values that may not go to this host.
    let decider = Decider::new(proxy.clone(), &name, conn.tls);
    let guard = proxy.guard.for_host(&name);
    if let Some(set) = &guard {
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if let Some((location, id)) = guard::find_in_head(set, req.headers(), target.as_bytes()) {
            // The audit line must not carry the value: leave out a path that holds it.
            if set.find_in_target(req.uri().path().as_bytes()).is_some() {
                event.path = None;
            }
            let block = decider.leak(&location, id);
            return Err(blocked(event, &decider, &block));
        }
    }

    // 4. Tokens in headers and target.
    let mut bad_header = None;
    for (hname, value) in req.headers_mut().iter_mut() {
        if memchr::memmem::find(value.as_bytes(), b"starpod").is_none()
            && !hname.eq(&header::AUTHORIZATION)
            && !hname.eq(&header::PROXY_AUTHORIZATION)
        {
            continue;
        }
        let location = format!("header:{hname}");
        let changed =
            scan::scan_header_value(value.as_bytes(), &mut |t| decider.decide(&location, t));
        if let Ok(Some(new)) = changed {
            match HeaderValue::from_bytes(&new) {
                Ok(v) => *value = v,
                Err(_) => bad_header = Some(hname.to_string()),
            }
        }
    }
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_owned();
    let target = match scan::scan_target(target.as_bytes(), &mut |t| decider.decide("target", t)) {
        Ok(Some(new)) => String::from_utf8(new).unwrap_or(target),
        _ => target,
    };
    if let Some(block) = decider.blocked() {
        return Err(blocked(event, &decider, &block));
    }
    if let Some(hname) = bad_header {
        return Err(refuse(
            event,
            StatusCode::BAD_REQUEST,
            &name,
            format!("the secret substituted into header {hname} is not a valid header value"),
        ));
    }

    // 5. The body: read whole when small and sized, within the memory budget, else streamed;
    //    the leak guard first.
    let limits = &proxy.cfg.policy.limits;
    let stall = Limits::secs(limits.body_stall_secs);
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let bytes_up = Arc::new(AtomicU64::new(0));
    let length = incoming.size_hint().exact();
    let buffered = BODY_BUFFER_LIMIT.min(proxy.bodies.bytes());
    let upstream_body = if incoming.is_end_stream() {
        body::empty()
    } else if let Some(length) = length.filter(|n| *n <= buffered) {
        let wait = limits.body_wait_secs;
        let Some(share) = proxy.bodies.take(length, Limits::secs(wait)).await else {
            let reason = format!(
                "limits.body_memory_mib: the {} MiB for request bodies had no room for this one ({length} bytes) within {wait} s (limits.body_wait_secs); try again later",
                limits.body_memory_mib
            );
            return Err(refuse(
                event,
                StatusCode::SERVICE_UNAVAILABLE,
                &name,
                reason,
            ));
        };
        let incoming = Stall::new(incoming, stall, Silent::RequestBody);
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
                let mut resp = refuse(event, status, &name, reason);
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
        if let Some(id) = guard.as_ref().and_then(|set| set.find(&data)) {
            let block = decider.leak("body", id);
            return Err(blocked(event, &decider, &block));
        }
        let mut scanner = BodyScanner::new();
        let decide = &mut |t: &str| decider.decide("body", t);
        let out = match (scanner.push(data, decide), scanner.finish(decide)) {
            (Ok(a), Ok(b)) if b.is_empty() => a,
            (Ok(a), Ok(b)) => {
                let mut joined = Vec::with_capacity(a.len() + b.len());
                joined.extend_from_slice(&a);
                joined.extend_from_slice(&b);
                Bytes::from(joined)
            }
            _ => Bytes::new(),
        };
        if let Some(block) = decider.blocked() {
            return Err(blocked(event, &decider, &block));
        }
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len()));
        Held::new(out, share).boxed_unsync()
    } else {
        parts.headers.remove(header::CONTENT_LENGTH);
        let scan = Substitute {
            guard: guard.as_ref().map(LeakSet::scanner),
            scanner: BodyScanner::new(),
            decider: decider.clone(),
        };
        let incoming = Stall::new(incoming, stall, Silent::RequestBody);
        Transformed::new(incoming, scan, bytes_up.clone()).boxed_unsync()
    };

    // 6. Values substituted on this connection must not come back in responses.
    let redactor = {
        let mut set = reflect.lock().unwrap_or_else(|p| p.into_inner());
        let record = decider.record.lock().unwrap_or_else(|p| p.into_inner());
        let mut grew = false;
        for (value, token) in &record.substituted {
            if !set.pairs.iter().any(|(v, _)| v == value) {
                set.pairs.push((value.clone(), token.clone()));
                grew = true;
            }
        }
        if grew {
            let pairs: Vec<(&[u8], &[u8])> = set
                .pairs
                .iter()
                .map(|(v, t)| (v.as_slice(), t.as_slice()))
                .collect();
            set.compiled = RedactSet::new(&pairs);
        }
        set.compiled.as_ref().map(RedactSet::redactor)
    };
    if redactor.is_some() {
        // Compressed responses could hide a reflected value from the redactor (a server that
        // compresses anyway is decoded: decode.rs).
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    // 7. Upstream.
    let te = super::hop::te_trailers(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.headers.extend(te);
    parts.headers.remove(header::HOST);
    let scheme = if conn.tls { "https" } else { "http" };
    let authority = match hosts::ip_literal(&name) {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{name}:{port}"),
    };
    let uri: Uri = match format!("{scheme}://{authority}{target}").parse() {
        Ok(uri) => uri,
        Err(_) => {
            return Err(refuse(
                event,
                StatusCode::BAD_REQUEST,
                &name,
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
    let method = parts.method.clone();
    let upstream_req = Request::from_parts(parts, upstream_body);
    let client = if upgrade || client_h1 {
        proxy.upstream.http1()
    } else {
        proxy.upstream.any()
    };
    let upstream_idle = Limits::secs(limits.upstream_idle_secs);
    let answer = timeouts::answer(client.request(upstream_req), &bytes_up, upstream_idle).await;
    let mut resp = match answer {
        Some(Ok(resp)) => resp,
        None => {
            let reason = timeouts::reason(
                "upstream_idle_secs",
                &format!("{authority} sent no response for"),
                limits.upstream_idle_secs,
            );
            event.bytes_up = bytes_up.load(Ordering::Relaxed);
            event.decision = "error";
            event.reason = Some(reason.clone());
            return Err(respond::refused(
                StatusCode::GATEWAY_TIMEOUT,
                &name,
                &reason,
            ));
        }
        Some(Err(e)) => {
            if let Some(block) = decider.blocked() {
                return Err(blocked(event, &decider, &block));
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
            event.tokens = decider
                .record
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .uses
                .clone();
            return Err(respond::refused(status, &name, &reason));
        }
    };
    event.status = Some(resp.status().as_u16());

    // 8. The response.
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = tokio::join!(client_upgrade, upstream_upgrade) {
                let _ = tokio::io::copy_bidirectional(
                    &mut TokioIo::new(client),
                    &mut TokioIo::new(upstream),
                )
                .await;
            }
        });
        let (parts, _) = resp.into_parts();
        let body = Audited::new(
            body::empty(),
            std::mem::take(event),
            started,
            bytes_up,
            Some(decider),
            proxy.cfg.audit.clone(),
        );
        return Ok(Response::from_parts(parts, body.boxed_unsync()));
    }
    let (mut parts, incoming) = resp.into_parts();
    let incoming = Stall::new(incoming, upstream_idle, Silent::Upstream);
    // What the redactor must see decoded (read before the hop-by-hop Transfer-Encoding goes).
    let codings = match &redactor {
        Some(redactor) => {
            for value in parts.headers.values_mut() {
                if let Some(new) = redactor.redact(value.as_bytes())
                    && let Ok(v) = HeaderValue::from_bytes(&new)
                {
                    *value = v;
                }
            }
            decode::plan(&method, parts.status, &mut parts.headers)
        }
        None => Ok(Vec::new()),
    };
    strip_hop_by_hop(&mut parts.headers, false);
    let body = match redactor {
        Some(redactor) => {
            let codings = match codings {
                Ok(codings) => codings,
                Err(undecodable) => {
                    event.tokens = decider
                        .record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .uses
                        .clone();
                    let reason = undecodable.to_string();
                    return Err(refuse(event, StatusCode::BAD_GATEWAY, &name, reason));
                }
            };
            if method != Method::HEAD {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            let source = if codings.is_empty() {
                Either::Left(incoming)
            } else {
                Either::Right(decode::decoded(incoming, &codings))
            };
            Transformed::new(source, Redact { redactor }, Arc::default()).boxed_unsync()
        }
        None => incoming.map_err(body::BoxError::from).boxed_unsync(),
    };
    let body = Audited::new(
        body,
        std::mem::take(event),
        started,
        bytes_up,
        Some(decider),
        proxy.cfg.audit.clone(),
    );
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

fn refuse(
    event: &mut Event,
    status: StatusCode,
    host: &str,
    reason: String,
) -> Response<ProxyBody> {
    event.decision = "block";
    event.reason = Some(reason.clone());
    respond::refused(status, host, &reason)
}

fn blocked(
    event: &mut Event,
    decider: &Decider,
    block: &super::decide::BlockInfo,
) -> Response<ProxyBody> {
    event.decision = "block";
    event.reason = Some(block.reason.clone());
    event.tokens = decider
        .record
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .uses
        .clone();
    respond::blocked(block)
}
