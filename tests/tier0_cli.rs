//! Tier 0 end to end: `netcage run --tier env` passes the child's exit status through, and
//! input mistakes exit 2 with one line on stderr that says what to do, before running anything.

mod common;
mod tier0;

const TIER: &str = "env";

use std::process::Output;

use common::*;
use tier0::*;

/// Asserts a usage/input error: exit 2, exactly one stderr line naming `needle`, nothing run.
fn input_error(out: &Output, needle: &str) {
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", describe(out));
    assert!(lines[0].starts_with("netcage: "), "{}", describe(out));
    assert!(lines[0].contains(needle), "{}", describe(out));
    assert!(out.stdout.is_empty(), "the command ran: {}", describe(out));
}

#[test]
fn the_child_exit_status_passes_through() {
    let fx = Fx::new();
    let out = fx.run(&[], &["sh", "-c", "echo child-ran; exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(out.stdout, b"child-ran\n");
    let out = fx.run(&[], &["true"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // Killed by a signal: 128 + signal number, like a shell.
    let out = fx.run(&[], &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(128 + 15), "{}", describe(&out));
}

#[test]
fn input_errors_exit_2_with_one_line_before_running_anything() {
    let fx = Fx::new();
    let child = ["sh", "-c", "echo child-ran"];

    let mut cmd = fx.run_cmd(&["--seal", "TIER0_UNKNOWN_NAME"], &child);
    cmd.env("TIER0_UNKNOWN_NAME", SECRET);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    input_error(&out, "TIER0_UNKNOWN_NAME=");
    assert!(free_of(&out.stderr, SECRET.as_bytes()));

    let missing = fx.env.path("no-such-key");
    let out = fx.run(&["--key-file", missing.to_str().unwrap()], &child);
    input_error(&out, "no-such-key");

    let policy = fx.env.path("bad.toml");
    std::fs::write(&policy, "[egress]\ndefault = \"sometimes\"\n").unwrap();
    let out = fx.run(&["--policy", policy.to_str().unwrap()], &child);
    input_error(&out, "bad.toml");
    std::fs::write(&policy, "[egress\nallow = [\n").unwrap();
    let out = fx.run(&["--policy", policy.to_str().unwrap()], &child);
    input_error(&out, "bad.toml");

    // --seal-file: a file that is not there, a name that says no format, a bad [files] seal.
    let missing = fx.env.path("no-such.netrc");
    let out = fx.run(&["--seal-file", missing.to_str().unwrap()], &child);
    input_error(&out, "--seal-file");
    input_error(&out, "no-such.netrc: not a file");
    let unnamed = fx.env.path("creds");
    std::fs::write(&unnamed, "machine a.test password p\n").unwrap();
    let out = fx.run(&["--seal-file", unnamed.to_str().unwrap()], &child);
    input_error(&out, "=FORMAT");
    std::fs::write(&policy, "[files]\nseal = [\"/x/creds\"]\n").unwrap();
    let out = fx.run(&["--policy", policy.to_str().unwrap()], &child);
    input_error(&out, "files.seal");
}
