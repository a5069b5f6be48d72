//! Support for the Tier 1 end-to-end tests (`tests/tier1*.rs`): `netcage run --tier netns`
//! run twice per test, as root (the privileged path) and as an unprivileged uid through
//! `setpriv` (the rootless path, user namespaces), against a recording HTTPS upstream on
//! 127.0.0.1 and listeners the test starts on the host.
//!
//! Nothing here sends traffic anywhere but loopback and this machine's own addresses.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// Upper bound for one `netcage run` (and the client it wraps).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(40);
/// Upper bound for waiting on asynchronous effects (audit lines, recorded requests).
pub const WAIT: Duration = Duration::from_secs(10);

/// The host the test tokens are bound to.
pub const BOUND: &str = "api.github.com";
/// A host the test tokens are not bound to.
pub const OTHER: &str = "other.example";
/// A real-looking secret value that must only ever appear upstream at [`BOUND`].
pub const SECRET: &str = "ghp_Tier1RealSecretValue0451";

/// The uid (and gid) of the rootless runs. It has no passwd entry; that does not matter.
pub const UID: u32 = 4242;

/// Which of netcage's two Tier 1 paths a run takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// netcage runs as root: CAP_NET_ADMIN, no user namespace.
    Root,
    /// netcage runs as [`UID`] via `setpriv`: a user namespace.
    Rootless,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Root => "root",
            Mode::Rootless => "rootless",
        }
    }
}

/// Why Tier 1 cannot be tested here, if it cannot.
fn missing_privilege() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "not root: the privileged path needs CAP_NET_ADMIN, and the rootless path is run \
             as another uid through setpriv"
                .into(),
        );
    }
    None
}

/// Why the rootless path cannot be tested here, if it cannot.
fn missing_userns() -> Option<String> {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap_or_default();
    if max.trim() == "0" {
        return Some("user.max_user_namespaces = 0: unprivileged user namespaces are off".into());
    }
    let probe = Command::new("setpriv")
        .args(["--reuid", &UID.to_string(), "--regid", &UID.to_string()])
        .args(["--clear-groups", "unshare", "--user", "--net", "true"])
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "uid {UID} cannot create a user + network namespace: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run setpriv: {e}")),
    }
}

/// Runs `f` once as root and once rootless. Skips (printing why) only when the privilege to
/// take that path is absent on this machine.
pub fn for_each_mode(mut f: impl FnMut(Mode)) {
    if let Some(why) = missing_privilege() {
        eprintln!("SKIPPED: Tier 1 tests need root here: {why}");
        return;
    }
    for mode in [Mode::Root, Mode::Rootless] {
        if mode == Mode::Rootless
            && let Some(why) = missing_userns()
        {
            eprintln!("SKIPPED the rootless run: {why}");
            continue;
        }
        eprintln!("=== {} ===", mode.name());
        f(mode);
    }
}

/// Makes `path` and everything under it owned by [`UID`].
pub fn chown_tree(path: &Path) {
    std::os::unix::fs::lchown(path, Some(UID), Some(UID))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path());
        }
    }
}

/// The netcage binary for [`UID`]: the build's own when others may reach it, else a copy.
fn rootless_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let built = netcage_bin();
        if usable_by_others(&built) {
            return built;
        }
        let dir = std::env::temp_dir().join(format!("netcage-tier1-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.join("netcage");
        std::fs::copy(&built, &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_usable_by_others(&copy);
        copy
    })
    .clone()
}

fn usable_by_others(path: &Path) -> bool {
    let x = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0);
    x(path)
        && path
            .ancestors()
            .skip(1)
            .filter(|d| !d.as_os_str().is_empty())
            .all(x)
}

/// Panics unless `path` and every directory above it may be used by other users: the
/// rootless run executes netcage as [`UID`].
fn assert_usable_by_others(path: &Path) {
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert!(
        mode & 0o001 != 0,
        "{} is not executable by others (mode {mode:o}); the rootless runs start it as uid {UID}",
        path.display()
    );
    for dir in path.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            continue;
        }
        let mode = std::fs::metadata(dir).unwrap().permissions().mode();
        assert!(
            mode & 0o001 != 0,
            "{} is not searchable by others (mode {mode:o}); uid {UID} cannot reach the netcage \
             binary below it",
            dir.display()
        );
    }
}

