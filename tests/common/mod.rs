//! Shared support for netcage's integration tests: real parts, loopback only.
//!
//! # Layout
//! - [`ca`]: [`TestCa`], a certificate authority made with rcgen at test time, and rustls
//!   server configurations with leaf certificates it issues.
//! - [`upstream`]: [`Upstream`], an HTTPS (or plain HTTP) test server on `127.0.0.1:0` that
//!   records every request it receives ([`Recorded`]) and serves a few routes that exercise
//!   what the proxy must carry intact: echo, server-sent events, large downloads, WebSocket,
//!   HTTP/2 trailers and git's smart-HTTP ref advertisement.
//! - [`vault`]: [`TestEnv`], a temporary data dir with a `.vault_key`, and an independent
//!   implementation of the `starpod:v1:` token format (DESIGN §2) to cross-check netcage's.
//! - [`registry`]: package registries (PyPI, npm, cargo, GOPROXY) and a git repository as
//!   files the upstream serves under `/files/`, for the client matrix.
//! - [`users`]: running netcage as another user (`setpriv`) with a binary that user can reach.
//! - [`process`]: running commands with a time limit and capturing their output.
//!
//! Every server binds port 0 on 127.0.0.1; nothing here talks to any other address.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of this module

pub mod ca;
pub mod output;
pub mod process;
pub mod registry;
pub mod upstream;
pub mod users;
pub mod vault;
pub mod ws;

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub use ca::TestCa;
pub use output::{field, hex, pct, stdout_json, stdout_str, succeeded};
pub use process::{KillOnDrop, describe, run_with_stdin, run_with_timeout, wait_until};
pub use upstream::{
    BODY_PREFIX_LIMIT, GIT_HEAD_SHA, Recorded, Upstream, WsFrame, WsMessage, pattern,
    pattern_sha256,
};
pub use users::{as_uid, bin_for_others};
pub use vault::{TestEnv, seal_with_key, unseal_with_key};

/// The netcage binary built for these tests.
pub fn netcage_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_netcage"))
}

/// A file from the repository's sibling `shared/testdata/` folder (e.g. `token_vectors.json`).
pub fn shared_testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata")
        .join(name)
}

/// True when `needle` occurs nowhere in `haystack`. Panics on an empty needle, which would
/// make every such assertion vacuous.
pub fn free_of(haystack: &[u8], needle: &[u8]) -> bool {
    !contains(haystack, needle)
}

/// True when `needle` occurs in `haystack`. Panics on an empty needle.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    assert!(
        !needle.is_empty(),
        "searching for an empty needle proves nothing"
    );
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Makes a client command (curl, git, python, or netcage wrapping one) independent of this
/// machine's configuration: no proxy or CA-bundle variables, `HOME` = `home`, no system git
/// config, and no prompts.
pub fn isolate_client_env<'c>(cmd: &'c mut Command, home: &Path) -> &'c mut Command {
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "CURL_CA_BUNDLE",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
}
