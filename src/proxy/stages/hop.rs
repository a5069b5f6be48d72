//! Hop-by-hop headers: they describe one connection, so they are removed from a request before
//! it goes upstream and from a response before it goes back (RFC 9110 §7.6.1).

use http::HeaderMap;
use http::header::{self, HeaderName};

const HOP_BY_HOP: &[HeaderName] = &[
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers and those `Connection` names; `keep_upgrade` keeps
/// `Connection: upgrade` and `Upgrade` for a request that asks to switch protocols.
pub(in crate::proxy) fn strip(headers: &mut HeaderMap, keep_upgrade: bool) {
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
