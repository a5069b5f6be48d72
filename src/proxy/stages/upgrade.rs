//! Stage 5, upgrades: a request that asks to switch protocols keeps its `Upgrade` headers, and
//! after the server's `101 Switching Protocols` the client's and the server's upgraded
//! connections are joined: a WebSocket by the WebSocket stage (`websocket.rs`, message by
//! message), any other protocol as bytes.

use http::header;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::websocket;
use crate::proxy::rest::Handoff;

/// A request's ask to switch protocols: the client's side of the upgrade.
pub(in crate::proxy) struct Requested {
    /// The connection's client stream, handed over after the 101 (`rest.rs`).
    client: Handoff,
    /// `Upgrade: websocket`.
    pub websocket: bool,
}

/// The client's side of the upgrade, if `req` asks for one (HTTP/1.1 `Connection: upgrade`
/// with an `Upgrade` header). A WebSocket upgrade loses `Sec-WebSocket-Extensions`:
/// `permessage-deflate` would compress messages past the scanner and the redactor.
pub(in crate::proxy) fn requested(
    req: &mut Request<Incoming>,
    handoff: &Handoff,
) -> Option<Requested> {
    if !is_upgrade(req) {
        return None;
    }
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if websocket {
        req.headers_mut().remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    Some(Requested {
        client: handoff.clone(),
        websocket,
    })
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

/// If the server switched protocols for a client that asked to, joins the two upgraded
/// connections (on a task of their own) and returns true; the caller then sends the 101 on.
/// A WebSocket is relayed by [`websocket::relay`] with the session `session` makes.
pub(in crate::proxy) fn switch(
    resp: &mut Response<Incoming>,
    requested: &mut Option<Requested>,
    session: impl FnOnce() -> websocket::Session,
) -> bool {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    let Some(requested) = requested.take() else {
        return false;
    };
    let upstream = hyper::upgrade::on(&mut *resp);
    let client = requested.client.expect();
    if requested.websocket {
        // Extensions were not asked for; a server that names one anyway is not believed (a
        // compressed frame from it closes the connection as a protocol error).
        resp.headers_mut().remove(header::SEC_WEBSOCKET_EXTENSIONS);
        let session = session();
        tokio::spawn(async move {
            if let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) {
                websocket::relay(client, TokioIo::new(upstream), session).await;
            }
        });
        return true;
    }
    tokio::spawn(async move {
        if let (Ok(mut client), Ok(upstream)) = tokio::join!(client, upstream) {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut TokioIo::new(upstream)).await;
        }
    });
    true
}
