//! `cargo bench --bench scan`: the token scanner, which sees every byte that leaves the sandbox.
//! Request bodies (token-free, and a token every 64 KiB) streamed in 16 KiB chunks, header values,
//! request targets, the request-side leak guard, and the response-side redactor.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use netcage::scan::{self, BodyScanner, Decision, LeakSet, Redactor, Zeroizing};
use netcage::token::{self, Key};

const BODY: usize = 4 << 20;
const CHUNK: usize = 16 << 10;

/// xorshift64*: deterministic pseudo-random numbers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// JSON-like printable text with near misses ("star", "starpod", "starpod: ") now and then.
fn token_free(len: usize, rng: &mut Rng) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"\"id\": ",
        b"\"name\": \"",
        b"\", ",
        b"{",
        b"}, ",
        b"\"value\": ",
        b"true, ",
        b"\"description\": \"",
        b"the quick brown fox ",
        b"https://example.com/path?q=",
    ];
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.";
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        let r = rng.below(1024);
        if r < 3 {
            v.extend_from_slice([&b"star"[..], b"starpod", b"starpod: "][r]);
        } else if r < 256 {
            v.extend_from_slice(WORDS[rng.below(WORDS.len())]);
        } else {
            for _ in 0..rng.below(12) + 1 {
                v.push(ALNUM[rng.below(ALNUM.len())]);
            }
        }
    }
    v.truncate(len);
    v
}

/// The same with `token` written every 64 KiB.
fn with_tokens(len: usize, token: &str, rng: &mut Rng) -> Vec<u8> {
    let mut v = token_free(len, rng);
    let mut at = 1000;
    while at + token.len() + 2 < len {
        v[at] = b'"';
        v[at + 1..at + 1 + token.len()].copy_from_slice(token.as_bytes());
        v[at + 1 + token.len()] = b'"';
        at += 64 << 10;
    }
    v
}

fn substitute(_: &str) -> Decision {
    Decision::Substitute(Zeroizing::new(
        b"ghp_0123456789abcdefABCDEF0123456789abcd".to_vec(),
    ))
}

fn scan_body(data: &Bytes, decide: &mut dyn FnMut(&str) -> Decision) -> usize {
    let mut scanner = BodyScanner::new();
    let mut len = 0;
    let mut off = 0;
    while off < data.len() {
        let end = (off + CHUNK).min(data.len());
        len += scanner
            .push(data.slice(off..end), decide)
            .expect("not blocked")
            .len();
        off = end;
    }
    len + scanner.finish(decide).expect("not blocked").len()
}

fn body(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let key = Key::from_bytes([7; 32]);
    let tok = token::seal(
        &key,
        "ghp_0123456789abcdefABCDEF0123456789abcd",
        &["api.github.com".into()],
    );
    let free = Bytes::from(token_free(BODY, &mut rng));
    let toks = Bytes::from(with_tokens(BODY, &tok, &mut rng));
    let mut g = c.benchmark_group("body");
    g.throughput(Throughput::Bytes(BODY as u64));
    g.bench_function("token-free, 16 KiB chunks", |b| {
        b.iter(|| scan_body(black_box(&free), &mut substitute))
    });
    g.bench_function("token every 64 KiB (substituted), 16 KiB chunks", |b| {
        b.iter(|| scan_body(black_box(&toks), &mut substitute))
    });
    // What the proxy really does per token: decrypt it and decide.
    g.bench_function(
        "token every 64 KiB (opened with the key), 16 KiB chunks",
        |b| {
            b.iter(|| {
                scan_body(
                    black_box(&toks),
                    &mut |t: &str| match token::open(&key, t) {
                        Ok(s) => Decision::Substitute(Zeroizing::new(s.value.as_bytes().to_vec())),
                        Err(_) => Decision::Keep,
                    },
                )
            })
        },
    );
    let pairs: [(&[u8], &[u8]); 2] = [
        (
            b"ghp_0123456789abcdefABCDEF0123456789abcd",
            b"starpod:v1:AAAA",
        ),
        (b"sk-proj-abcdefghijklmnopqrstuv", b"starpod:v1:BBBB"),
    ];
    // The leak guard in front of the scanner, as the proxy streams a body when it guards values.
    let values: [(&[u8], usize); 2] = [(pairs[0].0, 0), (pairs[1].0, 1)];
    let guard = LeakSet::new(&values).expect("values long enough");
    g.bench_function("token-free, leak guard (2 values), 16 KiB chunks", |b| {
        b.iter(|| {
            let mut leaks = guard.scanner();
            let mut scanner = BodyScanner::new();
            let mut len = 0;
            let mut off = 0;
            while off < free.len() {
                let end = (off + CHUNK).min(free.len());
                let chunk = leaks.push(free.slice(off..end)).expect("no real value");
                len += scanner
                    .push(chunk, &mut substitute)
                    .expect("not blocked")
                    .len();
                off = end;
            }
            let tail = scanner
                .push(leaks.finish(), &mut substitute)
                .expect("not blocked");
            len + tail.len() + scanner.finish(&mut substitute).expect("not blocked").len()
        })
    });
    g.bench_function("response redaction, 2 values, 16 KiB chunks", |b| {
        b.iter(|| {
            let mut r = Redactor::new(&pairs).expect("values long enough");
            let mut len = 0;
            let mut off = 0;
            while off < free.len() {
                let end = (off + CHUNK).min(free.len());
                len += r.push(free.slice(off..end)).len();
                off = end;
            }
            len + r.finish().len()
        })
    });
    g.finish();
    // Built for every request on a connection that had a value substituted.
    c.bench_function("redactor/build (2 values)", |b| {
        b.iter(|| Redactor::new(black_box(&pairs)).expect("values long enough"))
    });
    c.bench_function("redactor/build (1 value)", |b| {
        b.iter(|| Redactor::new(black_box(&pairs[..1])).expect("values long enough"))
    });
}

fn headers(c: &mut Criterion) {
    let key = Key::from_bytes([7; 32]);
    let tok = token::seal(
        &key,
        "ghp_0123456789abcdefABCDEF0123456789abcd",
        &["api.github.com".into()],
    );
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{tok}"))
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "no token",
            "application/vnd.github+json, text/plain;q=0.9, */*;q=0.8".into(),
        ),
        ("Bearer token", format!("Bearer {tok}")),
        ("Basic credentials with token", basic),
        (
            "Bearer, not a token",
            "Bearer ghp_notATokenAtAll0123456789abcdefABCDEF".into(),
        ),
    ];
    let mut g = c.benchmark_group("header");
    for (name, value) in &cases {
        g.bench_with_input(BenchmarkId::from_parameter(name), value, |b, v| {
            b.iter(|| scan::scan_header_value(black_box(v.as_bytes()), &mut substitute))
        });
    }
    let targets: Vec<(&str, String)> = vec![
        (
            "target, no token",
            "/repos/owner/name/pulls?state=open&per_page=100&page=2".into(),
        ),
        (
            "target, percent-encoded token",
            format!(
                "/api?key={}",
                tok.replace(':', "%3A")
                    .replace('+', "%2B")
                    .replace('/', "%2F")
                    .replace('=', "%3D")
            ),
        ),
    ];
    for (name, value) in &targets {
        g.bench_with_input(BenchmarkId::from_parameter(name), value, |b, v| {
            b.iter(|| scan::scan_target(black_box(v.as_bytes()), &mut substitute))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = body, headers
}
criterion_main!(benches);
