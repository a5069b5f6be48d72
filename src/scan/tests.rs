//! Cross-cutting property tests: the streaming scanners against one-shot scans and against a
//! naive reference implementation of the token grammar.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::body::BodyScanner;
use super::find::{Encoding, find_tokens_limit, rewrite, write_value};
use super::*;

/// The token grammar written as plainly as possible, byte by byte.
fn naive(data: &[u8], limit: usize) -> Vec<(Range<usize>, Form, String)> {
    let at = |j: usize| data.get(j).copied();
    let ci = |j: usize, s: &[u8]| {
        data.get(j..j + s.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(s))
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let raw = data[i..].starts_with(b"starpod:v1:");
        let pct = data[i..].starts_with(b"starpod%3")
            && ci(i + 9, b"a")
            && data[i + 10..].starts_with(b"v1%3")
            && ci(i + 14, b"a");
        if !raw && !pct {
            i += 1;
            continue;
        }
        let mut canon = String::from(PREFIX);
        let mut j;
        if raw {
            j = i + 11;
            while let Some(b) = at(j) {
                if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' {
                    canon.push(b as char);
                    j += 1;
                } else {
                    break;
                }
            }
            let mut pads = 0;
            while pads < 2 && at(j) == Some(b'=') {
                canon.push('=');
                j += 1;
                pads += 1;
            }
        } else {
            j = i + 15;
            loop {
                match at(j) {
                    Some(b) if b.is_ascii_alphanumeric() || b == b'/' => {
                        canon.push(b as char);
                        j += 1;
                    }
                    Some(b'%') if ci(j, b"%2b") => {
                        canon.push('+');
                        j += 3;
                    }
                    Some(b'%') if ci(j, b"%2f") => {
                        canon.push('/');
                        j += 3;
                    }
                    _ => break,
                }
            }
            let mut pads = 0;
            while pads < 2 {
                if at(j) == Some(b'=') {
                    j += 1;
                } else if ci(j, b"%3d") {
                    j += 3;
                } else {
                    break;
                }
                canon.push('=');
                pads += 1;
            }
        }
        if canon.len() <= limit {
            out.push((i..j, if raw { Form::Raw } else { Form::Percent }, canon));
        }
        i = j;
    }
    out
}

/// Rewrite with the naive token list.
fn naive_rewrite(
    data: &[u8],
    limit: usize,
    decide: &mut dyn FnMut(&str) -> Decision,
) -> Result<Vec<u8>, Blocked> {
    let mut out = Vec::new();
    let mut last = 0;
    for (r, form, canon) in naive(data, limit) {
        out.extend_from_slice(&data[last..r.start]);
        match decide(&canon) {
            Decision::Keep => out.extend_from_slice(&data[r.clone()]),
            Decision::Strip => {}
            Decision::Block => return Err(Blocked),
            Decision::Substitute(v) => write_value(&v, form, Encoding::LikeToken, &mut out),
            Decision::SubstituteHead { value, len } if form == Form::Raw => {
                write_value(&value, form, Encoding::LikeToken, &mut out);
                out.extend_from_slice(&data[(r.start + len).min(r.end)..r.end]);
            }
            Decision::SubstituteHead { .. } => out.extend_from_slice(&data[r.clone()]),
        }
        last = r.end;
    }
    out.extend_from_slice(&data[last..]);
    Ok(out)
}

/// A deterministic decision for a canonical token text; `block` allows `Block`.
fn decision(t: &str, block: bool) -> Decision {
    let h = t
        .bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    match h % 6 {
        0 if block => Decision::Block,
        5 => Decision::SubstituteHead {
            value: Zeroizing::new(b"h/v".to_vec()),
            len: t.len() * 2 / 3,
        },
        0 | 1 => Decision::Substitute(Zeroizing::new(b"v/a l+u=e%\xff".to_vec())),
        2 => Decision::Keep,
        3 => Decision::Strip,
        _ => Decision::Substitute(Zeroizing::new(t.as_bytes()[..t.len() / 2].to_vec())),
    }
}

/// Stream `data` cut at `cuts` through a scanner; the output (or `Err`) and the tokens seen.
fn stream(
    data: &[u8],
    cuts: &[usize],
    limit: usize,
    block: bool,
) -> (Result<Vec<u8>, Blocked>, Vec<String>) {
    let mut seen = Vec::new();
    let mut d = |t: &str| {
        seen.push(t.to_string());
        decision(t, block)
    };
    let mut s = BodyScanner::with_limit(limit);
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut prev = 0;
    for c in cuts.into_iter().chain([data.len()]) {
        match s.push(Bytes::copy_from_slice(&data[prev..c]), &mut d) {
            Ok(o) => out.extend_from_slice(&o),
            Err(e) => return (Err(e), seen),
        }
        assert!(s.held() <= 3 * limit + 32, "held {}", s.held());
        prev = c;
    }
    let r = s.finish(&mut d).map(|o| {
        out.extend_from_slice(&o);
        out
    });
    (r, seen)
}

