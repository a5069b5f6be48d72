//! Hop-by-hop headers: they describe one connection, so they are removed from a request before
//! it goes upstream and from a response before it goes back (RFC 9110 §7.6.1).
//!
//! One goes on: `TE: trailers`. A gRPC server refuses a request without it ("Missing :te
//! header"), and it is the only value HTTP/2 allows, so a request's `TE` is passed upstream as
//! `trailers` when it names trailers, and dropped otherwise (transfer codings such as `gzip`
//! are the connection's, not the request's).

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

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

/// `te: trailers` if the client's `TE` (any of its lines) lists `trailers`.
pub(in crate::proxy) fn te_trailers(headers: &HeaderMap) -> Option<(HeaderName, HeaderValue)> {
    let listed = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("trailers"))
        });
    listed.then(|| (header::TE, HeaderValue::from_static("trailers")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(values: &[&str]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::TE, HeaderValue::from_str(v).unwrap());
        }
        te_trailers(&headers).map(|(name, value)| {
            assert_eq!(name, header::TE);
            value.to_str().unwrap().to_owned()
        })
    }

    #[test]
    fn only_trailers_is_kept() {
        assert_eq!(te(&["trailers"]).as_deref(), Some("trailers"));
        assert_eq!(te(&["Trailers"]).as_deref(), Some("trailers"));
        assert_eq!(te(&["gzip;q=0.5, trailers"]).as_deref(), Some("trailers"));
        assert_eq!(te(&["deflate", " trailers "]).as_deref(), Some("trailers"));
        assert_eq!(te(&["gzip, deflate;q=0.3"]), None);
        assert_eq!(te(&["trailersx"]), None);
        assert_eq!(te(&[]), None);
    }
}
