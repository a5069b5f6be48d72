//! `cargo bench --bench token`: the starpod:v1 codec (AES-256-GCM + base64 + JSON), which the
//! proxy runs for every token it finds, and the host check that follows.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use netcage::hosts;
use netcage::token::{self, Key};

fn codec(c: &mut Criterion) {
    let key = Key::from_bytes([7; 32]);
    let other = Key::from_bytes([8; 32]);
    let value = "ghp_0123456789abcdefABCDEF0123456789abcd";
    let hosts_one = vec!["api.github.com".to_owned()];
    let hosts_many: Vec<String> = ["api.github.com", "github.com", "*.githubusercontent.com"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tok = token::seal(&key, value, &hosts_one);
    let tok_many = token::seal(&key, value, &hosts_many);
    let long_value = "x".repeat(4096);
    let tok_long = token::seal(&key, &long_value, &hosts_one);

    let mut g = c.benchmark_group("token");
    g.bench_function("open (40-byte value, 1 host)", |b| {
        b.iter(|| token::open(&key, black_box(&tok)).expect("valid"))
    });
    g.bench_function("open (40-byte value, 3 hosts)", |b| {
        b.iter(|| token::open(&key, black_box(&tok_many)).expect("valid"))
    });
    g.bench_function("open (4 KiB value)", |b| {
        b.iter(|| token::open(&key, black_box(&tok_long)).expect("valid"))
    });
    g.bench_function("open, wrong key (authentication fails)", |b| {
        b.iter(|| token::open(&other, black_box(&tok)).is_err())
    });
    g.bench_function("seal (40-byte value, 1 host)", |b| {
        b.iter(|| token::seal(&key, black_box(value), &hosts_one))
    });
    g.bench_function("fingerprint", |b| {
        b.iter(|| token::fingerprint(black_box(&tok)))
    });
    g.bench_function("host check (3 patterns)", |b| {
        b.iter(|| {
            hosts::allowed(
                black_box(&hosts_many),
                black_box("raw.githubusercontent.com"),
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = codec
}
criterion_main!(benches);
