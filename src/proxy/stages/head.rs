//! Stage 2, the request head: the leak guard on what the client sent (real values that may not
//! go to this host), then tokens in header values and in the request target.

use http::header::{self, HeaderValue};
use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Checks, Stop, blocked, refuse};
use crate::audit::Event;
use crate::proxy::decide::Decider;
use crate::proxy::guard;
use crate::scan;

/// Substitutes tokens in the headers of `req` (in place) and returns its target (path and
/// query) with tokens substituted; stops the request for a blocked token or guarded value.
pub(in crate::proxy) fn substitute(
    req: &mut Request<Incoming>,
    checks: &Checks,
    event: &mut Event,
) -> Result<String, Stop> {
    let decider = &checks.decider;
    if let Some(set) = &checks.guard {
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        if let Some((location, id)) = guard::find_in_head(set, req.headers(), target.as_bytes()) {
            // The audit line must not carry the value: leave out a path that holds it.
            if set.find_in_target(req.uri().path().as_bytes()).is_some() {
                event.path = None;
            }
            let block = decider.leak(&location, id);
            return Err(blocked(event, decider, &block));
        }
    }
    let bad_header = headers(req, decider);
    let target = target(req, decider);
    if let Some(block) = decider.blocked() {
        return Err(blocked(event, decider, &block));
    }
    if let Some(hname) = bad_header {
        return Err(refuse(
            event,
            StatusCode::BAD_REQUEST,
            &checks.name,
            format!("the secret substituted into header {hname} is not a valid header value"),
        ));
    }
    Ok(target)
}

/// Tokens in header values (any value holding `starpod`, and every `Authorization`, where
/// Basic credentials hide them in base64). Returns a header whose substituted value is not a
/// valid header value.
fn headers(req: &mut Request<Incoming>, decider: &Decider) -> Option<String> {
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
    bad_header
}

/// The request target (path and query) with tokens substituted, also percent-encoded ones.
fn target(req: &Request<Incoming>, decider: &Decider) -> String {
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_owned();
    match scan::scan_target(target.as_bytes(), &mut |t| decider.decide("target", t)) {
        Ok(Some(new)) => String::from_utf8(new).unwrap_or(target),
        _ => target,
    }
}
