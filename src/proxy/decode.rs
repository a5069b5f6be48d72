//! Compressed responses on a connection whose responses are redacted. Such requests ask for
//! `Accept-Encoding: identity`; a server that compresses anyway would hide a reflected value
//! from the redactor, so its body is decoded here (gzip, deflate, br, zstd, and stacks of them)
//! and the client gets it identity-encoded; any other coding is refused (502).
//!
//! Decoding is streamed and pulled by the client: frames of at most [`FRAME`] bytes, made only
//! when the client takes the previous one, so a decompression bomb costs time, not memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZlibDecoder, ZstdDecoder};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyDataStream, BodyExt};
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};
use tokio_util::io::{StreamReader, poll_read_buf};

use super::body::{BoxError, ProxyBody};

/// The largest data frame a decoded body yields (and the buffer each decoding layer reads into).
pub const FRAME: usize = 64 * 1024;

/// More codings stacked on one body than this are refused.
pub const MAX_CODINGS: usize = 3;

/// zstd frames may ask for a window of up to 8 MiB (RFC 9659 §3); a larger one fails to decode
/// instead of taking memory.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A coding netcage decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// HTTP's `deflate`: the zlib format (RFC 9110 §8.4.1.2).
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// `Ok(None)` for `identity`; `Err` for a coding netcage does not decode.
    fn parse(name: &str) -> Result<Option<Coding>, Undecodable> {
        let coding = match name.to_ascii_lowercase().as_str() {
            "identity" => return Ok(None),
            "gzip" | "x-gzip" => Coding::Gzip,
            "deflate" => Coding::Deflate,
            "br" => Coding::Brotli,
            "zstd" => Coding::Zstd,
            _ => {
                let mut shown: String = name.chars().take(40).collect();
                if shown.len() < name.len() {
                    shown.push('…');
                }
                return Err(Undecodable::Unknown(shown));
            }
        };
        Ok(Some(coding))
    }
}

/// Why a response body cannot be decoded for redaction.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undecodable {
    #[error(
        "the upstream answered with content coding {0:?}, which netcage cannot decode to redact; it asked for identity"
    )]
    Unknown(String),
    #[error(
        "the upstream answered with {0} codings stacked, more than netcage decodes to redact ({MAX_CODINGS})"
    )]
    TooMany(usize),
    #[error(
        "the upstream answered a range request with a compressed part, which netcage cannot decode to redact"
    )]
    Partial,
}

/// The codings of a response body the redactor must see decoded, in the order they were
/// applied (`Content-Encoding`, then on HTTP/1.1 `Transfer-Encoding` other than `chunked`); an
/// empty list when there are none or the response has no body. When there are any, the headers
/// that describe the encoded form (`Content-Encoding`, `Content-Length`) are removed: the client
/// gets the decoded bytes. Call before the hop-by-hop headers are stripped.
pub fn plan(
    method: &Method,
    status: StatusCode,
    headers: &mut HeaderMap,
) -> Result<Vec<Coding>, Undecodable> {
    let mut codings = Vec::new();
    for name in [header::CONTENT_ENCODING, header::TRANSFER_ENCODING] {
        for value in headers.get_all(&name) {
            let value = String::from_utf8_lossy(value.as_bytes());
            for item in value.split(',') {
                // Parameters (`;…`) are ignored.
                let item = item.split(';').next().unwrap_or_default().trim();
                let chunked = item.eq_ignore_ascii_case("chunked");
                if item.is_empty() || (name == header::TRANSFER_ENCODING && chunked) {
                    continue;
                }
                codings.extend(Coding::parse(item)?);
            }
        }
    }
    if codings.is_empty() {
        return Ok(codings);
    }
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    if bodiless {
        return Ok(Vec::new());
    }
    if status == StatusCode::PARTIAL_CONTENT {
        return Err(Undecodable::Partial);
    }
    if codings.len() > MAX_CODINGS {
        return Err(Undecodable::TooMany(codings.len()));
    }
    Ok(codings)
}

/// A body that failed to decode (corrupt, truncated, or a zstd window over 8 MiB).
#[derive(Debug, thiserror::Error)]
#[error("the upstream's compressed response body did not decode: {0}")]
pub struct DecodeFailed(#[source] io::Error);

/// `body` decoded through `codings` (in the order they were applied, as [`plan`] returns
/// them), as data frames of at most [`FRAME`] bytes. Trailers of an encoded body are dropped.
pub fn decoded<B>(body: B, codings: &[Coding]) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let data = BodyDataStream::new(body.map_err(|e| io::Error::other(e.into())));
    let mut outermost_first = codings.iter().rev();
    let Some(&first) = outermost_first.next() else {
        return Decoded::boxed(Box::pin(StreamReader::new(data)));
    };
    let mut reader = layer(Box::pin(StreamReader::new(data)), first);
    for &coding in outermost_first {
        reader = layer(Box::pin(BufReader::with_capacity(FRAME, reader)), coding);
    }
    Decoded::boxed(reader)
}

/// A decoder for `coding` reading from `input`.
fn layer(
    input: Pin<Box<dyn AsyncBufRead + Send>>,
    coding: Coding,
) -> Pin<Box<dyn AsyncRead + Send>> {
    match coding {
        Coding::Gzip => {
            let mut d = GzipDecoder::new(input);
            d.multiple_members(true);
            Box::pin(d)
        }
        Coding::Deflate => Box::pin(ZlibDecoder::new(input)),
        Coding::Brotli => Box::pin(BrotliDecoder::new(input)),
        Coding::Zstd => {
            let window = async_compression::zstd::DParameter::window_log_max(ZSTD_WINDOW_LOG_MAX);
            let mut d = ZstdDecoder::with_params(input, &[window]);
            d.multiple_members(true);
            Box::pin(d)
        }
    }
}

/// The decoded side of [`decoded`]: one read of at most [`FRAME`] bytes per frame.
struct Decoded {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    buf: BytesMut,
    done: bool,
}

impl Decoded {
    fn boxed(reader: Pin<Box<dyn AsyncRead + Send>>) -> ProxyBody {
        Decoded {
            reader,
            buf: BytesMut::new(),
            done: false,
        }
        .boxed_unsync()
    }
}

impl Body for Decoded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        this.buf.reserve(FRAME);
        let mut room = (&mut this.buf).limit(FRAME);
        match ready!(poll_read_buf(this.reader.as_mut(), cx, &mut room)) {
            Ok(0) => {
                this.done = true;
                Poll::Ready(None)
            }
            Ok(_) => Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze())))),
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(Box::new(DecodeFailed(e)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
