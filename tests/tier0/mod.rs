//! Support for the Tier 0 end-to-end tests (`tests/tier0_*.rs`): one recording HTTPS upstream
//! for `api.github.com` and `other.example` (both pinned to 127.0.0.1 with `--resolve`), a data
//! dir with a vault key, and `netcage run --tier env` / `netcage proxy` commands wired to them.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Upper bound for one `netcage run` (and the client it wraps).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for waiting on asynchronous effects (audit lines, recorded requests).
pub const WAIT: Duration = Duration::from_secs(10);

/// The host the test tokens are bound to.
pub const BOUND: &str = "api.github.com";
/// A host the test tokens are not bound to.
pub const OTHER: &str = "other.example";

/// A real-looking secret value that must only ever appear upstream at [`BOUND`].
pub const SECRET: &str = "ghp_Tier0RealSecretValue4242";

pub struct Fx {
    pub env: TestEnv,
    pub ca: TestCa,
    /// The test CA (PEM) the upstream's certificate is issued by, for `--upstream-ca`.
    pub ca_path: PathBuf,
    pub up: Upstream,
    /// The audit log `--audit` writes to.
    pub audit: PathBuf,
}

impl Fx {
    pub fn new() -> Self {
        let ca = TestCa::new();
        let env = TestEnv::new();
        let ca_path = ca.write_pem(env.root());
        let up = Upstream::start(&ca, &[BOUND, OTHER]);
        let audit = env.path("audit.jsonl");
        Fx {
            env,
            ca,
            ca_path,
            up,
            audit,
        }
    }

    /// A token for [`SECRET`] bound to [`BOUND`], sealed with the data dir's key.
    pub fn token(&self) -> String {
        self.env.seal(SECRET, &[BOUND])
    }

    /// `https://HOST:PORT/PATH` on the upstream.
    pub fn url(&self, host: &str, path: &str) -> String {
        self.up.url(host, path)
    }

    /// The options every netcage invocation in these tests shares: data dir, upstream CA,
    /// `--resolve` pins for both names, audit log.
    pub fn common_args(&self, cmd: &mut Command) {
        cmd.arg("--data-dir")
            .arg(self.env.data_dir())
            .arg("--upstream-ca")
            .arg(&self.ca_path)
            .args(["--resolve", &format!("{BOUND}=127.0.0.1")])
            .args(["--resolve", &format!("{OTHER}=127.0.0.1")])
            .arg("--audit")
            .arg(&self.audit);
    }

    /// `netcage run --tier <crate::TIER> <common> <opts> -- <child>`, with a client environment that
    /// does not depend on this machine.
    pub fn run_cmd(&self, opts: &[&str], child: &[&str]) -> Command {
        let mut cmd = Command::new(netcage_bin());
        isolate_client_env(&mut cmd, self.env.root());
        // The scratch root is the command's working directory: in Tier 1 that is where it may
        // write (and /tmp, where the scratch root lives, is the sandbox's own).
        cmd.current_dir(self.env.root());
        cmd.args(["run", "--tier", crate::TIER])
            .env("NETCAGE_TEST_TIER", crate::TIER);
        self.common_args(&mut cmd);
        cmd.args(opts).arg("--").args(child);
        cmd
    }

    /// Runs [`Fx::run_cmd`] to completion (bounded by [`RUN_TIMEOUT`]).
    pub fn run(&self, opts: &[&str], child: &[&str]) -> Output {
        run_with_timeout(&mut self.run_cmd(opts, child), RUN_TIMEOUT)
    }

    /// `curl -sS --max-time 30 ARGS` inside `netcage run --tier env <opts>`.
    pub fn curl(&self, opts: &[&str], args: &[&str]) -> Output {
        let mut child = vec!["curl", "-sS", "--max-time", "30"];
        child.extend_from_slice(args);
        self.run(opts, &child)
    }

    /// `python3 -c SCRIPT ARGS` inside `netcage run --tier env <opts>`.
    pub fn python(&self, opts: &[&str], script: &str, args: &[&str]) -> Output {
        let mut child = vec!["python3", "-c", script];
        child.extend_from_slice(args);
        let out = self.run(opts, &child);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("ModuleNotFoundError"),
            "python3 lacks a module these tests need \
             (pip install requests websocket-client):\n{stderr}"
        );
        out
    }

    /// Every audit line written so far, parsed.
    pub fn audit_lines(&self) -> Vec<Value> {
        read_audit(&self.audit)
    }

    /// Waits until an audit line satisfies `pred`; returns it.
    pub fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_audit(&self.audit, what, pred)
    }

    /// Recorded requests whose host (Host header or :authority) is `host`.
    pub fn requests_for(&self, host: &str) -> Vec<Recorded> {
        self.up
            .requests()
            .into_iter()
            .filter(|r| {
                r.host().is_some_and(|h| host_of(&h) == host) || r.sni.as_deref() == Some(host)
            })
            .collect()
    }
}