/// One test's world: a data dir with a key, a recording upstream for [`BOUND`] and [`OTHER`]
/// (both pinned to 127.0.0.1 with `--resolve`), its CA, and an audit log outside the data dir.
pub struct Fx {
    pub mode: Mode,
    pub env: TestEnv,
    pub ca: TestCa,
    /// The upstream's CA (PEM, mode 0644), for `--upstream-ca`.
    pub ca_path: PathBuf,
    pub up: Upstream,
    pub audit: PathBuf,
}

impl Fx {
    pub fn new(mode: Mode) -> Self {
        let ca = TestCa::new();
        let env = TestEnv::new();
        let ca_path = ca.write_pem(env.root());
        std::fs::set_permissions(&ca_path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let up = Upstream::start(&ca, &[BOUND, OTHER, "127.0.0.1"]);
        let audit = env.path("audit.jsonl");
        if mode == Mode::Rootless {
            // The unprivileged user owns its scratch root and data dir, as a real user would.
            chown_tree(env.root());
        }
        Fx {
            mode,
            env,
            ca,
            ca_path,
            up,
            audit,
        }
    }

    /// Writes `text` to `root/name` (mode 0644) and returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.env.path(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        if self.mode == Mode::Rootless {
            chown_tree(&path);
        }
        path
    }

    /// A token for [`SECRET`] bound to [`BOUND`], sealed with the data dir's key.
    pub fn token(&self) -> String {
        self.env.seal(SECRET, &[BOUND])
    }

    /// `https://HOST:PORT/PATH` on the upstream.
    pub fn url(&self, host: &str, path: &str) -> String {
        self.up.url(host, path)
    }

    /// `netcage` as this mode runs it: directly, or through `setpriv` as [`UID`]. The client
    /// environment does not depend on this machine; the working directory is the scratch root.
    pub fn netcage(&self) -> Command {
        self.as_user(&self.bin())
    }

    /// The netcage binary this mode can execute: the build's own, or for the rootless user a
    /// copy in a directory everyone may enter when the build sits below one they may not
    /// (e.g. a checkout under /root).
    pub fn bin(&self) -> PathBuf {
        match self.mode {
            Mode::Root => netcage_bin(),
            Mode::Rootless => rootless_bin(),
        }
    }

    /// `program` run as this mode's user (root, or [`UID`] through `setpriv`), with the same
    /// environment and working directory as [`Fx::netcage`].
    pub fn as_user(&self, program: &Path) -> Command {
        let mut cmd = match self.mode {
            Mode::Root => Command::new(program),
            Mode::Rootless => {
                let mut cmd = Command::new("setpriv");
                cmd.args(["--reuid", &UID.to_string(), "--regid", &UID.to_string()])
                    .arg("--clear-groups")
                    .arg(program);
                cmd
            }
        };
        isolate_client_env(&mut cmd, self.env.root());
        cmd.current_dir(self.env.root());
        cmd
    }

    /// Like [`Fx::run_cmd`], but netcage is exec'd by a shell that first exports its own pid
    /// (which exec keeps) as `NETCAGE_PID`: the child learns netcage's host pid that way,
    /// since its own pid namespace cannot show it.
    pub fn run_cmd_exposing_pid(&self, opts: &[&str], child: &[&str]) -> Command {
        let mut cmd = self.as_user(Path::new("/bin/sh"));
        cmd.args([
            "-c",
            "NETCAGE_PID=$$; export NETCAGE_PID; exec \"$0\" \"$@\"",
        ])
        .arg(self.bin());
        self.run_args(&mut cmd, opts, child);
        cmd
    }

    /// `netcage run --tier netns` with the data dir, upstream CA, pins and audit log.
    pub fn run_cmd(&self, opts: &[&str], child: &[&str]) -> Command {
        let mut cmd = self.netcage();
        self.run_args(&mut cmd, opts, child);
        cmd
    }

    /// Appends `run --tier netns <common> <opts> -- <child>` to `cmd`.
    pub fn run_args(&self, cmd: &mut Command, opts: &[&str], child: &[&str]) {
        self.run_args_in("netns", cmd, opts, child);
    }

    /// Appends `run --tier TIER <common> <opts> -- <child>` to `cmd` (`env`: Tier 0 with the
    /// same world, for tests that compare the tiers).
    pub fn run_args_in(&self, tier: &str, cmd: &mut Command, opts: &[&str], child: &[&str]) {
        cmd.args(["run", "--tier", tier, "--data-dir"])
            .arg(self.env.data_dir())
            .arg("--upstream-ca")
            .arg(&self.ca_path)
            .args(["--resolve", &format!("{BOUND}=127.0.0.1")])
            .args(["--resolve", &format!("{OTHER}=127.0.0.1")])
            .arg("--audit")
            .arg(&self.audit)
            .args(opts)
            .arg("--")
            .args(child);
    }

    /// Runs [`Fx::run_cmd`] to completion (bounded by [`RUN_TIMEOUT`]).
    pub fn run(&self, opts: &[&str], child: &[&str]) -> Output {
        run_with_timeout(&mut self.run_cmd(opts, child), RUN_TIMEOUT)
    }

    /// `sh -c SCRIPT sh ARGS…` in the sandbox.
    pub fn sh(&self, opts: &[&str], script: &str, args: &[&str]) -> Output {
        let mut child = vec!["sh", "-c", script, "sh"];
        child.extend_from_slice(args);
        self.run(opts, &child)
    }

    /// `python3 -c SCRIPT ARGS…` in the sandbox. In rootless runs the packages of the test
    /// machine's python (which may live under root's home) are copied where [`UID`] can read
    /// them.
    pub fn python(&self, opts: &[&str], script: &str, args: &[&str]) -> Output {
        let mut child = vec!["python3", "-c", script];
        child.extend_from_slice(args);
        let mut cmd = self.run_cmd(opts, &child);
        if self.mode == Mode::Rootless {
            cmd.env("PYTHONPATH", self.python_packages());
        }
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("ModuleNotFoundError"),
            "python3 lacks a module these tests need (pip install requests):\n{stderr}"
        );
        out
    }

    /// A copy of `requests` and its dependencies under the scratch root.
    fn python_packages(&self) -> PathBuf {
        self.python_modules(
            "pylib",
            &[
                "requests",
                "urllib3",
                "idna",
                "charset_normalizer",
                "certifi",
            ],
        )
    }

    /// The python packages `modules` copied into `name` under the scratch root, where
    /// [`UID`] can read them (the machine's may live under root's home); made once.
    pub fn python_modules(&self, name: &str, modules: &[&str]) -> PathBuf {
        let dir = self.env.path(name);
        if dir.exists() {
            return dir;
        }
        std::fs::create_dir(&dir).unwrap();
        let script = format!(
            "import importlib, os\nfor m in {modules:?}:\n    f = importlib.import_module(m).__file__\n    print(os.path.dirname(f) if f.endswith('__init__.py') else f)"
        );
        let out = Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python3 lacks one of {modules:?} (pip install it): {}",
            describe(&out)
        );
        for path in String::from_utf8_lossy(&out.stdout).lines() {
            let status = Command::new("cp")
                .args(["-r", path])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "cp -r {path}");
        }
        chown_tree(&dir);
        dir
    }

    /// Every audit line written so far, parsed.
    pub fn audit_lines(&self) -> Vec<Value> {
        read_audit(&self.audit)
    }

    /// Waits until an audit line satisfies `pred`; returns it.
    pub fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        wait_audit(&self.audit, self.mode, WAIT, what, pred)
    }

    /// Recorded requests that carry the real value anywhere.
    pub fn requests_with_secret(&self) -> Vec<Recorded> {
        self.up
            .requests()
            .into_iter()
            .filter(|r| r.contains(SECRET.as_bytes()))
            .collect()
    }
}

