use std::collections::VecDeque;
use std::convert::Infallible;

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZlibEncoder, ZstdEncoder};
use http::HeaderValue;
use proptest::prelude::*;

use crate::fuzz::{apply, bytes, check, mutations};
use tokio::io::AsyncReadExt;

use super::*;

/// A body made of the given chunks, one data frame each.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn chunked(data: &[u8], size: usize) -> Chunks {
    Chunks(
        data.chunks(size.max(1))
            .map(Bytes::copy_from_slice)
            .collect(),
    )
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn encode(data: &[u8], coding: Coding) -> Vec<u8> {
    block_on(async {
        let mut out = Vec::new();
        let mut reader: Pin<Box<dyn AsyncRead + Send + '_>> = match coding {
            Coding::Gzip => Box::pin(GzipEncoder::with_quality(data, Level::Fastest)),
            Coding::Deflate => Box::pin(ZlibEncoder::with_quality(data, Level::Fastest)),
            Coding::Brotli => Box::pin(BrotliEncoder::with_quality(data, Level::Fastest)),
            Coding::Zstd => Box::pin(ZstdEncoder::with_quality(data, Level::Fastest)),
        };
        reader.read_to_end(&mut out).await.unwrap();
        out
    })
}

/// Every frame of the decoded body (at most `limit` bytes of them), or the error it ended with.
fn decode_all(body: Chunks, codings: &[Coding], limit: usize) -> (Vec<Bytes>, Option<BoxError>) {
    block_on(async {
        let mut body = decoded(body, codings);
        let (mut frames, mut total) = (Vec::new(), 0);
        while total < limit {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => {
                    let data = frame.into_data().expect("only data frames");
                    total += data.len();
                    frames.push(data);
                }
                Some(Err(e)) => return (frames, Some(e)),
            }
        }
        (frames, None)
    })
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    map
}

#[test]
fn plan_lists_the_codings_in_the_order_applied_and_drops_the_encoded_framing() {
    let mut h = headers(&[
        ("content-encoding", "gzip, BR"),
        ("content-length", "42"),
        ("content-type", "text/plain"),
    ]);
    let codings = plan(&Method::GET, StatusCode::OK, &mut h);
    assert_eq!(codings, Ok(vec![Coding::Gzip, Coding::Brotli]));
    assert!(h.get(header::CONTENT_ENCODING).is_none());
    assert!(h.get(header::CONTENT_LENGTH).is_none());
    assert!(h.get(header::CONTENT_TYPE).is_some());

    // Transfer codings other than chunked (HTTP/1.1) come after the content codings.
    let mut h = headers(&[
        ("content-encoding", "x-gzip"),
        ("transfer-encoding", "deflate, chunked"),
    ]);
    let codings = plan(&Method::GET, StatusCode::OK, &mut h);
    assert_eq!(codings, Ok(vec![Coding::Gzip, Coding::Deflate]));

    let mut h = headers(&[
        ("content-encoding", "zstd"),
        ("content-encoding", "identity"),
    ]);
    assert_eq!(
        plan(&Method::POST, StatusCode::OK, &mut h),
        Ok(vec![Coding::Zstd])
    );
}

#[test]
fn plan_leaves_identity_and_plain_chunked_alone() {
    for pairs in [
        &[][..],
        &[("content-encoding", "identity"), ("content-length", "3")][..],
        &[("transfer-encoding", "chunked")][..],
        &[("content-encoding", "")][..],
    ] {
        let mut h = headers(pairs);
        let before = h.clone();
        assert_eq!(plan(&Method::GET, StatusCode::OK, &mut h), Ok(vec![]));
        assert_eq!(h, before);
    }
}

#[test]
fn plan_refuses_what_cannot_be_decoded() {
    let mut h = headers(&[("content-encoding", "compress")]);
    assert_eq!(
        plan(&Method::GET, StatusCode::OK, &mut h),
        Err(Undecodable::Unknown("compress".into()))
    );
    // An unknown name is shown shortened (it came from the upstream).
    let long = "x".repeat(100);
    let mut h = headers(&[("content-encoding", &long)]);
    match plan(&Method::GET, StatusCode::OK, &mut h) {
        Err(Undecodable::Unknown(shown)) => assert_eq!(shown.chars().count(), 41),
        other => panic!("{other:?}"),
    }
    let mut h = headers(&[("content-encoding", "gzip, gzip, gzip, gzip")]);
    assert_eq!(
        plan(&Method::GET, StatusCode::OK, &mut h),
        Err(Undecodable::TooMany(4))
    );
    let mut h = headers(&[("content-encoding", "gzip")]);
    assert_eq!(
        plan(&Method::GET, StatusCode::PARTIAL_CONTENT, &mut h),
        Err(Undecodable::Partial)
    );
}

#[test]
fn plan_decodes_nothing_for_a_response_without_a_body_but_still_drops_the_coding() {
    for (method, status) in [
        (Method::HEAD, StatusCode::OK),
        (Method::GET, StatusCode::NO_CONTENT),
        (Method::GET, StatusCode::NOT_MODIFIED),
    ] {
        let mut h = headers(&[("content-encoding", "gzip"), ("content-length", "9")]);
        assert_eq!(
            plan(&method, status, &mut h),
            Ok(vec![]),
            "{method} {status}"
        );
        assert!(h.get(header::CONTENT_ENCODING).is_none());
    }
}

