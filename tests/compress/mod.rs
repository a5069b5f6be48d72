//! Shared by `tests/tier0_compress.rs` and `tests/tier1_compress.rs`: reading `curl -i` output
//! and netcage's peak memory while it runs.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::KillOnDrop;

/// The decompression bomb: 1 GiB of zeros (about 5 MiB of fast gzip).
pub const BOMB: u64 = 1 << 30;
/// The peak RSS netcage must stay under while the bomb streams through it.
pub const BOMB_RSS_LIMIT_KIB: u64 = 100 * 1024;

/// Splits `curl -i` output into (the header block in lower case, the body).
pub fn head_and_body(out: &[u8]) -> (String, Vec<u8>) {
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    (
        String::from_utf8_lossy(&out[..split]).to_ascii_lowercase(),
        out[split + 4..].to_vec(),
    )
}

/// Peak resident memory (VmHWM) of `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd` (whose output must be small: it is read at the end) to completion within
/// `timeout`, and returns its output and the highest peak RSS seen of its process, sampled
/// every 20 ms.
pub fn run_sampling_peak_rss(cmd: &mut Command, timeout: Duration) -> (Output, u64) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop::spawn(cmd);
    let pid = child.id();
    let mut peak = 0;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        assert!(started.elapsed() < timeout, "{cmd:?} did not finish");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    let out = Output {
        status,
        stdout,
        stderr,
    };
    (out, peak)
}
