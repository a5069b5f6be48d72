//! Stage 5, upgrades: a request that asks to switch protocols keeps its `Upgrade` headers, and
//! after the server's `101 Switching Protocols` the client's and the server's upgraded
//! connections are joined.

use http::header;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The client's side of the upgrade, if `req` asks for one (HTTP/1.1 `Connection: upgrade`
/// with an `Upgrade` header).
pub(in crate::proxy) fn requested(req: &mut Request<Incoming>) -> Option<OnUpgrade> {
    is_upgrade(req).then(|| hyper::upgrade::on(req))
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
pub(in crate::proxy) fn switch(
    resp: &mut Response<Incoming>,
    client: &mut Option<OnUpgrade>,
) -> bool {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return false;
    }
    let Some(client) = client.take() else {
        return false;
    };
    let upstream = hyper::upgrade::on(resp);
    tokio::spawn(async move {
        if let (Ok(client), Ok(upstream)) = tokio::join!(client, upstream) {
            let _ = tokio::io::copy_bidirectional(
                &mut TokioIo::new(client),
                &mut TokioIo::new(upstream),
            )
            .await;
        }
    });
    true
}
