//! Stage 6, the response on its way back: when values were substituted on the connection,
//! its headers and its body (decoded first if the server compressed it anyway) go through the
//! redactor, so the client sees tokens where the server showed real values (gRPC message by
//! message, see `grpc.rs`).

use std::sync::Arc;

use http::header::HeaderValue;
use http::response::Parts;
use http::{Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;

use super::{Checks, Stop, hop, refuse, token_uses};
use crate::audit::Event;
use crate::policy::Limits;
use crate::proxy::Proxy;
use crate::proxy::body::{self, ProxyBody, Redact, Transformed};
use crate::proxy::decode;
use crate::proxy::grpc::{self, GrpcRedact};
use crate::proxy::timeouts::{Silent, Stall};
use crate::scan::Redactor;

/// The response to `method` as the client gets it, before the audit wrapper.
pub(in crate::proxy) fn redact(
    proxy: &Proxy,
    resp: Response<Incoming>,
    method: &Method,
    redactor: Option<Redactor>,
    checks: &Checks,
    event: &mut Event,
) -> Result<(Parts, ProxyBody), Stop> {
    let (mut parts, incoming) = resp.into_parts();
    let upstream_idle = Limits::secs(proxy.cfg.policy.limits.upstream_idle_secs);
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
            decode::plan(method, parts.status, &mut parts.headers)
        }
        None => Ok(Vec::new()),
    };
    hop::strip(&mut parts.headers, false);
    let Some(redactor) = redactor else {
        let body = incoming.map_err(body::BoxError::from).boxed_unsync();
        return Ok((parts, body));
    };
    let codings = match codings {
        Ok(codings) => codings,
        Err(undecodable) => {
            event.tokens = token_uses(&checks.decider);
            let reason = undecodable.to_string();
            return Err(refuse(event, StatusCode::BAD_GATEWAY, &checks.name, reason));
        }
    };
    if *method != Method::HEAD {
        parts.headers.remove(header::CONTENT_LENGTH);
    }
    let source = if codings.is_empty() {
        Either::Left(incoming)
    } else {
        Either::Right(decode::decoded(incoming, &codings))
    };
    // gRPC messages carry their length: each is redacted whole and its prefix rewritten.
    let body = if grpc::is_grpc(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.as_bytes()),
    ) {
        Transformed::new(source, GrpcRedact::new(redactor), Arc::default()).boxed_unsync()
    } else {
        Transformed::new(source, Redact { redactor }, Arc::default()).boxed_unsync()
    };
    Ok((parts, body))
}
