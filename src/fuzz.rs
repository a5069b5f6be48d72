//! The harness of the property tests for every parser that reads bytes a sandboxed command (or a
//! server it picked) controls: arbitrary bytes and mutated valid input, asserting no panic and
//! bounded output and time. Each target is one `#[test]` calling [`check`]; `scripts/fuzz`
//! runs the same targets for longer.
//!
//! - `PROPTEST_CASES=N`: N cases per target instead of the target's own (modest) count.
//! - `NETCAGE_FUZZ_SECONDS=S`: run batches of cases until S seconds have passed, then print
//!   one `fuzz-result` line (cases, seconds, slowest case) for `scripts/fuzz`.
//!
//! Included with `#[path]` by the binary's tests too (the serve wire protocol lives there).
#![allow(dead_code)] // each test binary uses a different part of this module

use std::cell::Cell;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

/// A case that takes longer than this fails (a hang or a blow-up, not a busy machine).
const CASE_LIMIT: Duration = Duration::from_secs(10);
/// Cases per batch under a time budget.
const BATCH: u32 = 256;

/// Runs `test` on values of `strategy`: `cases` of them, or what the environment asks for.
/// Panics with the (shrunk) failing input.
pub fn check<S>(
    name: &str,
    cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let budget = std::env::var("NETCAGE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(cases);
    let config = Config {
        cases: if budget.is_some() { BATCH } else { cases },
        failure_persistence: None,
        ..Config::default()
    };
    let slowest = Cell::new(Duration::ZERO);
    let timed = |value: S::Value| {
        let started = Instant::now();
        let result = test(value);
        let took = started.elapsed();
        slowest.set(slowest.get().max(took));
        if took > CASE_LIMIT {
            return Err(TestCaseError::fail(format!("one case took {took:?}")));
        }
        result
    };
    let started = Instant::now();
    let mut run: u64 = 0;
    loop {
        // A runner counts its successes for good: a fresh one (new seed) per batch.
        let mut runner = TestRunner::new(config.clone());
        match runner.run(&strategy, timed) {
            Ok(()) => run += u64::from(config.cases),
            Err(TestError::Fail(why, value)) => {
                eprintln!("fuzz-result {name} FAILED after {run} cases: {why}");
                panic!("{name}: {why}\nminimal failing input: {value:#?}");
            }
            Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
        }
        match budget {
            Some(budget) if started.elapsed() < budget => continue,
            _ => break,
        }
    }
    if budget.is_some() {
        eprintln!(
            "fuzz-result {name} cases={run} seconds={:.1} slowest_ms={:.1}",
            started.elapsed().as_secs_f64(),
            slowest.get().as_secs_f64() * 1000.0
        );
    }
}

/// How one valid input is changed: bytes flipped or overwritten, a run cut out, bytes
/// inserted, the end cut off. Positions are fractions of the length, so they apply to any input.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(prop::sample::Index, u8),
    Set(prop::sample::Index, u8),
    Remove(prop::sample::Index, usize),
    Insert(prop::sample::Index, Vec<u8>),
    Truncate(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, x)| Mutation::Flip(i, x)),
        // Length and count fields are often one byte of 0x00/0xff away from trouble.
        (
            any::<prop::sample::Index>(),
            prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), any::<u8>()]
        )
            .prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
    ]
}

/// Applies `mutations` to `data` in order.
pub fn apply(mut data: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let at = |i: &prop::sample::Index, extra: usize| i.index(data.len() + extra);
        match m {
            Mutation::Flip(i, x) if !data.is_empty() => {
                let i = at(i, 0);
                data[i] ^= x;
            }
            Mutation::Set(i, b) if !data.is_empty() => {
                let i = at(i, 0);
                data[i] = *b;
            }
            Mutation::Remove(i, n) if !data.is_empty() => {
                let i = at(i, 0);
                let end = (i + n).min(data.len());
                data.drain(i..end);
            }
            Mutation::Insert(i, bytes) => {
                let i = at(i, 1);
                data.splice(i..i, bytes.iter().copied());
            }
            Mutation::Truncate(i) => {
                let i = at(i, 1);
                data.truncate(i);
            }
            _ => {}
        }
    }
    data
}

/// One to four mutations, for [`apply`].
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..=4)
}

/// `valid` inputs with one to four mutations each: (original, mutated).
pub fn mutated(valid: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (valid, mutations()).prop_map(|(data, ms)| {
        let changed = apply(data.clone(), &ms);
        (data, changed)
    })
}

/// Arbitrary bytes, up to `max` of them.
pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}
