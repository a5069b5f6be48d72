//! Property tests (see `crate::fuzz`) for the scanners on what a command sends: header values,
//! targets, streamed bodies, and the redactor and leak guard on any bytes. Arbitrary bytes and
//! mutated token-bearing input; no panic, output bounded by the input and the decisions, and
//! never more held back than the limits say. (tests.rs checks that the results are right.)

use std::cell::Cell;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use proptest::prelude::*;

use super::body::BodyScanner;
use super::*;
use crate::fuzz::{bytes, check, mutated};

const CASES: u32 = 256;

/// Token-like text: raw and percent forms with and without pads, Basic credentials holding
/// one, prefixes cut short, and plain bytes between them.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let b64 = "[A-Za-z0-9+/]{0,40}";
    prop_oneof![
        (b64, "={0,3}").prop_map(|(b, p)| format!("starpod:v1:{b}{p}").into_bytes()),
        (
            "[A-Za-z0-9/]{0,40}",
            prop_oneof![Just(""), Just("%3D"), Just("%3d%3D"), Just("=")]
        )
            .prop_map(|(b, p)| format!("starpod%3Av1%3a{b}%2B{p}").into_bytes()),
        (b64, "[a-z]{0,8}").prop_map(|(b, user)| {
            let creds = format!("{user}:starpod:v1:{b}==");
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            )
            .into_bytes()
        }),
        Just(b"starpod:v".to_vec()),
        Just(b"starpod%3".to_vec()),
        bytes(24),
    ]
}

/// Input with tokens in it: fragments joined.
fn with_tokens() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(fragment(), 0..8).prop_map(|f| f.concat())
}

/// Arbitrary bytes, or mutated input with tokens.
fn input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![bytes(2048), mutated(with_tokens()).prop_map(|(_, m)| m)]
}

/// One decision per token, cycling through a list (values up to 64 bytes, any bytes).
fn decisions() -> impl Strategy<Value = Vec<(u8, Vec<u8>, usize)>> {
    prop::collection::vec((0u8..5, bytes(64), 0usize..80), 1..6)
}

/// A decide callback that cycles through `list`, counting calls and the longest value given.
struct Decider<'a> {
    list: &'a [(u8, Vec<u8>, usize)],
    calls: Cell<usize>,
    longest: Cell<usize>,
}

impl<'a> Decider<'a> {
    fn new(list: &'a [(u8, Vec<u8>, usize)]) -> Self {
        Decider {
            list,
            calls: Cell::new(0),
            longest: Cell::new(0),
        }
    }

    fn decide(&self, _token: &str) -> Decision {
        let n = self.calls.get();
        self.calls.set(n + 1);
        let (kind, value, len) = &self.list[n % self.list.len()];
        self.longest.set(self.longest.get().max(value.len()));
        let value = Zeroizing::new(value.clone());
        match kind {
            0 => Decision::Substitute(value),
            1 => Decision::SubstituteHead { value, len: *len },
            2 => Decision::Keep,
            3 => Decision::Strip,
            _ => Decision::Block,
        }
    }

    /// The most a rewrite of `input` may produce: the input, plus every value percent-encoded,
    /// all of it base64-encoded again (Basic credentials).
    fn bound(&self, input: &[u8]) -> usize {
        (input.len() + self.calls.get() * 3 * self.longest.get()) * 4 / 3 + 8
    }
}

/// Each token is at least as long as the raw prefix (its percent form and Basic credentials
/// are longer), so the callback runs at most once per that many bytes.
fn max_calls(input: &[u8]) -> usize {
    input.len() / (PREFIX.len() - 2) + 1
}

#[test]
fn scan_header_value_on_any_bytes() {
    check(
        "scan_header",
        CASES,
        (input(), decisions()),
        |(data, list)| {
            let d = Decider::new(&list);
            if let Ok(Some(out)) = scan_header_value(&data, &mut |t| d.decide(t)) {
                prop_assert!(out.len() <= d.bound(&data));
            }
            prop_assert!(d.calls.get() <= max_calls(&data));
            Ok(())
        },
    );
}

#[test]
fn scan_target_on_any_bytes() {
    check(
        "scan_target",
        CASES,
        (input(), decisions()),
        |(data, list)| {
            let d = Decider::new(&list);
            if let Ok(Some(out)) = scan_target(&data, &mut |t| d.decide(t)) {
                prop_assert!(out.len() <= d.bound(&data));
            }
            prop_assert!(d.calls.get() <= max_calls(&data));
            Ok(())
        },
    );
}

#[test]
fn find_tokens_on_any_bytes() {
    check("find_tokens", CASES, input(), |data| {
        let mut end = 0;
        for found in find_tokens(&data) {
            prop_assert!(found.range.start >= end && found.range.end <= data.len());
            prop_assert!(found.range.len() >= PREFIX.len());
            prop_assert!(found.canonical.starts_with(PREFIX));
            prop_assert!(found.canonical.len() <= found.range.len());
            end = found.range.end;
        }
        Ok(())
    });
}