fn fragment() -> impl Strategy<Value = Vec<u8>> {
    let b64 = proptest::collection::vec(prop::sample::select(b"AZaz09+/Qx".to_vec()), 0..12);
    let pct_el = prop::sample::select(vec![
        &b"A"[..],
        b"z",
        b"0",
        b"/",
        b"%2B",
        b"%2b",
        b"%2F",
        b"%2f",
        b"%3D",
        b"%3d",
        b"=",
        b"+",
        b"%",
        b"%2",
        b"%3",
        b"%20",
        b"%2C",
        b"s",
    ]);
    let prefixes = prop::sample::select(vec![
        &b"starpod:v1:"[..],
        b"starpod%3Av1%3A",
        b"starpod%3av1%3a",
        b"starpod%3Av1%3a",
    ]);
    let partial = (0usize..16, any::<bool>()).prop_map(|(n, raw)| {
        let p: &[u8] = if raw {
            b"starpod:v1:"
        } else {
            b"starpod%3av1%3A"
        };
        p[..n.min(p.len())].to_vec()
    });
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..8),
        2 => (b64, 0usize..4).prop_map(|(mut v, pads)| {
            let mut t = b"starpod:v1:".to_vec();
            t.append(&mut v);
            t.resize(t.len() + pads, b'=');
            t
        }),
        2 => (prefixes, proptest::collection::vec(pct_el.clone(), 0..10)).prop_map(|(p, els)| {
            let mut t = p.to_vec();
            for e in els {
                t.extend_from_slice(e);
            }
            t
        }),
        1 => partial,
        1 => pct_el.prop_map(<[u8]>::to_vec),
        1 => prop::sample::select(vec![&b"star"[..], b"s", b"=", b"==", b"A", b" ", b"starpod"])
            .prop_map(<[u8]>::to_vec),
    ]
}

fn input() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(fragment(), 0..12).prop_map(|f| f.concat())
}

/// A small limit so that over-long runs are common.
const SMALL: usize = PREFIX.len() + 6;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn find_tokens_matches_naive(data in input()) {
        for limit in [MAX_TOKEN_LEN, SMALL] {
            let got: Vec<_> = find_tokens_limit(&data, limit)
                .map(|f| (f.range, f.form, f.canonical))
                .collect();
            prop_assert_eq!(got, naive(&data, limit));
        }
    }

    #[test]
    fn body_scanner_any_chunking(
        data in input(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        block in any::<bool>(),
    ) {
        for limit in [MAX_TOKEN_LEN, SMALL] {
            let whole = stream(&data, &[], limit, block);
            let split = stream(&data, &cuts, limit, block);
            prop_assert_eq!(&split, &whole);
            // Against the reference.
            let mut seen = Vec::new();
            let want = naive_rewrite(&data, limit, &mut |t| {
                seen.push(t.to_string());
                decision(t, block)
            });
            prop_assert_eq!(&whole.0, &want);
            prop_assert_eq!(&whole.1, &seen);
        }
        // The one-shot rewriters agree (targets differ only in always percent-encoding).
        let mut seen = Vec::new();
        let r = rewrite(&data, Encoding::LikeToken, &mut |t| {
            seen.push(t.to_string());
            decision(t, block)
        });
        let whole = stream(&data, &[], MAX_TOKEN_LEN, block);
        prop_assert_eq!(r.map(|o| o.unwrap_or_else(|| data.clone())), whole.0);
        prop_assert_eq!(seen, whole.1);
    }

    #[test]
    fn every_chunk_size(data in input()) {
        let whole = stream(&data, &[], SMALL, false);
        for n in 1..=data.len().min(24) {
            let cuts: Vec<usize> = (n..data.len()).step_by(n).collect();
            prop_assert_eq!(&stream(&data, &cuts, SMALL, false), &whole);
        }
    }

    #[test]
    fn header_and_target_never_panic(data in input(), block in any::<bool>()) {
        let _ = scan_header_value(&data, &mut |t| decision(t, block));
        let _ = scan_target(&data, &mut |t| decision(t, block));
        let mut basic = b"Basic ".to_vec();
        basic.extend_from_slice(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &data).as_bytes());
        let _ = scan_header_value(&basic, &mut |t| decision(t, block));
    }

    #[test]
    fn header_basic_equals_scan_of_decoded(data in input()) {
        use base64::Engine as _;
        let enc = base64::engine::general_purpose::STANDARD;
        let value = format!("Basic {}", enc.encode(&data));
        let got = scan_header_value(value.as_bytes(), &mut |t| decision(t, false)).unwrap();
        let want = rewrite(&data, Encoding::LikeToken, &mut |t| decision(t, false)).unwrap();
        prop_assert_eq!(got, want.map(|w| format!("Basic {}", enc.encode(w)).into_bytes()));
    }

    #[test]
    fn target_values_always_percent_encoded(data in input()) {
        let value = b"v/a l+u=e%\xff";
        let got = scan_target(&data, &mut |_| Decision::Substitute(Zeroizing::new(value.to_vec())))
            .unwrap()
            .unwrap_or_else(|| data.clone());
        let n = naive(&data, MAX_TOKEN_LEN);
        let mut want = Vec::new();
        let mut last = 0;
        for (r, _, _) in n {
            want.extend_from_slice(&data[last..r.start]);
            want.extend_from_slice(b"v%2Fa%20l%2Bu%3De%25%FF");
            last = r.end;
        }
        want.extend_from_slice(&data[last..]);
        prop_assert_eq!(got, want);
    }
}

