//! The one hop-by-hop header that goes on: `TE: trailers`. A gRPC server refuses a request
//! without it ("Missing :te header"), and it is the only value HTTP/2 allows, so a request's
//! `TE` is passed upstream as `trailers` when it names trailers, and dropped otherwise
//! (transfer codings such as `gzip` are the connection's, not the request's).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `te: trailers` if the client's `TE` (any of its lines) lists `trailers`.
pub fn te_trailers(headers: &HeaderMap) -> Option<(HeaderName, HeaderValue)> {
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
