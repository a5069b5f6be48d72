//! gRPC responses through the redactor. A gRPC body is a run of length-prefixed messages (one
//! flag byte, a 4-byte big-endian length, the message; gRPC over HTTP/2, and gRPC-Web, whose
//! trailer frames have the flag's high bit set). Replacing a real value with its token changes
//! a message's length, so each message is redacted whole and its prefix rewritten; a compressed
//! message (flag bit 0), which the redactor cannot read, ends the response with an error
//! rather than pass unread.

use bytes::{Buf, Bytes, BytesMut};

use super::body::{BoxError, Transform};
use crate::scan::{Redactor, Zeroizing};

/// The largest message redacted (gRPC's own default receive limit is 4 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Whether a response with this `Content-Type` is framed as gRPC messages (not the base64
/// `application/grpc-web-text`, whose values the redactor cannot see either way).
pub fn is_grpc(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let ct = ct.trim().to_ascii_lowercase();
    (ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web-text"))
        && matches!(ct.as_bytes().get(16), None | Some(b'+' | b';' | b'-'))
}

pub struct GrpcRedact {
    pub redactor: Redactor,
    /// The part of a message not complete yet (it may hold a real value: zeroed when dropped).
    held: BytesMut,
}

impl Drop for GrpcRedact {
    fn drop(&mut self) {
        self.held.fill(0);
    }
}

impl GrpcRedact {
    pub fn new(redactor: Redactor) -> Self {
        GrpcRedact {
            redactor,
            held: BytesMut::new(),
        }
    }
}

impl Transform for GrpcRedact {
    fn push(&mut self, data: Bytes) -> Result<Bytes, BoxError> {
        self.held.extend_from_slice(&data);
        let mut out = BytesMut::new();
        while self.held.len() >= 5 {
            let flag = self.held[0];
            let len = u32::from_be_bytes([self.held[1], self.held[2], self.held[3], self.held[4]])
                as usize;
            if len > MAX_MESSAGE {
                return Err(format!(
                    "a gRPC message of {len} bytes is larger than the {MAX_MESSAGE} bytes netcage redacts"
                )
                .into());
            }
            if flag & 0x01 != 0 {
                return Err(
                    "a compressed gRPC message cannot be redacted (values were substituted on this connection)"
                        .into(),
                );
            }
            if self.held.len() < 5 + len {
                break;
            }
            self.held.advance(5);
            let mut message = self.held.split_to(len);
            let redacted = self.redactor.redact(&message).map(Zeroizing::new);
            let sent = redacted.as_deref().map_or(&message[..], |r| &r[..]);
            let Ok(new_len) = u32::try_from(sent.len()) else {
                return Err("a redacted gRPC message does not fit its length prefix".into());
            };
            out.extend_from_slice(&[flag]);
            out.extend_from_slice(&new_len.to_be_bytes());
            out.extend_from_slice(sent);
            // What the server showed may hold a real value.
            message.fill(0);
        }
        Ok(out.freeze())
    }

    fn finish(&mut self) -> Result<Bytes, BoxError> {
        if self.held.is_empty() {
            Ok(Bytes::new())
        } else {
            Err("the gRPC response ended inside a message".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend((message.len() as u32).to_be_bytes());
        f.extend(message);
        f
    }

    fn grpc_redact() -> GrpcRedact {
        let pairs: [(&[u8], &[u8]); 1] = [(b"real-secret-value", b"starpod:v1:TOKEN-LONGER")];
        GrpcRedact::new(Redactor::new(&pairs).unwrap())
    }

    #[test]
    fn each_message_is_redacted_and_its_length_rewritten_across_chunks() {
        let mut body = frame(0, b"echo: real-secret-value!");
        body.extend(frame(0x80, b"grpc-status: 0\r\n"));
        let mut t = grpc_redact();
        let mut out = Vec::new();
        for chunk in body.chunks(3) {
            out.extend_from_slice(&t.push(Bytes::copy_from_slice(chunk)).unwrap());
        }
        out.extend_from_slice(&t.finish().unwrap());
        let mut want = frame(0, b"echo: starpod:v1:TOKEN-LONGER!");
        want.extend(frame(0x80, b"grpc-status: 0\r\n"));
        assert_eq!(out, want);
    }

    #[test]
    fn compressed_oversized_and_cut_messages_end_the_response() {
        assert!(grpc_redact().push(frame(1, b"x").into()).is_err());
        let mut big = vec![0u8];
        big.extend(((MAX_MESSAGE + 1) as u32).to_be_bytes());
        assert!(grpc_redact().push(big.into()).is_err());
        let mut t = grpc_redact();
        assert!(
            t.push(frame(0, b"abc")[..6].to_vec().into())
                .unwrap()
                .is_empty()
        );
        assert!(t.finish().is_err());
    }

    #[test]
    fn grpc_content_types() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc-web",
            "application/grpc-web+proto",
            "Application/GRPC; charset=x",
        ] {
            assert!(is_grpc(Some(ct.as_bytes())), "{ct}");
        }
        for ct in [
            "application/grpc-web-text",
            "application/grpcx",
            "application/json",
        ] {
            assert!(!is_grpc(Some(ct.as_bytes())), "{ct}");
        }
        assert!(!is_grpc(None));
    }
}
