//! Errors become HTTP responses here, and only here: 403 policy, 421 misdirected, 400 bad
//! request, 408 a request body that stopped, 502 upstream failure, 503 no room for a body,
//! 504 upstream timeout. Bodies are one JSON object.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::body::{ProxyBody, full};
use super::decide::BlockInfo;

pub fn json(status: StatusCode, value: serde_json::Value) -> Response<ProxyBody> {
    let mut body = serde_json::to_vec(&value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-netcage", HeaderValue::from_static("refused"));
    resp
}

/// A request refused by policy or by netcage itself, with the reason.
pub fn refused(status: StatusCode, host: &str, reason: &str) -> Response<ProxyBody> {
    json(
        status,
        json!({"error": format!("netcage refused this request: {reason}"), "host": host}),
    )
}

/// A token that may not go to this host.
pub fn blocked(info: &BlockInfo) -> Response<ProxyBody> {
    json(
        StatusCode::FORBIDDEN,
        json!({
            "error": format!("netcage blocked this request: {}", info.reason),
            "fingerprint": info.fingerprint,
            "host": info.host,
            "bound_hosts": info.bound_hosts,
        }),
    )
}

/// Classifies an upstream failure: status and a one-line reason.
pub fn upstream_failure(
    err: &(dyn std::error::Error + 'static),
    authority: &str,
) -> (StatusCode, String) {
    let mut chain = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut status = StatusCode::BAD_GATEWAY;
    let mut reason = None;
    while let Some(e) = cur {
        if e.is::<super::body::SourceFailed>() {
            if let Some(timed_out) = super::timeouts::TimedOut::find(e) {
                return (StatusCode::REQUEST_TIMEOUT, timed_out.0.clone());
            }
            return (
                StatusCode::BAD_REQUEST,
                "the client's request body ended before it was complete (the client went away?)"
                    .to_owned(),
            );
        }
        chain.push(e.to_string());
        match rustls_error(e) {
            Some(tls @ rustls::Error::InvalidCertificate(_)) => {
                reason = Some(format!(
                    "the TLS certificate of {authority} did not verify ({tls}); if this is your own server, pass its CA with --upstream-ca"
                ));
            }
            Some(tls) => {
                reason = Some(format!("the TLS handshake with {authority} failed ({tls})"));
            }
            None => {}
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    status = StatusCode::FORBIDDEN;
                    reason = Some(io.to_string());
                }
                std::io::ErrorKind::ConnectionRefused => {
                    reason.get_or_insert(format!(
                        "{authority} refused the connection (is the server up?)"
                    ));
                }
                std::io::ErrorKind::TimedOut => {
                    status = StatusCode::GATEWAY_TIMEOUT;
                    reason.get_or_insert(format!("{authority} did not answer in time"));
                }
                _ => {}
            }
        }
        cur = e.source();
    }
    chain.dedup();
    let reason =
        reason.unwrap_or_else(|| format!("cannot reach {authority}: {}", chain.join(": ")));
    (status, reason)
}

/// The rustls error in `e`, also when wrapped in layers of `io::Error` (hyper-rustls wraps
/// tokio-rustls's `io::Error` in another one, and `io::Error::source` skips the middle layer).
fn rustls_error<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner: &(dyn std::error::Error + 'static) =
        e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}
