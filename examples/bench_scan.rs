//! Throughput of `BodyScanner` on token-free data and on data with a token every 64 KiB, of the
//! same with the leak guard in front (`LeakScanner` then `BodyScanner`, as the proxy streams a
//! request body when it guards real values), and of the response-side `Redactor`. Run with
//! `scripts/bench-scan` (release build).

use std::time::{Duration, Instant};

use bytes::Bytes;
use std::sync::Arc;

use netcage::scan::{BodyScanner, Decision, LeakSet, Redactor, Zeroizing};

const TOTAL: usize = 256 << 20;
const CHUNK: usize = 16 << 10;
const RUNS: usize = 3;

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

/// JSON-like printable text, with "star" and "starpod" (never followed by ":v1:") about every
/// 2 KiB.
fn token_free(len: usize, rng: &mut Rng) -> Vec<u8> {
    const WORDS: &[&[u8]] = &[
        b"\"id\": ",
        b"\"name\": \"",
        b"\", ",
        b"{",
        b"}, ",
        b"[",
        b"], ",
        b"\"value\": ",
        b"true, ",
        b"null, ",
        b"\"description\": \"",
        b"the quick brown fox ",
        b"\\n",
        b"https://example.com/path?q=",
    ];
    const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.";
    let mut v = Vec::with_capacity(len + 64);
    while v.len() < len {
        let r = rng.below(1024);
        if r < 3 {
            // Now and then, near misses: these stop the prefix search.
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

/// The same, with a ~100-byte token every 64 KiB.
fn with_tokens(len: usize, rng: &mut Rng) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut v = token_free(len, rng);
    let mut at = 1000;
    while at + 200 < len {
        let mut tok = b"\"starpod:v1:".to_vec();
        for _ in 0..88 {
            tok.push(B64[rng.below(B64.len())]);
        }
        tok.extend_from_slice(b"=\"");
        v[at..at + tok.len()].copy_from_slice(&tok);
        at += 64 << 10;
    }
    v
}

/// Two real values, as a proxy with two `--seal`s holds them.
const VALUES: [&[u8]; 2] = [
    b"ghp_0123456789abcdefABCDEF0123456789abcd",
    b"sk-proj-abcdefghijklmnopqrstuv",
];

/// Feed `data` in chunks (through the leak guard first, if given); returns the best time of
/// `RUNS`, the output length and the token count.
fn bench(data: &Bytes, guard: Option<&Arc<LeakSet>>) -> (Duration, usize, usize) {
    let mut best = Duration::MAX;
    let mut out_len = 0;
    let mut tokens = 0;
    for _ in 0..RUNS {
        let mut n = 0usize;
        let mut decide = |_: &str| {
            n += 1;
            Decision::Substitute(Zeroizing::new(vec![b'x'; 40]))
        };
        let start = Instant::now();
        let mut scanner = BodyScanner::new();
        let mut leaks = guard.map(LeakSet::scanner);
        let mut len = 0;
        let mut off = 0;
        while off < data.len() {
            let end = (off + CHUNK).min(data.len());
            let mut chunk = data.slice(off..end);
            if let Some(g) = &mut leaks {
                chunk = g.push(chunk).expect("no real value");
            }
            len += scanner.push(chunk, &mut decide).expect("not blocked").len();
            off = end;
        }
        if let Some(g) = &mut leaks {
            len += scanner
                .push(g.finish(), &mut decide)
                .expect("not blocked")
                .len();
        }
        len += scanner.finish(&mut decide).expect("not blocked").len();
        best = best.min(start.elapsed());
        out_len = len;
        tokens = n;
    }
    (best, out_len, tokens)
}

/// Response side: a `Redactor` with two values, over the same chunks; best of `RUNS`.
fn bench_redact(data: &Bytes) -> (Duration, usize) {
    let pairs: [(&[u8], &[u8]); 2] = [
        (VALUES[0], b"starpod:v1:AAAA"),
        (VALUES[1], b"starpod:v1:BBBB"),
    ];
    let mut best = Duration::MAX;
    let mut out_len = 0;
    for _ in 0..RUNS {
        let mut redactor = Redactor::new(&pairs).expect("values are long enough");
        let start = Instant::now();
        let mut len = 0;
        let mut off = 0;
        while off < data.len() {
            let end = (off + CHUNK).min(data.len());
            len += redactor.push(data.slice(off..end)).len();
            off = end;
        }
        len += redactor.finish().len();
        best = best.min(start.elapsed());
        out_len = len;
    }
    (best, out_len)
}

fn report(name: &str, data: &Bytes, guard: Option<&Arc<LeakSet>>) {
    let (t, out_len, tokens) = bench(data, guard);
    println!(
        "{name}: {:.2} GB/s ({} MiB in {:.1} ms, {tokens} tokens, {out_len} bytes out)",
        data.len() as f64 / t.as_secs_f64() / 1e9,
        data.len() >> 20,
        t.as_secs_f64() * 1e3,
    );
}

fn main() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let free = Bytes::from(token_free(TOTAL, &mut rng));
    let guard = LeakSet::new(&[(VALUES[0], 0), (VALUES[1], 1)]).expect("values are long enough");
    report("token-free", &free, None);
    report("token-free, leak guard (2 values)", &free, Some(&guard));
    let (t, out_len) = bench_redact(&free);
    println!(
        "response redaction (2 values): {:.2} GB/s ({out_len} bytes out)",
        free.len() as f64 / t.as_secs_f64() / 1e9
    );
    drop(free);
    let toks = Bytes::from(with_tokens(TOTAL, &mut rng));
    report("token every 64 KiB", &toks, None);
    report(
        "token every 64 KiB, leak guard (2 values)",
        &toks,
        Some(&guard),
    );
}