/// Every line of a JSONL audit file, parsed (a line that is not JSON fails the test).
/// Waits (up to `wait`) until a line of the audit log at `path` satisfies `pred`; returns
/// it, or fails naming `what` and showing the log.
pub fn wait_audit(
    path: &Path,
    mode: Mode,
    wait: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let lines = read_audit(path);
        if let Some(hit) = lines.iter().find(|l| pred(l)) {
            return hit.clone();
        }
        assert!(
            Instant::now() < deadline,
            "[{}] no audit line for {what} within {wait:?}; the log has:\n{}",
            mode.name(),
            lines
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

pub fn read_audit(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// The forms a 32-byte key could be printed in: raw, hex (both cases), base64.
pub fn key_forms(key: &[u8; 32]) -> Vec<Vec<u8>> {
    use base64::Engine;
    vec![
        key.to_vec(),
        hex(key).into_bytes(),
        hex(key).to_uppercase().into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(key)
            .into_bytes(),
    ]
}

/// Panics if `haystack` holds the real value or the key in any form.
pub fn assert_no_secret_material(haystack: &[u8], key: &[u8; 32], what: &str) {
    assert!(
        free_of(haystack, SECRET.as_bytes()),
        "{what} holds the real secret value:\n{}",
        String::from_utf8_lossy(haystack)
    );
    for form in key_forms(key) {
        assert!(
            free_of(haystack, &form),
            "{what} holds the vault key:\n{}",
            String::from_utf8_lossy(haystack)
        );
    }
}

/// This machine's global addresses (`ip -o addr show scope global`), for attempts that must
/// target the machine itself and nothing beyond it.
pub fn machine_addrs(v6: bool) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            if v6 { "-6" } else { "-4" },
            "-o",
            "addr",
            "show",
            "scope",
            "global",
        ])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("tentative") && !l.contains("dadfailed"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            Some(words.next()?.split('/').next()?.to_owned())
        })
        .collect()
}

