//! Bodies on their way through: request bodies through the token scanner, response bodies
//! through the redactor, both streamed frame by frame (trailers kept), and the audit line that
//! is written when the response body ends.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use super::decide::Decider;
use super::timeouts::TimedOut;
use crate::audit::{AuditLog, Event};
use crate::scan::{BodyScanner, Leak, LeakScanner, Redactor};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The request body stopped because it carried a token, or a real value, that may not go to
/// this host.
#[derive(Debug, thiserror::Error)]
#[error("netcage blocked the request body: it carries a secret that may not be sent to this host")]
pub struct BodyBlocked;

/// The body being passed on failed at its source (for a request: the client went away or sent
/// a broken body), as opposed to a failure of the side it was being sent to.
#[derive(Debug, thiserror::Error)]
#[error("the body ended early at its source: {0}")]
pub struct SourceFailed(#[source] pub BoxError);

/// Reads a body of `length` bytes (its `Content-Length`) whole, into one buffer of that size:
/// a body that arrives in one frame is kept as it is; otherwise each frame is copied in and
/// freed at once, so a body never takes twice its size.
pub async fn read_whole<B>(mut body: B, length: u64) -> Result<Bytes, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut single: Option<Bytes> = None;
    let mut whole = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        if single.is_none() && whole.is_empty() {
            single = Some(data);
            continue;
        }
        if let Some(first) = single.take() {
            whole.reserve(usize::try_from(length).unwrap_or(0).max(first.len()));
            whole.extend_from_slice(&first);
        }
        whole.extend_from_slice(&data);
    }
    Ok(single.unwrap_or_else(|| whole.freeze()))
}

/// A transformation applied to the data frames of a body.
pub trait Transform: Send + 'static {
    fn push(&mut self, data: Bytes) -> Result<Bytes, BoxError>;
    fn finish(&mut self) -> Result<Bytes, BoxError>;
}

/// Request side: the leak guard (on what the client sent), then token substitution.
pub struct Substitute {
    /// Real values that may not go to this host, if there are any.
    pub guard: Option<LeakScanner>,
    pub scanner: BodyScanner,
    pub decider: Decider,
}

impl Substitute {
    /// What the leak guard lets through of `data` (all of it without a guard).
    fn guarded(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        let Some(guard) = &mut self.guard else {
            return Ok(data);
        };
        guard.push(data).map_err(|Leak(id)| {
            self.decider.leak("body", id);
            BodyBlocked.into()
        })
    }
}

impl Transform for Substitute {
    fn push(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        let data = self.guarded(data)?;
        let decider = &self.decider;
        self.scanner
            .push(data, &mut |t| decider.decide("body", t))
            .map_err(|_| BodyBlocked.into())
    }
    fn finish(&mut self) -> Result<Bytes, BoxError> {
        let decider = &self.decider;
        let decide = &mut |t: &str| decider.decide("body", t);
        let held = self.guard.as_mut().map(LeakScanner::finish);
        let head = match held {
            Some(held) => self.scanner.push(held, decide),
            None => Ok(Bytes::new()),
        };
        match (head, self.scanner.finish(decide)) {
            (Ok(a), Ok(b)) if a.is_empty() => Ok(b),
            (Ok(a), Ok(b)) if b.is_empty() => Ok(a),
            (Ok(a), Ok(b)) => Ok([a, b].concat().into()),
            _ => Err(BodyBlocked.into()),
        }
    }
}

/// Response side: turn real values back into their tokens.
pub struct Redact {
    pub redactor: Redactor,
}

impl Transform for Redact {
    fn push(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        Ok(self.redactor.push(data))
    }
    fn finish(&mut self) -> Result<Bytes, BoxError> {
        Ok(self.redactor.finish())
    }
}

/// A body whose data frames pass through a [`Transform`]; trailers are passed on after the
/// transform has released everything it held.
pub struct Transformed<B, T> {
    inner: B,
    transform: T,
    trailers: Option<HeaderMap>,
    done: bool,
    /// Bytes read from `inner` (before the transform).
    pub bytes: Arc<AtomicU64>,
}

impl<B, T> Transformed<B, T> {
    pub fn new(inner: B, transform: T, bytes: Arc<AtomicU64>) -> Self {
        Transformed {
            inner,
            transform,
            trailers: None,
            done: false,
            bytes,
        }
    }
}

impl<B, T> Body for Transformed<B, T>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    T: Transform + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    return Poll::Ready(Some(Err(Box::new(SourceFailed(e.into())))));
                }
                None => {
                    this.done = true;
                    match this.transform.finish() {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    }
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                    let out = match this.transform.push(data) {
                        Ok(out) => out,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    // The source's last bytes (its length is used up): what the transform
                    // held back goes in the same frame, so the client gets the end with the
                    // rest (one write, not a second one for the tail and the last chunk).
                    let out = if this.inner.is_end_stream() {
                        this.done = true;
                        match this.transform.finish() {
                            Ok(tail) if out.is_empty() => tail,
                            Ok(tail) if tail.is_empty() => out,
                            Ok(tail) => {
                                let mut joined =
                                    bytes::BytesMut::with_capacity(out.len() + tail.len());
                                joined.extend_from_slice(&out);
                                joined.extend_from_slice(&tail);
                                joined.freeze()
                            }
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        }
                    } else {
                        out
                    };
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        this.trailers = Some(trailers);
                        this.done = true;
                        match this.transform.finish() {
                            Ok(out) if !out.is_empty() => {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            Ok(_) => continue,
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Counts the bytes of a body and writes the request's audit line when it ends or is dropped.
pub struct Audited<B> {
    inner: B,
    pub event: Option<Event>,
    started: Instant,
    bytes_up: Arc<AtomicU64>,
    decider: Option<Decider>,
    audit: Arc<AuditLog>,
}

impl<B> Audited<B> {
    pub fn new(
        inner: B,
        event: Event,
        started: Instant,
        bytes_up: Arc<AtomicU64>,
        decider: Option<Decider>,
        audit: Arc<AuditLog>,
    ) -> Self {
        Audited {
            inner,
            event: Some(event),
            started,
            bytes_up,
            decider,
            audit,
        }
    }
}

impl<B> Drop for Audited<B> {
    fn drop(&mut self) {
        if let Some(mut event) = self.event.take() {
            event.bytes_up = self.bytes_up.load(Ordering::Relaxed).max(event.bytes_up);
            event.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            if let Some(decider) = &self.decider {
                let record = decider.record.lock().unwrap_or_else(|p| p.into_inner());
                event.tokens = record.uses.clone();
                if let Some(block) = &record.block
                    && event.decision == "allow"
                {
                    event.decision = "block";
                    event.reason = Some(format!(
                        "{} (found in a streamed body; the request was cut off)",
                        block.reason
                    ));
                }
            }
            self.audit.log(event);
        }
    }
}

impl<B> Body for Audited<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match (&frame, &mut this.event) {
            (Some(Ok(frame)), Some(event)) => {
                if let Some(data) = frame.data_ref() {
                    event.bytes_down += data.len() as u64;
                }
            }
            // The response was cut because the upstream went silent: the line says so.
            (Some(Err(e)), Some(event)) => {
                if let Some(timed_out) = TimedOut::find(&**e) {
                    event.decision = "error";
                    event.reason = Some(timed_out.0.clone());
                }
            }
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