/// Value bytes are disjoint from token bytes (`starpod:v1:` + letters), so no value can be made
/// up of token text.
const VALUE_ALPHABET: &[u8] = b"#!~-\x80\xff";

fn reflect_case(
    alphabet: &'static [u8],
) -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>, Vec<usize>)> {
    let value = proptest::collection::vec(prop::sample::select(alphabet.to_vec()), 1..12);
    proptest::collection::vec(value, 1..5).prop_flat_map(|values| {
        let frag = prop_oneof![
            (0..values.len()).prop_map({
                let v = values.clone();
                move |i| v[i].clone()
            }),
            (0..values.len(), 0usize..10).prop_map({
                let v = values.clone();
                move |(i, n)| v[i][..n.min(v[i].len())].to_vec()
            }),
            proptest::collection::vec(prop::sample::select(alphabet.to_vec()), 0..4),
            proptest::collection::vec(any::<u8>(), 0..4),
            // Long runs without values: the junction path of long chunks.
            (0usize..40).prop_map(|n| vec![b'.'; n]),
        ];
        (
            Just(values),
            proptest::collection::vec(frag, 0..24).prop_map(|f| f.concat()),
            proptest::collection::vec(any::<usize>(), 0..8),
        )
    })
}

fn contains(h: &[u8], n: &[u8]) -> bool {
    h.windows(n.len()).any(|w| w == n)
}

/// Stream `data` cut at `cuts` through `red`.
fn redact_stream(red: &mut Redactor, data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain([data.len()]) {
        out.extend_from_slice(&red.push(Bytes::copy_from_slice(&data[prev..c])));
        assert!(red.held() < 64);
        prev = c;
    }
    out.extend_from_slice(&red.finish());
    assert_eq!(red.held(), 0);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn redactor_any_chunking((values, data, cuts) in reflect_case(VALUE_ALPHABET)) {
        let tokens: Vec<Vec<u8>> = (0..values.len())
            .map(|i| format!("starpod:v1:T{}", (b'a' + i as u8) as char).into_bytes())
            .collect();
        let pairs: Vec<(&[u8], &[u8])> = values
            .iter()
            .zip(&tokens)
            .map(|(v, t)| (&v[..], &t[..]))
            .collect();
        let Some(red) = Redactor::new(&pairs) else {
            prop_assert!(values.iter().all(|v| v.len() < MIN_REFLECT_LEN));
            return Ok(());
        };
        let once = red.redact(&data).unwrap_or_else(|| data.clone());
        for packed in [true, false] {
            let Some(mut red) = Redactor::build(&pairs, packed) else {
                return Err(TestCaseError::fail("no redactor"));
            };
            prop_assert_eq!(red.redact(&data).unwrap_or_else(|| data.clone()), once.clone());
            prop_assert_eq!(redact_stream(&mut red, &data, &cuts), once.clone());
        }
        for v in values.iter().filter(|v| v.len() >= MIN_REFLECT_LEN) {
            prop_assert!(!contains(&once, v), "value {:?} in {:?}", v, once);
        }
    }

    /// Any bytes at all: the engines agree and the stream equals the one-shot.
    #[test]
    fn redactor_any_bytes((values, data, cuts) in reflect_case(b"ab\x00\xffxy")) {
        let pairs: Vec<(&[u8], &[u8])> = values.iter().map(|v| (&v[..], &b"<T>"[..])).collect();
        let Some(red) = Redactor::new(&pairs) else {
            return Ok(());
        };
        let once = red.redact(&data).unwrap_or_else(|| data.clone());
        let Some(mut auto) = Redactor::build(&pairs, false) else {
            return Err(TestCaseError::fail("no redactor"));
        };
        prop_assert_eq!(auto.redact(&data).unwrap_or_else(|| data.clone()), once.clone());
        prop_assert_eq!(redact_stream(&mut auto, &data, &cuts), once.clone());
        let mut red = red;
        prop_assert_eq!(redact_stream(&mut red, &data, &cuts), once);
    }
}

