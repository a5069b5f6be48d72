//! SigV4 re-signing (`--seal-aws`): a request signed with a stand-in key id (`crate::aws`) is
//! checked against the stand-in's hosts before anything is sent ([`check`], after the head
//! stage), then, once the request is what goes upstream (headers, target and body final),
//! signed again with the real key by the `aws-sigv4` crate ([`resign`]): the same signed
//! headers, region, service, date and payload hash mode.
//!
//! ```text
//! mod.rs     the two steps, the refusals
//! parse.rs   Authorization / presigned query parsing, X-Amz-Date
//! sign.rs    the signature by aws-sigv4 with the real key, applied to the request
//! chunks.rs  STREAMING-AWS4-HMAC-SHA256-PAYLOAD: each chunk signed again, chained
//! ```
//!
//! Payload hash modes: a literal SHA-256 in `x-amz-content-sha256` is recomputed over the body
//! as sent when the body was read whole (substitution may have changed it), kept otherwise;
//! `UNSIGNED-PAYLOAD` and `STREAMING-UNSIGNED-PAYLOAD-TRAILER` are kept (only the seed
//! signature covers the head); no header (services other than S3) means the hash of the body
//! as sent; `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` gets every chunk signature made again,
//! chained from the new seed (`chunks.rs`). Its `-TRAILER` form, the ECDSA forms, SigV4a and
//! SigV2 are refused with a 403 naming the mode.

mod chunks;
pub(super) mod parse;
mod sign;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::Proxy;
use super::body::ProxyBody;
use super::stages::{Checks, Stop, blocked, refuse, token_uses};
use crate::audit::Event;

pub(in crate::proxy) use parse::{Location, Signature};

/// A request to re-sign: its signature and the sealed key (index into `ProxyConfig::aws`).
pub(in crate::proxy) struct Resign {
    signature: Signature,
    credential: usize,
    /// The client's `X-Amz-Date`.
    time: std::time::SystemTime,
    /// The body is `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`: its chunks are signed again.
    chunked: bool,
}

/// The payload mode whose chunks netcage signs again.
const SIGNED_CHUNKS: &str = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";

/// Payload modes whose body carries signatures chained from the seed: not re-signed.
const CHAINED: &[&str] = &[
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
];

/// Whether `req` is signed with a stand-in, and if so whether this host may get it signed
/// with the real key: `Ok(None)` for any other request (passed on as it is).
pub(in crate::proxy) fn check(
    proxy: &Proxy,
    req: &Request<Incoming>,
    checks: &Checks,
    event: &mut Event,
) -> Result<Option<Resign>, Stop> {
    if proxy.cfg.aws.is_empty() {
        return Ok(None);
    }
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (signature, location) = match authorization.and_then(parse::authorization) {
        Some(sig) => (sig, "header:authorization"),
        None => match req.uri().query().and_then(parse::query) {
            Some(sig) => (sig, "target"),
            None => return sigv2(proxy, authorization, req, checks, event).map(|()| None),
        },
    };
    let Some(credential) = proxy
        .cfg
        .aws
        .iter()
        .position(|c| c.standin_id == signature.key_id)
    else {
        return Ok(None);
    };
    let sealed = &proxy.cfg.aws[credential];
    let decider = &checks.decider;
    if let Err(block) = decider.sigv4(location, &sealed.fingerprint, &sealed.hosts) {
        return Err(blocked(event, decider, &block));
    }
    if signature.algorithm != parse::HMAC {
        return Err(refused(
            event,
            checks,
            StatusCode::FORBIDDEN,
            format!(
                "SigV4a ({}) is not re-signed by netcage; configure the client for SigV4 (AWS4-HMAC-SHA256)",
                signature.algorithm
            ),
        ));
    }
    let mode = req
        .headers()
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok());
    if let Some(mode) = mode.filter(|m| CHAINED.contains(m)) {
        return Err(refused(
            event,
            checks,
            StatusCode::FORBIDDEN,
            format!(
                "the payload mode {mode} (signed trailers, or ECDSA chunk signatures) is not re-signed by netcage; use HTTPS with UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER or STREAMING-AWS4-HMAC-SHA256-PAYLOAD (the SDKs' defaults)"
            ),
        ));
    }
    let amz_date = match signature.location {
        Location::Header => req
            .headers()
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        Location::Query { .. } => req
            .uri()
            .query()
            .and_then(|q| parse::param(q, "X-Amz-Date")),
    };
    let chunked = mode == Some(SIGNED_CHUNKS);
    let time = match amz_date.and_then(|d| Some((parse::amz_date(&d)?, d))) {
        Some((t, d)) if d.starts_with(&signature.date) => t,
        _ => {
            return Err(refused(
                event,
                checks,
                StatusCode::BAD_REQUEST,
                "the SigV4 request has no X-Amz-Date matching its credential scope's date (netcage re-signs for the client's own time)".into(),
            ));
        }
    };
    Ok(Some(Resign {
        signature,
        credential,
        time,
        chunked,
    }))
}

/// A SigV2 signature made with a stand-in (boto3's default for S3 presigned URLs without
/// `signature_version="s3v4"`): blocked for an unbound host like any stand-in, refused for a
/// bound one (netcage re-signs SigV4 only).
fn sigv2(
    proxy: &Proxy,
    authorization: Option<&str>,
    req: &Request<Incoming>,
    checks: &Checks,
    event: &mut Event,
) -> Result<(), Stop> {
    let Some(key_id) = parse::sigv2_key_id(authorization, req.uri().query()) else {
        return Ok(());
    };
    let Some(sealed) = proxy.cfg.aws.iter().find(|c| c.standin_id == key_id) else {
        return Ok(());
    };
    let location = if authorization.is_some_and(|a| a.starts_with("AWS ")) {
        "header:authorization"
    } else {
        "target"
    };
    let decider = &checks.decider;
    if let Err(block) = decider.sigv4(location, &sealed.fingerprint, &sealed.hosts) {
        return Err(blocked(event, decider, &block));
    }
    Err(refused(
        event,
        checks,
        StatusCode::FORBIDDEN,
        "the request is signed with SigV2, which netcage does not re-sign; use SigV4 (boto3/botocore: Config(signature_version=\"s3v4\"))".into(),
    ))
}

/// Signs `req` (as it goes upstream) with the real key; `whole` is its body when it was read
/// whole (None: streamed).
pub(in crate::proxy) fn resign(
    proxy: &Proxy,
    req: &mut Request<ProxyBody>,
    resign: &Resign,
    whole: Option<&Bytes>,
    checks: &Checks,
    event: &mut Event,
) -> Result<(), Stop> {
    let identity = sign::identity(&proxy.cfg.aws[resign.credential].real);
    let seed = sign::apply(req, resign, &identity, whole)
        .map_err(|reason| refused(event, checks, StatusCode::FORBIDDEN, reason))?;
    if resign.chunked {
        let sig = &resign.signature;
        let signer =
            chunks::ChunkSigner::new(identity, &sig.region, &sig.service, resign.time, seed);
        let body = std::mem::replace(req.body_mut(), super::body::empty());
        let counted = std::sync::Arc::default();
        *req.body_mut() = super::body::Transformed::new(body, signer, counted).boxed_unsync();
    }
    Ok(())
}

/// A request signed with a stand-in for a host it may sign for, refused all the same: the
/// audit line names the stand-in's fingerprint too.
fn refused(event: &mut Event, checks: &Checks, status: StatusCode, reason: String) -> Stop {
    let stop = refuse(event, status, &checks.name, reason);
    event.tokens = token_uses(&checks.decider);
    stop
}