#[test]
fn each_coding_and_a_stack_decode_to_the_original_in_bounded_frames() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stacks: [&[Coding]; 5] = [
        &[Coding::Gzip],
        &[Coding::Deflate],
        &[Coding::Brotli],
        &[Coding::Zstd],
        &[Coding::Zstd, Coding::Gzip, Coding::Brotli],
    ];
    for stack in stacks {
        let mut encoded = data.clone();
        for &coding in stack {
            encoded = encode(&encoded, coding);
        }
        for chunk in [1, 1000, 1 << 20] {
            let (frames, err) = decode_all(chunked(&encoded, chunk), stack, usize::MAX);
            assert!(err.is_none(), "{stack:?}: {err:?}");
            assert!(frames.iter().all(|f| f.len() <= FRAME && !f.is_empty()));
            assert!(frames.concat() == data, "{stack:?} in chunks of {chunk}");
        }
    }
}

#[test]
fn concatenated_gzip_members_are_all_decoded() {
    let mut encoded = encode(b"first ", Coding::Gzip);
    encoded.extend(encode(b"second", Coding::Gzip));
    let (frames, err) = decode_all(chunked(&encoded, 7), &[Coding::Gzip], usize::MAX);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.concat(), b"first second");
}

#[test]
fn a_bomb_comes_out_in_frames_no_larger_than_the_limit() {
    // 64 MiB of zeros is about 300 KiB of fast gzip, sent in one chunk that inflates to all of it.
    let zeros = vec![0u8; 64 << 20];
    let encoded = encode(&zeros, Coding::Gzip);
    eprintln!("64 MiB of zeros: {} bytes of gzip", encoded.len());
    assert!(encoded.len() < zeros.len() / 200);
    let (frames, err) = decode_all(
        chunked(&encoded, encoded.len()),
        &[Coding::Gzip],
        usize::MAX,
    );
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.iter().map(Bytes::len).sum::<usize>(), zeros.len());
    assert!(frames.iter().all(|f| f.len() <= FRAME));
}

#[test]
fn corrupt_and_truncated_bodies_end_in_an_error() {
    let data = vec![b'a'; 10_000];
    for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
        let encoded = encode(&data, coding);
        let truncated = &encoded[..encoded.len() / 2];
        let (_, err) = decode_all(chunked(truncated, 100), &[coding], usize::MAX);
        let err = err.unwrap_or_else(|| panic!("{coding:?}: truncated body decoded"));
        assert!(err.is::<DecodeFailed>(), "{coding:?}: {err}");
    }
    let (_, err) = decode_all(chunked(b"not gzip at all", 5), &[Coding::Gzip], usize::MAX);
    assert!(err.is_some_and(|e| e.is::<DecodeFailed>()));
}

#[test]
fn a_zstd_frame_asking_for_a_window_over_8_mib_is_refused() {
    // A frame header declaring a 16 MiB window (Window_Descriptor exponent 14 → 2^(10+14)),
    // no content size, then one RLE block of 1 byte: decoding must fail before allocating it.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 14 << 3];
    frame.extend([0x0b, 0x00, 0x00, 0x00]); // last block, RLE, size 1; the byte 0x00
    let (_, err) = decode_all(chunked(&frame, frame.len()), &[Coding::Zstd], usize::MAX);
    assert!(err.is_some_and(|e| e.is::<DecodeFailed>()));
    // The same frame with an 8 MiB window decodes.
    frame[5] = 13 << 3;
    let (frames, err) = decode_all(chunked(&frame, frame.len()), &[Coding::Zstd], usize::MAX);
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.concat(), [0u8]);
}

fn any_stack() -> impl Strategy<Value = Vec<Coding>> {
    let coding = prop_oneof![
        Just(Coding::Gzip),
        Just(Coding::Deflate),
        Just(Coding::Brotli),
        Just(Coding::Zstd),
    ];
    prop::collection::vec(coding, 1..=2)
}

/// Arbitrary bytes (from an upstream) through any decoder: no panic, frames within the limit;
/// reading stops after 1 MiB of output.
#[test]
fn decoders_take_arbitrary_bytes() {
    let strategy = (bytes(2048), 1usize..512, any_stack());
    check("decode_any", 64, strategy, |(data, chunk, stack)| {
        let (frames, _) = decode_all(chunked(&data, chunk), &stack, 1 << 20);
        prop_assert!(frames.iter().all(|f| f.len() <= FRAME));
        Ok(())
    });
}

/// Valid encoded bodies, mutated: no panic, frames within the limit; unchanged, a body
/// decodes to the original.
#[test]
fn decoders_take_mutated_valid_bodies() {
    let strategy = (any_stack(), 1usize..700, bytes(4096), mutations());
    check(
        "decode_mutated",
        64,
        strategy,
        |(stack, chunk, plain, changes)| {
            let mut encoded = plain.clone();
            for &coding in &stack {
                encoded = encode(&encoded, coding);
            }
            let (frames, err) = decode_all(chunked(&encoded, chunk), &stack, usize::MAX);
            prop_assert!(err.is_none());
            prop_assert_eq!(frames.concat(), plain);
            let changed = apply(encoded, &changes);
            let (frames, _) = decode_all(chunked(&changed, chunk), &stack, 1 << 20);
            prop_assert!(frames.iter().all(|f| f.len() <= FRAME));
            Ok(())
        },
    );
}
