//! One HTTP request through the proxy, as a pipeline of the stages in `stages/`: the host
//! decision, the head (leak guard, tokens in headers and target), a SigV4 stand-in's host check,
//! the body, the re-signing of that request with the real key (`sigv4/`), the upstream call,
//! then either the upgrade (WebSocket messages checked like bodies) or the response with real
//! values turned back into tokens.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{self, Audited, ProxyBody};
use super::decide::Decider;
use super::rest::Handoff;
use super::sigv4;
use super::stages::{
    Checks, Stop, head, host, reflect, request_body, response, send, upgrade, websocket,
};
use super::{ConnInfo, Proxy};
use crate::audit::Event;

pub use super::stages::reflect::ReflectSet;

/// Entry point for every request on an intercepted or forwarded connection.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Arc<ConnInfo>,
    reflect: ReflectSet,
    handoff: Handoff,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let mut event = Event::new("request", "allow");
    event.exec = conn.exec.clone();
    super::name_process(&mut event, conn.process.as_deref());
    event.client = Some(conn.client.to_string());
    event.sni = conn.sni.clone();
    event.method = Some(req.method().to_string());
    event.path = Some(req.uri().path().to_owned());
    let result = forward(&proxy, &conn, &reflect, &handoff, req, &mut event, started).await;
    let resp = match result {
        Ok(resp) => return Ok(resp),
        Err(resp) => *resp,
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
    handoff: &Handoff,
    mut req: Request<Incoming>,
    event: &mut Event,
    started: Instant,
) -> Result<Response<ProxyBody>, Stop> {
    let dest = host::decide(proxy, conn, &req, event)?;
    let checks = Checks {
        decider: Decider::new(proxy.clone(), &dest.name, conn.tls),
        guard: proxy.guard.for_host(&dest.name),
        name: dest.name.clone(),
    };
    let target = head::substitute(&mut req, &checks, event)?;
    let resign = sigv4::check(proxy, &req, &checks, event)?;
    let mut client_upgrade = upgrade::requested(&mut req, handoff);
    let (mut parts, incoming) = req.into_parts();
    let keep_length = resign.is_some();
    let outgoing =
        request_body::prepare(proxy, &mut parts, incoming, keep_length, &checks, event).await?;
    let redactor = reflect::learn(reflect, &checks.decider);
    if redactor.is_some() {
        // Compressed responses could hide a reflected value from the redactor (a server that
        // compresses anyway is decoded: decode.rs).
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }
    let method = parts.method.clone();
    let upgrading = client_upgrade.is_some();
    let mut request = send::build(conn, &dest, &target, parts, outgoing.body, upgrading, event)?;
    if let Some(resign) = &resign {
        let whole = outgoing.whole.as_ref();
        sigv4::resign(proxy, request.request_mut(), resign, whole, &checks, event)?;
    }
    let mut resp = send::call(proxy, request, &outgoing.bytes_up, &checks, event).await?;
    let audit = AuditOnEnd {
        proxy,
        started,
        bytes_up: outgoing.bytes_up,
        decider: checks.decider.clone(),
    };
    let session =
        || websocket::Session::new(proxy.clone(), &dest.name, conn.tls, reflect.clone(), event);
    if upgrade::switch(&mut resp, &mut client_upgrade, session) {
        let (parts, _) = resp.into_parts();
        return Ok(audit.wrap(parts, body::empty(), event));
    }
    let (parts, body) = response::redact(proxy, resp, &method, redactor, &checks, event)?;
    Ok(audit.wrap(parts, body, event))
}

/// What the response body needs to write the request's audit line when it ends.
struct AuditOnEnd<'a> {
    proxy: &'a Proxy,
    started: Instant,
    bytes_up: Arc<AtomicU64>,
    decider: Decider,
}

impl AuditOnEnd<'_> {
    fn wrap(
        self,
        parts: http::response::Parts,
        body: ProxyBody,
        event: &mut Event,
    ) -> Response<ProxyBody> {
        let body = Audited::new(
            body,
            std::mem::take(event),
            self.started,
            self.bytes_up,
            Some(self.decider),
            self.proxy.cfg.audit.clone(),
        );
        Response::from_parts(parts, body.boxed_unsync())
    }
}
