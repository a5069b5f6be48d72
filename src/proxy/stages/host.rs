//! Stage 1, the host decision: the name every later decision is made for — the TLS server
//! name (verified upstream), which the `Host` header must agree with — and whether the egress
//! policy lets the request go there.

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::{Stop, refuse};
use crate::audit::Event;
use crate::hosts;
use crate::policy;
use crate::proxy::{ConnInfo, Proxy};

/// Where the request goes: the name decisions are made for, and the port.
pub(in crate::proxy) struct Destination {
    pub name: String,
    pub port: u16,
}

impl Destination {
    /// `name:port`, with an IPv6 literal in brackets.
    pub fn authority(&self) -> String {
        match hosts::ip_literal(&self.name) {
            Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.name, self.port),
        }
    }
}

/// The destination of `req`, or the refusal: no host named, SNI and Host disagree (domain
/// fronting), the egress policy denies the name, or (Tier 1) the connection went to a cloud
/// metadata address under another name.
pub(in crate::proxy) fn decide(
    proxy: &Proxy,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    event: &mut Event,
) -> Result<Destination, Stop> {
    let req_host = request_host(req);
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
    egress(proxy, conn, &name, event)?;
    Ok(Destination { name, port })
}

/// Egress policy, for the name and (Tier 1) for a metadata address the connection was made
/// to: a request naming another host there is refused rather than sent elsewhere.
fn egress(proxy: &Proxy, conn: &ConnInfo, name: &str, event: &mut Event) -> Result<(), Stop> {
    let verdict = proxy.cfg.policy.egress(name);
    if !verdict.allowed {
        return Err(refuse(
            event,
            StatusCode::FORBIDDEN,
            name,
            format!(
                "{name} is not allowed by the egress policy ({})",
                verdict.rule
            ),
        ));
    }
    if let Some(target) = &conn.target_host
        && target != name
        && policy::is_metadata(target)
        && !proxy.cfg.policy.egress(target).allowed
    {
        return Err(refuse(
            event,
            StatusCode::FORBIDDEN,
            name,
            format!(
                "the connection went to {target}, a cloud metadata address (allow it by exact address to reach it)"
            ),
        ));
    }
    if let Some(reason) = proxy.upstream.resolver.refuse_literal(name) {
        return Err(refuse(event, StatusCode::FORBIDDEN, name, reason));
    }
    Ok(())
}

/// The host a request names: absolute-form / `:authority`, else the Host header. No port.
fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(host) = req.uri().host() {
        return Some(hosts::normalize(host));
    }
    let value = req.headers().get(http::header::HOST)?.to_str().ok()?;
    let authority: http::uri::Authority = value.parse().ok()?;
    Some(hosts::normalize(authority.host()))
}
