//! Where `netcage run`'s start-up and shutdown go: with `NETCAGE_TIMING=1` in its environment,
//! netcage and the sandbox holder it starts (another process) print
//! `netcage-timing: <CLOCK_MONOTONIC ms> <pid> <step>` on stderr at each step, one clock for
//! both, so `scripts/bench` can break `run -- true` down. Off, a step costs one cached load.

use std::sync::OnceLock;

/// The environment variable that turns the steps on (`1`).
pub const VAR: &str = "NETCAGE_TIMING";

static ON: OnceLock<bool> = OnceLock::new();

/// Are steps printed?
pub fn enabled() -> bool {
    *ON.get_or_init(|| std::env::var_os(VAR).is_some_and(|v| v == "1"))
}

/// Prints the step `step` with the time now, when [`enabled`].
pub fn mark(step: &str) {
    if !enabled() {
        return;
    }
    let Ok(now) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) else {
        return;
    };
    let ms = now.tv_sec() as f64 * 1000.0 + now.tv_nsec() as f64 / 1e6;
    // One write, so the holder's lines and netcage's do not interleave.
    let line = format!("netcage-timing: {ms:.3} {} {step}\n", std::process::id());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
}