/// The first global IPv4 address of this machine.
pub fn machine_v4() -> Option<String> {
    machine_addrs(false).into_iter().next()
}

/// The first global IPv6 address of this machine.
pub fn machine_v6() -> Option<String> {
    machine_addrs(true).into_iter().next()
}

/// The pids of every process on the host (the host's /proc).
pub fn host_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .collect()
}

/// `(ppid, starttime, state)` of a process, from /proc/PID/stat (`None` once it is gone; a
/// zombie is still there).
pub fn proc_stat(pid: u32) -> Option<(u32, u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start, state))
}

/// The processes below `pid` (children, grandchildren, ...), read off the host's /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parent_of: Vec<(u32, u32)> = host_pids()
        .into_iter()
        .filter_map(|p| Some((p, proc_stat(p)?.0)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// `(pid, cmdline)` of every process on the host whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for pid in host_pids() {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(marker) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Names of the host's named network namespaces.
pub fn named_netns() -> BTreeSet<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The host's mount table lines whose mount point is `dir`.
pub fn mounts_on(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_string_lossy();
    table
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(&*dir))
        .map(str::to_owned)
        .collect()
}

/// Counts escape attempts, proven to have failed, across a test binary.
pub static ESCAPES: AtomicUsize = AtomicUsize::new(0);
static FINISHED: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicUsize = AtomicUsize::new(0);

/// One test's tally of escape attempts. The last tally of the binary to be finished (or
/// dropped by a failing test) prints the binary's total.
pub struct Tally {
    test: &'static str,
    count: usize,
    total_tests: usize,
    finished: bool,
}

impl Tally {
    /// `total_tests`: how many tests of this binary keep a tally.
    pub fn new(test: &'static str, total_tests: usize) -> Self {
        Tally {
            test,
            count: 0,
            total_tests,
            finished: false,
        }
    }

    /// Records one attempt whose failure has just been proven.
    pub fn blocked(&mut self, mode: Mode, what: &str) {
        self.count += 1;
        ESCAPES.fetch_add(1, Ordering::SeqCst);
        eprintln!("  blocked [{}] {what}", mode.name());
    }

    /// The test passed: every attempt it made failed.
    pub fn finish(mut self) {
        self.finished = true;
        println!("{}: {} escape attempts, all failed", self.test, self.count);
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        if !self.finished {
            FAILED.fetch_add(1, Ordering::SeqCst);
            println!(
                "{}: FAILED after {} escape attempts proven to fail",
                self.test, self.count
            );
        }
        let done = FINISHED.fetch_add(1, Ordering::SeqCst) + 1;
        if done == self.total_tests {
            let total = ESCAPES.load(Ordering::SeqCst);
            let failed = FAILED.load(Ordering::SeqCst);
            let line = if failed == 0 {
                format!("ESCAPE SUITE: {total} escape attempts, all proven to fail")
            } else {
                format!(
                    "ESCAPE SUITE: {total} escape attempts proven to fail; {failed} test(s) found \
                     a way out or failed"
                )
            };
            // Straight to the process's stderr, past the test harness's output capture, so the
            // count shows in every run.
            let _ = writeln!(std::io::stderr(), "\n{line}");
        }
    }
}

/// A raw TCP listener on the host that records every connection and byte it gets.
pub struct TcpSink {
    pub addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpSink {
    /// Binds `addr` (port 0 for any); `None` if that is impossible here.
    pub fn bind(addr: &str) -> Option<TcpSink> {
        let listener = TcpListener::bind(addr).ok()?;
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, b, s) = (conns.clone(), bytes.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        c.fetch_add(1, Ordering::SeqCst);
                        let b = b.clone();
                        thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                            let mut buf = [0u8; 4096];
                            while let Ok(n @ 1..) = stream.read(&mut buf) {
                                b.lock().unwrap().extend_from_slice(&buf[..n]);
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Some(TcpSink {
            addr,
            conns,
            bytes,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn connections(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    /// What reached this listener, if anything.
    pub fn touched(&self) -> Option<String> {
        let (conns, bytes) = (self.connections(), self.bytes());
        (conns != 0 || !bytes.is_empty()).then(|| {
            format!(
                "the host listener on {} got {conns} connection(s) and these bytes: {:?}",
                self.addr,
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// Panics if anything reached this listener.
    pub fn assert_untouched(&self, what: &str) {
        let (conns, bytes) = (self.connections(), self.bytes());
        assert!(
            conns == 0 && bytes.is_empty(),
            "ESCAPED — {what}: the host listener on {} got {conns} connection(s) and these \
             bytes:\n{}",
            self.addr,
            String::from_utf8_lossy(&bytes)
        );
    }
}

impl Drop for TcpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where a datagram came from, and its bytes.
type Datagram = (SocketAddr, Vec<u8>);

/// A UDP socket on the host that records every datagram it gets.
pub struct UdpSink {
    pub addr: SocketAddr,
    datagrams: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpSink {
    /// Binds `addr` (port 0 for any); `None` if that is impossible here (e.g. port in use).
    pub fn bind(addr: &str) -> Option<UdpSink> {
        let socket = UdpSocket::bind(addr).ok()?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (datagrams.clone(), stop.clone());
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while !s.load(Ordering::SeqCst) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    d.lock().unwrap().push((from, buf[..n].to_vec()));
                }
            }
        });
        Some(UdpSink {
            addr,
            datagrams,
            stop,
            thread: Some(thread),
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Panics if any datagram reached this socket.
    pub fn assert_untouched(&self, what: &str) {
        let got = self.datagrams.lock().unwrap().clone();
        assert!(
            got.is_empty(),
            "{what}: the host UDP socket on {} received {got:?}",
            self.addr
        );
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Gives asynchronous stragglers (a datagram in flight, a connection being accepted) time to
/// show up at a host listener before it is checked.
pub fn settle() {
    thread::sleep(Duration::from_millis(300));
}

/// Names other than `localhost` that this machine's `/etc/hosts` maps to a loopback address
/// (often the machine's own host name): the proxy, which resolves names on the host, would
/// connect to the host's loopback for them.
pub fn loopback_names() -> Vec<String> {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mut names = Vec::new();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<std::net::IpAddr>) else {
            continue;
        };
        if !ip.is_loopback() {
            continue;
        }
        for name in words {
            let lower = name.to_ascii_lowercase();
            if lower != "localhost" && !lower.ends_with(".localhost") && !names.contains(&lower) {
                names.push(lower);
            }
        }
    }
    names
}

/// Runs `cmd` (netcage, or a shell around it) under a pseudo-terminal made here, which
/// becomes its controlling terminal like an interactive shell's (bounded by [`RUN_TIMEOUT`]);
/// its stdout is what the terminal showed.
pub fn under_pty(cmd: &Command) -> Output {
    const PTY: &str = "import os, pty, sys\n\
                       pid, master = pty.fork()\n\
                       if pid == 0:\n\
                       \x20   os.execvp(sys.argv[1], sys.argv[1:])\n\
                       out = b''\n\
                       while True:\n\
                       \x20   try:\n\
                       \x20       data = os.read(master, 4096)\n\
                       \x20   except OSError:\n\
                       \x20       break\n\
                       \x20   if not data:\n\
                       \x20       break\n\
                       \x20   out += data\n\
                       os.waitpid(pid, 0)\n\
                       sys.stdout.write(out.decode(errors='replace'))\n";
    let mut wrapper = Command::new("python3");
    wrapper
        .arg("-c")
        .arg(PTY)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapper.env(k, v),
            None => wrapper.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapper.current_dir(dir);
    }
    run_with_timeout(&mut wrapper, RUN_TIMEOUT)
}
