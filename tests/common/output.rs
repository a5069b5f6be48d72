//! Small helpers for asserting on command output and building test inputs.

use std::process::Output;

use serde_json::Value;

use super::describe;

/// A `str` field of an audit line ("" when absent).
pub fn field<'v>(line: &'v Value, name: &str) -> &'v str {
    line[name].as_str().unwrap_or("")
}

pub fn succeeded(out: &Output) -> &Output {
    assert!(out.status.success(), "{}", describe(out));
    out
}

pub fn stdout_str(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&succeeded(out).stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(out)))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn pct(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