/// `host` of `host:port`.
pub fn host_of(authority: &str) -> &str {
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

/// Every line of a JSONL audit file, parsed (a line that is not JSON fails the test).
pub fn read_audit(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Waits until a line of the audit file at `path` satisfies `pred`; returns it.
pub fn wait_audit(path: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let lines = read_audit(path);
        if let Some(hit) = lines.iter().find(|l| pred(l)) {
            return hit.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no audit line for {what} within {WAIT:?}; the log has:\n{}",
            lines
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A `netcage proxy` running in the background for [`Fx`], killed on drop.
pub struct ProxyProc {
    pub child: KillOnDrop,
    pub port: u16,
}

impl ProxyProc {
    /// Starts `netcage proxy --listen 127.0.0.1:<free port> <common> <opts>` and waits until
    /// it accepts connections.
    pub fn start(fx: &Fx, opts: &[&str]) -> Self {
        let port = free_port();
        let mut cmd = Command::new(netcage_bin());
        isolate_client_env(&mut cmd, fx.env.root());
        cmd.args(["proxy", "--listen", &format!("127.0.0.1:{port}")]);
        fx.common_args(&mut cmd);
        cmd.args(opts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = KillOnDrop::spawn(&mut cmd);
        let deadline = Instant::now() + WAIT;
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("netcage proxy exited early with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "netcage proxy did not listen on 127.0.0.1:{port} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        ProxyProc { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A fresh connection to the proxy with read/write timeouts.
    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the proxy");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream
    }
}

/// Appends bytes `offset..offset + len` of the upstream's [`pattern`] to `out` (fast enough in
/// debug builds for 64 MiB).
pub fn pattern_into(out: &mut Vec<u8>, offset: usize, len: usize) {
    let base: Vec<u8> = (0..=250u8).collect();
    let (mut i, end) = (offset, offset + len);
    while i < end {
        let start = i % 251;
        let take = (251 - start).min(end - i);
        out.extend_from_slice(&base[start..start + take]);
        i += take;
    }
}

/// An upload of exactly `total` bytes: the pattern with `"TOKEN"` inserted in the middle (`a`)
/// and `tail` bytes before the end (`b`). `n` is the number of pattern bytes. The quotes
/// delimit the token: the pattern has runs of base64 characters that would otherwise run on
/// from the token's last character and make it a different (invalid) token.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub n: usize,
    pub a: usize,
    pub b: usize,
}

impl Layout {
    pub fn new(total: usize, token_len: usize, tail: usize) -> Self {
        let n = total - 2 * (token_len + 2);
        Layout {
            n,
            a: n / 2 + 3,
            b: n - tail,
        }
    }

    /// The body with `insert` at both places: the token (what the client sends) or the value
    /// (what the upstream must receive).
    pub fn body(&self, insert: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.n + 2 * (insert.len() + 2));
        let quoted = [&b"\""[..], insert, b"\""].concat();
        pattern_into(&mut out, 0, self.a);
        out.extend_from_slice(&quoted);
        pattern_into(&mut out, self.a, self.b - self.a);
        out.extend_from_slice(&quoted);
        pattern_into(&mut out, self.b, self.n - self.b);
        out
    }
}

impl Fx {
    /// Waits until at least `n` audit lines satisfy `pred`; returns them all.
    pub fn wait_audit_count(
        &self,
        what: &str,
        n: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let mut hits = Vec::new();
        let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(WAIT, what, || {
                hits = self.audit_lines().into_iter().filter(|l| pred(l)).collect();
                hits.len() >= n
            })
        }));
        if waited.is_err() {
            panic!(
                "expected {n} audit lines for {what}, found {}; the log has:\n{:#?}",
                hits.len(),
                self.audit_lines()
            );
        }
        hits
    }
}

/// SHA-256 of `data` by `sha256sum` (coreutils): the `sha2` crate is unoptimized in test
/// builds and takes seconds for 64 MiB.
pub fn fast_sha256(data: &[u8]) -> [u8; 32] {
    let out = run_with_stdin(Command::new("sha256sum").arg("-b"), data, RUN_TIMEOUT);
    let text = stdout_str(succeeded(&out));
    let hex = text.split_whitespace().next().unwrap_or_default();
    assert_eq!(hex.len(), 64, "sha256sum printed {text:?}");
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex digest");
    }
    digest
}

/// Whatever a test did, the audit log must never hold the secret value (DESIGN §1.4: secrets
/// appear only as fingerprints).
impl Drop for Fx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let log = std::fs::read(&self.audit).unwrap_or_default();
        assert!(
            free_of(&log, SECRET.as_bytes()),
            "the audit log holds the secret value:\n{}",
            String::from_utf8_lossy(&log)
        );
    }
}
