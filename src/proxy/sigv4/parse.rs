//! What a SigV4 request says about its signature: from `Authorization: AWS4-HMAC-SHA256
//! Credential=…, SignedHeaders=…, Signature=…` or a presigned URL's `X-Amz-*` query
//! parameters. Pure.

use std::time::SystemTime;

use percent_encoding::percent_decode_str;

/// The algorithm netcage re-signs.
pub const HMAC: &str = "AWS4-HMAC-SHA256";
/// SigV4a, recognised to be refused with a clear reason.
pub const ECDSA: &str = "AWS4-ECDSA-P256-SHA256";

/// Query parameters a presigned URL's signature consists of (replaced when re-signed).
pub const QUERY_SIGNATURE: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
];

/// Where the signature is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Header,
    /// A presigned URL valid for this many seconds.
    Query {
        expires: u64,
    },
}

/// One request's signature, as the client made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub algorithm: String,
    pub key_id: String,
    /// The credential scope: `YYYYMMDD`, region, service.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lowercase, as listed.
    pub signed_headers: Vec<String>,
    pub location: Location,
}

/// Parses an `Authorization` value; `None` when it is not SigV4.
pub fn authorization(value: &str) -> Option<Signature> {
    let (algorithm, rest) = value.trim().split_once(' ')?;
    if algorithm != HMAC && algorithm != ECDSA {
        return None;
    }
    let mut credential = None;
    let mut signed = None;
    for part in rest.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v.trim()),
            Some(("SignedHeaders", v)) => signed = Some(v.trim()),
            _ => {}
        }
    }
    signature(algorithm, credential?, signed?, Location::Header)
}

/// The percent-decoded value of query parameter `name`, if present.
pub fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode_str(k).decode_utf8().ok()?;
        (k == name)
            .then(|| {
                percent_decode_str(v)
                    .decode_utf8()
                    .ok()
                    .map(|v| v.into_owned())
            })
            .flatten()
    })
}

/// Parses a presigned URL's query; `None` when it carries no SigV4 signature.
pub fn query(query: &str) -> Option<Signature> {
    let algorithm = param(query, "X-Amz-Algorithm")?;
    let credential = param(query, "X-Amz-Credential")?;
    let signed = param(query, "X-Amz-SignedHeaders").unwrap_or_else(|| "host".into());
    let expires = param(query, "X-Amz-Expires")
        .and_then(|e| e.parse().ok())
        .unwrap_or(900);
    signature(
        &algorithm,
        &credential,
        &signed,
        Location::Query { expires },
    )
}

fn signature(
    algorithm: &str,
    credential: &str,
    signed: &str,
    location: Location,
) -> Option<Signature> {
    let mut parts = credential.split('/');
    let key_id = parts.next()?;
    let date = parts.next()?;
    // SigV4a scopes have no region.
    let (region, service) = if algorithm == ECDSA {
        (String::new(), parts.next()?.to_owned())
    } else {
        (parts.next()?.to_owned(), parts.next()?.to_owned())
    };
    if parts.next() != Some("aws4_request") || key_id.is_empty() {
        return None;
    }
    Some(Signature {
        algorithm: algorithm.to_owned(),
        key_id: key_id.to_owned(),
        date: date.to_owned(),
        region,
        service,
        signed_headers: signed
            .split(';')
            .filter(|h| !h.is_empty())
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        location,
    })
}

/// The key id of a SigV2 signature (`Authorization: AWS KEYID:SIG`, or a presigned URL's
/// `AWSAccessKeyId`), which netcage recognises only to refuse.
pub fn sigv2_key_id(authorization: Option<&str>, query: Option<&str>) -> Option<String> {
    if let Some(rest) = authorization.and_then(|a| a.trim().strip_prefix("AWS "))
        && let Some((id, _)) = rest.split_once(':')
    {
        return Some(id.trim().to_owned());
    }
    query.and_then(|q| param(q, "AWSAccessKeyId"))
}

/// `YYYYMMDDTHHMMSSZ` as a time.
pub fn amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let s = text.get(range)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .into(),
    )
}

/// `path?query` with the presigned signature's parameters left out.
pub fn without_query_signature(path_and_query: &str) -> String {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return path_and_query.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let k = percent_decode_str(k).decode_utf8_lossy();
            !pair.is_empty() && !QUERY_SIGNATURE.contains(&k.as_ref())
        })
        .collect();
    if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization_headers() {
        let sig = authorization("AWS4-HMAC-SHA256 Credential=AKIANETC0123456789AB/20261202/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=abcd").unwrap();
        assert_eq!(sig.key_id, "AKIANETC0123456789AB");
        assert_eq!(
            (sig.date.as_str(), sig.region.as_str(), sig.service.as_str()),
            ("20261202", "us-east-1", "s3")
        );
        assert_eq!(
            sig.signed_headers,
            ["host", "x-amz-content-sha256", "x-amz-date"]
        );
        assert_eq!(sig.location, Location::Header);
        let a = authorization("AWS4-ECDSA-P256-SHA256 Credential=AKIAX/20261202/s3/aws4_request, SignedHeaders=host, Signature=ab").unwrap();
        assert_eq!((a.algorithm.as_str(), a.service.as_str()), (ECDSA, "s3"));
        assert!(authorization("Bearer starpod:v1:x").is_none());
        assert!(
            authorization(
                "AWS4-HMAC-SHA256 Credential=AKIAX/20261202/us-east-1/s3, SignedHeaders=host"
            )
            .is_none()
        );
        assert!(authorization("AWS4-HMAC-SHA256 SignedHeaders=host").is_none());
        assert!(authorization("AWS4-HMAC-SHA256").is_none());
    }

    #[test]
    fn presigned_queries() {
        let q = "list-type=2&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIANETC0123456789AB%2F20261202%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Date=20261202T010203Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature=ff";
        let sig = query(q).unwrap();
        assert_eq!(
            (sig.key_id.as_str(), sig.region.as_str()),
            ("AKIANETC0123456789AB", "eu-west-1")
        );
        assert_eq!(sig.location, Location::Query { expires: 3600 });
        assert!(query("a=b").is_none());
        assert_eq!(
            without_query_signature(&format!("/b/k?{q}&X-Amz-Security-Token=t")),
            "/b/k?list-type=2&X-Amz-Security-Token=t"
        );
        assert_eq!(without_query_signature("/b?X-Amz-Signature=1"), "/b");
        assert_eq!(without_query_signature("/b"), "/b");
    }

    #[test]
    fn sigv2_key_ids() {
        assert_eq!(
            sigv2_key_id(Some("AWS AKIAX:c2ln"), None).as_deref(),
            Some("AKIAX")
        );
        assert_eq!(
            sigv2_key_id(None, Some("AWSAccessKeyId=AKIAY&Signature=x")).as_deref(),
            Some("AKIAY")
        );
        assert!(
            sigv2_key_id(
                Some("AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request"),
                Some("a=b")
            )
            .is_none()
        );
    }

    #[test]
    fn dates() {
        let t = amz_date("20261202T010203Z").unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_796_173_323);
        for bad in [
            "20261302T010203Z",
            "20261202T250203Z",
            "2026120T010203Z",
            "20261202 010203Z",
            "+0261202T010203Z",
            "",
        ] {
            assert!(amz_date(bad).is_none(), "{bad}");
        }
    }
}