/// The patterns a [`LeakSet`] looks for: each value long enough, and its percent encoding.
fn leak_patterns(values: &[Vec<u8>]) -> Vec<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    for (i, v) in values.iter().enumerate() {
        if v.len() >= MIN_REFLECT_LEN {
            let mut encoded = Vec::new();
            percent_encode_into(v, &mut encoded);
            let form = String::from_utf8(encoded.clone())
                .unwrap()
                .replace("%20", "+");
            out.push((v.clone(), i));
            out.push((encoded, i));
            out.push((form.into_bytes(), i));
        }
    }
    out
}

/// Where the first occurrence of any pattern starts (naive search).
fn first_leak(patterns: &[(Vec<u8>, usize)], data: &[u8]) -> Option<usize> {
    (0..data.len()).find(|&s| patterns.iter().any(|(p, _)| data[s..].starts_with(p)))
}

/// Stream `data` cut at `cuts` through a guard: `Ok(output)` or `Err((bytes released, leak))`.
fn leak_stream(set: &Arc<LeakSet>, data: &[u8], cuts: &[usize]) -> Result<Vec<u8>, (usize, Leak)> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    cuts.sort_unstable();
    let mut g = set.scanner();
    let mut out = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain([data.len()]) {
        match g.push(Bytes::copy_from_slice(&data[prev..c])) {
            Ok(b) => out.extend_from_slice(&b),
            Err(leak) => return Err((out.len(), leak)),
        }
        prev = c;
    }
    out.extend_from_slice(&g.finish());
    Ok(out)
}

/// The guard against the naive search, for one case and both engines.
fn check_guard(values: &[Vec<u8>], data: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    let with_ids: Vec<(&[u8], usize)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| (&v[..], i))
        .collect();
    let patterns = leak_patterns(values);
    let want = first_leak(&patterns, data);
    for packed in [true, false] {
        let Some(set) = LeakSet::build(&with_ids, packed).map(Arc::new) else {
            prop_assert!(patterns.is_empty());
            return Ok(());
        };
        prop_assert_eq!(set.find(data).is_some(), want.is_some());
        match (leak_stream(&set, data, cuts), want) {
            (Ok(out), None) => prop_assert_eq!(out, data.to_vec()),
            (Err((released, Leak(id))), Some(first)) => {
                // Nothing of the first value left, and the id names a value that is there.
                prop_assert!(
                    released <= first,
                    "{} bytes released, value at {}",
                    released,
                    first
                );
                prop_assert!(patterns.iter().any(|(p, i)| *i == id && contains(data, p)));
            }
            (got, want) => {
                return Err(TestCaseError::fail(format!(
                    "got {got:?}, want a leak at {want:?}"
                )));
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The streamed guard finds a value whatever the chunking, before any byte of it is released.
    #[test]
    fn leak_guard_any_chunking((values, data, cuts) in reflect_case(VALUE_ALPHABET)) {
        check_guard(&values, &data, &cuts)?;
    }

    #[test]
    fn leak_guard_any_bytes((values, data, cuts) in reflect_case(b"ab\x00\xffxy")) {
        check_guard(&values, &data, &cuts)?;
    }

    /// A percent- or form-encoded value between arbitrary bytes, cut anywhere.
    #[test]
    fn leak_guard_percent_encoded(
        value in proptest::collection::vec(any::<u8>(), MIN_REFLECT_LEN..16),
        before in proptest::collection::vec(any::<u8>(), 0..40),
        after in proptest::collection::vec(any::<u8>(), 0..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        for form in [false, true] {
            let mut data = before.clone();
            data.extend_from_slice(&super::leak::encoded(&value, form));
            data.extend_from_slice(&after);
            check_guard(std::slice::from_ref(&value), &data, &cuts)?;
        }
    }
}
