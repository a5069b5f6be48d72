//! `STREAMING-AWS4-HMAC-SHA256-PAYLOAD`: an `aws-chunked` body whose every chunk carries a
//! signature chained from the request's (the seed). Each chunk is signed again with the real
//! key by `aws-sigv4` (`sign_chunk`), chained from the new seed; the signature keeps its
//! length (64 hex digits) and the chunk-size text is kept as it came, so the body's length
//! (and `Content-Length`) does not change.
//!
//! ```text
//! chunk = hex-size ";chunk-signature=" 64hex CRLF data CRLF      (the last one has size 0)
//! ```
//!
//! A chunk is held whole until it is signed (the SDKs send 64 KiB to 8 MiB); one above
//! [`MAX_CHUNK`] fails the body.

use std::time::SystemTime;

use aws_smithy_runtime_api::client::identity::Identity;
use bytes::{Bytes, BytesMut};

use crate::proxy::body::{BoxError, Transform};

/// The largest chunk held for signing.
pub const MAX_CHUNK: usize = 16 * 1024 * 1024;
/// The longest chunk header line accepted (size, extension, signature).
const MAX_LINE: usize = 4096;

/// What a chunked body that cannot be re-signed fails with.
#[derive(Debug, thiserror::Error)]
#[error("netcage cannot re-sign this aws-chunked body: {0}")]
pub struct ChunkError(pub &'static str);

enum State {
    /// Waiting for a chunk header line.
    Header,
    /// The header is read: `size` bytes of data (and CRLF) follow.
    Data { size_text: String, size: usize },
    /// The final (empty) chunk is signed.
    Done,
}

/// Re-signs the chunks of one body.
pub struct ChunkSigner {
    identity: Identity,
    region: String,
    service: String,
    time: SystemTime,
    /// The running signature: the new seed, then each new chunk signature.
    previous: String,
    held: BytesMut,
    state: State,
}

impl ChunkSigner {
    pub fn new(
        identity: Identity,
        region: &str,
        service: &str,
        time: SystemTime,
        seed: String,
    ) -> Self {
        ChunkSigner {
            identity,
            region: region.to_owned(),
            service: service.to_owned(),
            time,
            previous: seed,
            held: BytesMut::new(),
            state: State::Header,
        }
    }

    fn sign(&self, chunk: &Bytes) -> Result<String, BoxError> {
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name(&self.service)
            .time(self.time)
            .settings(())
            .build()?;
        let (_, signature) =
            aws_sigv4::sign::v4::sign_chunk(chunk, &self.previous, &params)?.into_parts();
        Ok(signature)
    }

    /// Everything complete in `held`, signed again.
    fn drain(&mut self) -> Result<Bytes, BoxError> {
        let mut out = BytesMut::new();
        loop {
            match &self.state {
                State::Header => {
                    let Some(end) = memchr::memmem::find(&self.held, b"\r\n") else {
                        if self.held.len() > MAX_LINE {
                            return Err(ChunkError("a chunk header line is too long").into());
                        }
                        break;
                    };
                    let line = self.held.split_to(end + 2);
                    let line = std::str::from_utf8(&line[..end])
                        .map_err(|_| ChunkError("a chunk header is not text"))?;
                    let (size_text, ext) = line
                        .split_once(';')
                        .ok_or(ChunkError("a chunk has no chunk-signature"))?;
                    if !ext.starts_with("chunk-signature=") {
                        return Err(ChunkError("a chunk has no chunk-signature").into());
                    }
                    let size = usize::from_str_radix(size_text, 16)
                        .map_err(|_| ChunkError("a chunk size is not hexadecimal"))?;
                    if size > MAX_CHUNK {
                        return Err(ChunkError("a chunk is larger than 16 MiB").into());
                    }
                    self.state = State::Data {
                        size_text: size_text.to_owned(),
                        size,
                    };
                }
                State::Data { size_text, size } => {
                    let size = *size;
                    if self.held.len() < size + 2 {
                        break;
                    }
                    let size_text = size_text.clone();
                    let chunk = self.held.split_to(size).freeze();
                    if &self.held.split_to(2)[..] != b"\r\n" {
                        return Err(ChunkError("a chunk does not end with CRLF").into());
                    }
                    let signature = self.sign(&chunk)?;
                    out.extend_from_slice(size_text.as_bytes());
                    out.extend_from_slice(b";chunk-signature=");
                    out.extend_from_slice(signature.as_bytes());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(&chunk);
                    out.extend_from_slice(b"\r\n");
                    self.previous = signature;
                    self.state = if size == 0 {
                        State::Done
                    } else {
                        State::Header
                    };
                }
                State::Done => {
                    if !self.held.is_empty() {
                        return Err(ChunkError("data follows the final chunk").into());
                    }
                    break;
                }
            }
        }
        Ok(out.freeze())
    }
}

impl Transform for ChunkSigner {
    fn push(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        self.held.extend_from_slice(&data);
        self.drain()
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        let out = self.drain()?;
        match self.state {
            State::Done => Ok(out),
            _ => Err(ChunkError("the body ended inside a chunk").into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    fn signer(seed: &str) -> ChunkSigner {
        let identity: Identity = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "t",
        )
        .into();
        let time = crate::proxy::sigv4::parse::amz_date("20130524T000000Z").unwrap();
        ChunkSigner::new(identity, "us-east-1", "s3", time, seed.into())
    }

    /// AWS's published example (sigv4-streaming.html): 64 KiB of 'a', then 1 KiB, then the
    /// final chunk, with the seed signature of the example request.
    #[test]
    fn the_documented_example_signs_the_same() {
        let seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";
        let mut body = Vec::new();
        for size in [65536usize, 1024, 0] {
            body.extend_from_slice(format!("{size:x};chunk-signature=0000000000000000000000000000000000000000000000000000000000000000\r\n").as_bytes());
            body.extend(std::iter::repeat_n(b'a', size));
            body.extend_from_slice(b"\r\n");
        }
        let mut s = signer(seed);
        let mut out = Vec::new();
        // Fed in odd pieces: frames do not follow chunk boundaries.
        for piece in body.chunks(7001) {
            out.extend_from_slice(&s.push(Bytes::copy_from_slice(piece)).unwrap());
        }
        out.extend_from_slice(&s.finish().unwrap());
        assert_eq!(out.len(), body.len());
        let text = String::from_utf8_lossy(&out);
        for sig in [
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
        ] {
            assert!(
                text.contains(&format!(";chunk-signature={sig}\r\n")),
                "{sig}"
            );
        }
    }

    #[test]
    fn broken_bodies_fail() {
        for bad in [
            &b"zz;chunk-signature=00\r\n"[..],
            b"5\r\nhello\r\n",
            b"5;chunk-signature=00\r\nhelloXX",
            b"0;chunk-signature=00\r\n\r\nmore",
        ] {
            let mut s = signer("00");
            let r = s.push(Bytes::copy_from_slice(bad)).and_then(|_| s.finish());
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut s = signer("00");
        assert!(
            s.push(Bytes::from_static(b"5;chunk-signature=00\r\nhel"))
                .unwrap()
                .is_empty()
        );
        assert!(s.finish().is_err(), "ended inside a chunk");
    }
}