/// Cut points for a stream: chunk sizes 1..=`max`.
fn cuts(max: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1..=max, 1..64)
}

fn chunks<'d>(data: &'d [u8], sizes: &[usize]) -> Vec<&'d [u8]> {
    let mut out = Vec::new();
    let (mut pos, mut i) = (0, 0);
    while pos < data.len() {
        let n = sizes[i % sizes.len()].min(data.len() - pos);
        out.push(&data[pos..pos + n]);
        pos += n;
        i += 1;
    }
    out
}

#[test]
fn body_scanner_on_any_bytes_holds_back_at_most_its_limit() {
    check(
        "body_scanner",
        CASES,
        (input(), decisions(), cuts(300), 16usize..200),
        |(data, list, sizes, limit)| {
            let d = Decider::new(&list);
            let mut scanner = BodyScanner::with_limit(limit);
            let mut out = 0;
            for chunk in chunks(&data, &sizes) {
                match scanner.push(Bytes::copy_from_slice(chunk), &mut |t| d.decide(t)) {
                    Ok(b) => out += b.len(),
                    Err(Blocked) => return Ok(()),
                }
                // The percent form of a token at the limit, its pads and a partial escape.
                prop_assert!(scanner.held() <= 3 * limit + 16, "held {}", scanner.held());
            }
            if let Ok(b) = scanner.finish(&mut |t| d.decide(t)) {
                out += b.len();
            }
            prop_assert!(out <= d.bound(&data));
            prop_assert!(d.calls.get() <= max_calls(&data));
            Ok(())
        },
    );
}

/// Secret values for the response side: 6 to 40 bytes from a small alphabet, so that
/// arbitrary data holds them and their beginnings often.
fn values() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop::collection::vec(prop::sample::select(b"ab\x00\xff%".to_vec()), 6..40),
        1..4,
    )
}

/// Data built from the values' own bytes, pieces of values, and arbitrary bytes.
fn response(values: Vec<Vec<u8>>) -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    let piece = prop_oneof![
        prop::sample::select(values.clone()),
        prop::sample::select(values.clone()).prop_map(|v| v[..v.len() / 2].to_vec()),
        bytes(32),
    ];
    (
        Just(values),
        prop::collection::vec(piece, 0..16).prop_map(|p| p.concat()),
    )
}

#[test]
fn redactor_on_any_bytes_holds_back_less_than_the_longest_value() {
    check(
        "redactor",
        CASES,
        (values().prop_flat_map(response), cuts(100)),
        |((values, data), sizes)| {
            let tokens: Vec<Vec<u8>> = (0..values.len())
                .map(|i| format!("starpod:v1:tok{i}==").into_bytes())
                .collect();
            let pairs: Vec<(&[u8], &[u8])> = values
                .iter()
                .zip(&tokens)
                .map(|(v, t)| (v.as_slice(), t.as_slice()))
                .collect();
            let Some(set) = RedactSet::new(&pairs) else {
                return Ok(());
            };
            let longest_value = values.iter().map(Vec::len).max().unwrap_or(0);
            let longest_token = tokens.iter().map(Vec::len).max().unwrap_or(0);
            let mut red = set.redactor();
            let mut out = 0;
            for chunk in chunks(&data, &sizes) {
                out += red.push(Bytes::copy_from_slice(chunk)).len();
                prop_assert!(red.held() < longest_value);
            }
            out += red.finish().len();
            // Each value (at least 6 bytes) becomes at most one token.
            prop_assert!(out <= data.len() + data.len() / MIN_REFLECT_LEN * longest_token);
            Ok(())
        },
    );
}

#[test]
fn leak_scanner_on_any_bytes_releases_nothing_it_has_not_looked_at() {
    check(
        "leak_scanner",
        CASES,
        (values().prop_flat_map(response), cuts(100)),
        |((values, data), sizes)| {
            let entries: Vec<(&[u8], usize)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_slice(), i))
                .collect();
            let Some(set) = LeakSet::new(&entries) else {
                return Ok(());
            };
            let set: Arc<LeakSet> = set;
            let mut scanner = set.scanner();
            let mut out = 0;
            for chunk in chunks(&data, &sizes) {
                match scanner.push(Bytes::copy_from_slice(chunk)) {
                    Ok(b) => out += b.len(),
                    Err(Leak(id)) => {
                        prop_assert!(id < values.len());
                        return Ok(());
                    }
                }
                // A value may also be looked for percent-encoded: three bytes per byte.
                let longest = values.iter().map(Vec::len).max().unwrap_or(0);
                prop_assert!(scanner.held() < 3 * longest + 3, "held {}", scanner.held());
            }
            out += scanner.finish().len();
            prop_assert_eq!(out, data.len());
            Ok(())
        },
    );
}
