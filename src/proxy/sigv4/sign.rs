//! The new signature, by the `aws-sigv4` crate with the real key, over the request exactly as
//! it goes upstream: the headers the client signed (as they are now, tokens substituted), the
//! URI the upstream client sends (its host, as hyper writes it, without a default port), the
//! client's date, region and service, and the payload hash mode the client chose.

use std::borrow::Cow;
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PercentEncodingMode, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
    UriPathNormalizationMode, sign,
};
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use sha2::{Digest, Sha256};

use super::{Location, Resign, parse};
use crate::aws::AwsKeys;
use crate::proxy::body::ProxyBody;

const CONTENT_SHA256: &str = "x-amz-content-sha256";

/// Re-signs `req` in place and returns the new signature (the seed of chunk signatures); the
/// error is the refusal's reason (never holding the key).
pub(super) fn apply(
    req: &mut Request<ProxyBody>,
    resign: &Resign,
    identity: &Identity,
    whole: Option<&Bytes>,
) -> Result<String, String> {
    let sig = &resign.signature;
    let body = payload(req, &sig.location, whole)?;
    let uri = match sig.location {
        Location::Header => req.uri().clone(),
        Location::Query { .. } => {
            let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let stripped = parse::without_query_signature(pq);
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(
                stripped
                    .parse()
                    .map_err(|_| "the presigned URL is not a valid URI".to_owned())?,
            );
            Uri::from_parts(parts).map_err(|_| "the presigned URL is not a valid URI".to_owned())?
        }
    };
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for name in sig.signed_headers.iter().filter(|n| *n != "host") {
        for value in req.headers().get_all(name.as_str()) {
            let value = value.to_str().map_err(|_| {
                format!("the signed header {name} is not text; netcage cannot re-sign it")
            })?;
            headers.push((name.as_str(), value));
        }
    }
    let time = resign.time;
    let s3 = sig.service.starts_with("s3");
    let mut settings = SigningSettings::default();
    settings.excluded_headers = None;
    settings.percent_encoding_mode = if s3 {
        PercentEncodingMode::Single
    } else {
        PercentEncodingMode::Double
    };
    settings.uri_path_normalization_mode = if s3 {
        UriPathNormalizationMode::Disabled
    } else {
        UriPathNormalizationMode::Enabled
    };
    if let Location::Query { expires } = sig.location {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(Duration::from_secs(expires));
    }
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(identity)
        .region(&sig.region)
        .name(&sig.service)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("cannot re-sign the SigV4 request: {e}"))?
        .into();
    let uri_text = uri.to_string();
    let signable = SignableRequest::new(
        req.method().as_str(),
        Cow::Borrowed(uri_text.as_str()),
        headers.into_iter(),
        body,
    )
    .map_err(|e| format!("cannot re-sign the SigV4 request: {e}"))?;
    let (instructions, signature) = sign(signable, &params)
        .map_err(|e| format!("cannot re-sign the SigV4 request: {e}"))?
        .into_parts();
    *req.uri_mut() = uri;
    instructions.apply_to_request_http1x(req);
    Ok(signature)
}

/// The identity that signs: the real key, without a session token (the client's
/// X-Amz-Security-Token, already the real value, is signed where the client put it, like any
/// signed header or parameter).
pub(super) fn identity(real: &AwsKeys) -> Identity {
    Credentials::new(
        real.access_key_id.as_str(),
        real.secret_access_key.as_str(),
        None,
        None,
        "netcage",
    )
    .into()
}

/// The payload hash to sign, setting `x-amz-content-sha256` to the hash of the body as sent
/// when the client signed a literal hash and the body was read whole.
fn payload<'a>(
    req: &mut Request<ProxyBody>,
    location: &Location,
    whole: Option<&'a Bytes>,
) -> Result<SignableBody<'a>, String> {
    let declared = req
        .headers()
        .get(CONTENT_SHA256)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok(match (declared, whole) {
        (None, _) if matches!(location, Location::Query { .. }) => SignableBody::UnsignedPayload,
        (Some(hash), Some(body)) if is_sha256_hex(&hash) => {
            let hash = hex(&Sha256::digest(body));
            let value = HeaderValue::from_str(&hash).map_err(|_| "unreachable".to_owned())?;
            req.headers_mut().insert(CONTENT_SHA256, value);
            SignableBody::Precomputed(hash)
        }
        (Some(mode), _) => SignableBody::Precomputed(mode),
        (None, Some(body)) => SignableBody::Bytes(body),
        (None, None) => {
            return Err("the SigV4 request's body is streamed (no Content-Length, or over 8 MiB) and signed by its hash without x-amz-content-sha256; netcage cannot re-sign it before sending (send a Content-Length, or use S3's UNSIGNED-PAYLOAD)".into());
        }
    })
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
