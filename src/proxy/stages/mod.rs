//! The stages of one request, in the order `service::forward` runs them. Each takes what the
//! one before produced and either passes the request on or stops it with the response the
//! client gets at once (a [`Stop`]; `service::handle` writes its audit line).
//!
//! ```text
//! host.rs          which host every decision is for; egress policy, metadata, domain fronting
//! head.rs          the leak guard and token substitution in headers and request target
//! request_body.rs  the body: read whole and scanned (small, sized) or streamed through the scanner
//! reflect.rs       the connection's substituted values, which responses must not show
//! send.rs          the upstream call: hop-by-hop headers, URI, protocol, timeouts, failures
//! upgrade.rs       after a 101: the two upgraded connections are joined (WebSocket or bytes)
//! websocket.rs     WebSocket messages: tokens substituted going out, values redacted coming back
//! ws_memory.rs     the memory of WebSocket messages being reassembled, charged to the body budget
//! response.rs      the response on its way back: headers and body through the redactor
//! hop.rs           hop-by-hop headers, removed on both ways
//! ```

pub(super) mod head;
pub(super) mod hop;
pub(super) mod host;
pub(super) mod reflect;
pub(super) mod request_body;
pub(super) mod response;
pub(super) mod send;
pub(super) mod upgrade;
pub(in crate::proxy) mod websocket;
pub(in crate::proxy) mod ws_memory;

use std::sync::Arc;

use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::decide::{BlockInfo, Decider};
use super::respond;
use crate::audit::{Event, TokenUse};
use crate::scan::LeakSet;

/// A request stopped by a stage: the response the client gets now (boxed: it is the rare
/// path, and keeps every stage's `Result` small).
pub(super) type Stop = Box<Response<ProxyBody>>;

/// What the stages after the host decision check a request with: the host every decision is
/// for, the per-token decider, and the leak guard's values that may not go there.
pub(super) struct Checks {
    pub name: String,
    pub decider: Decider,
    pub guard: Option<Arc<LeakSet>>,
}

/// Refuses the request with `status` and `reason` (audit decision `block`).
pub(super) fn refuse(event: &mut Event, status: StatusCode, host: &str, reason: String) -> Stop {
    event.decision = "block";
    event.reason = Some(reason.clone());
    Box::new(respond::refused(status, host, &reason))
}

/// Blocks the request for a token (or real value) that may not go to this host: 403.
pub(super) fn blocked(event: &mut Event, decider: &Decider, block: &BlockInfo) -> Stop {
    event.decision = "block";
    event.reason = Some(block.reason.clone());
    event.tokens = token_uses(decider);
    Box::new(respond::blocked(block))
}

/// Every token decision made for the request so far, for its audit line.
pub(super) fn token_uses(decider: &Decider) -> Vec<TokenUse> {
    decider
        .record
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .uses
        .clone()
}
