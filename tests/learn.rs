//! `--learn` end to end, in Tier 0 (`--tier env`) and Tier 1 (`--tier netns`, as root and
//! rootless): a job that fetches from a.test and b.test runs once with `--learn FILE`; the same
//! job then passes with `--policy FILE`, and the job plus c.test has c.test blocked, with an
//! audit line naming the policy rule. Also `--learn` without FILE (stderr), `netcage proxy
//! --learn` ended by SIGTERM, and a FILE that cannot be written. Every host is pinned with
//! `--resolve` to a recording HTTPS upstream on 127.0.0.1; assertions are on what it received.

mod common;
mod tier1_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use serde_json::Value;
use tier1_support::{Fx, Mode, RUN_TIMEOUT, WAIT, for_each_mode, read_audit, settle};

const A: &str = "a.test";
const B: &str = "b.test";
const C: &str = "c.test";

/// The job: fetch every URL given, print `<CONNECT status> <HTTP status> <url>` for each, and
/// fail if any fetch failed.
const JOB: &str = r#"status=0
for url in "$@"; do
  curl -sSf --max-time 20 -o /dev/null -w "%{http_connect} %{http_code} $url\n" "$url" || status=1
done
exit $status"#;

/// What `--learn` must write for a job that reached a.test and b.test.
const LEARNED: &str =
    "# Learned by `netcage --learn`: the hosts this run reached. Anything else is blocked.
[egress]
default = \"deny\"
allow = [
    \"a.test\",
    \"b.test\",
]
";

struct Learn {
    fx: Fx,
    /// Serves a.test, b.test and c.test.
    up: Upstream,
    tier: &'static str,
}

impl Learn {
    fn new(mode: Mode, tier: &'static str) -> Self {
        let fx = Fx::new(mode);
        let up = Upstream::start(&fx.ca, &[A, B, C]);
        Learn { fx, up, tier }
    }

    fn url(&self, host: &str) -> String {
        self.up.url(host, &format!("/{host}"))
    }

    /// `netcage run --tier <tier>` with the data dir, upstream CA, pins for a/b/c.test, the audit
    /// log, `opts`, then `child`.
    fn cmd(&self, opts: &[&str], child: &[&str]) -> Command {
        let mut cmd = self.fx.netcage();
        cmd.args(["run", "--tier", self.tier, "--data-dir"])
            .arg(self.fx.env.data_dir())
            .arg("--upstream-ca")
            .arg(&self.fx.ca_path);
        for host in [A, B, C] {
            cmd.args(["--resolve", &format!("{host}=127.0.0.1")]);
        }
        cmd.arg("--audit")
            .arg(&self.fx.audit)
            .args(opts)
            .arg("--")
            .args(child);
        cmd
    }

    /// The job for `hosts` under `netcage run … opts`.
    fn job(&self, opts: &[&str], hosts: &[&str]) -> Output {
        let urls: Vec<String> = hosts.iter().map(|h| self.url(h)).collect();
        let mut child = vec!["sh", "-c", JOB, "sh"];
        child.extend(urls.iter().map(String::as_str));
        run_with_timeout(&mut self.cmd(opts, &child), RUN_TIMEOUT)
    }

    /// Paths the upstream received, sorted; each checked to have come with its own SNI.
    fn received(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .up
            .requests()
            .iter()
            .map(|r| {
                assert_eq!(
                    r.sni.as_deref().map(|s| format!("/{s}")).as_deref(),
                    Some(r.path()),
                    "{r:#?}"
                );
                r.path().to_owned()
            })
            .collect();
        paths.sort();
        paths
    }

    fn audit(&self) -> Vec<Value> {
        read_audit(&self.fx.audit)
    }

    /// The audit line that satisfies `pred`, waiting for it.
    fn wait_audit(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.fx.wait_audit(what, pred)
    }
}

/// The whole story in one tier: learn, enforce, block something new.
fn learn_then_enforce(l: &Learn) {
    let learned = l.fx.env.path("learned.toml");
    let learned_s = learned.to_str().unwrap();

    // 1. Learning run.
    let out = l.job(&["--learn", learned_s], &[A, B]);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "learned policy (2 host(s), 0 tcp entries) written to {learned_s}; use it with --policy {learned_s}"
        )),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read_to_string(&learned).unwrap(), LEARNED);
    let mode = std::fs::metadata(&learned).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644, "mode {mode:o}");
    l.up.wait_for_requests(2, WAIT);
    assert_eq!(l.received(), ["/a.test", "/b.test"]);
    l.up.clear();

    // 2. The same job under the learned policy passes.
    let out = l.job(&["--policy", learned_s], &[A, B]);
    assert!(out.status.success(), "{}", describe(&out));
    l.up.wait_for_requests(2, WAIT);
    assert_eq!(l.received(), ["/a.test", "/b.test"]);
    l.up.clear();

    // 3. Something new is blocked, and the audit line names the rule.
    let out = l.job(&["--policy", learned_s], &[A, B, C]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = stdout_str(&out);
    let c_line = stdout
        .lines()
        .find(|line| line.ends_with(&l.url(C)))
        .unwrap_or_else(|| panic!("no line for c.test: {}", describe(&out)));
    l.up.wait_for_requests(2, WAIT);
    settle();
    assert_eq!(l.received(), ["/a.test", "/b.test"], "c.test got through");
    let (kind, status) = match l.tier {
        // The CONNECT is refused with 403.
        "env" => ("connection", "403 000"),
        // netcage's resolver does not resolve a denied name.
        _ => ("dns", "000 000"),
    };
    assert!(c_line.starts_with(status), "{}", describe(&out));
    let line = l.wait_audit("the refusal of c.test", |line| {
        field(line, "host") == C && field(line, "kind") == kind
    });
    assert_eq!(line["decision"], "block", "{line}");
    let reason = field(&line, "reason");
    assert!(reason.contains("(egress.default deny)"), "{line}");
    assert!(
        !l.audit()
            .iter()
            .any(|line| field(line, "host") == C && field(line, "decision") == "allow"),
        "{:#?}",
        l.audit()
    );

    if l.tier == "netns" {
        // 4. c.test by address (no DNS): the transparent proxy refuses the request itself with
        // 403. 192.0.2.1 is never contacted: the sandbox sends every connection to the proxy,
        // which refuses c.test before connecting anywhere (and would use the pin if it did).
        let port = l.up.port().to_string();
        let resolve = format!("{C}:{port}:192.0.2.1");
        let url = l.url(C);
        let curl = [
            "curl",
            "-sS",
            "--max-time",
            "20",
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ];
        let out = run_with_timeout(&mut l.cmd(&["--policy", learned_s], &curl), RUN_TIMEOUT);
        assert_eq!(stdout_str(&out), "403", "{}", describe(&out));
        let line = l.wait_audit("the 403 for c.test", |line| {
            field(line, "host") == C && field(line, "kind") == "request"
        });
        assert_eq!(line["decision"], "block", "{line}");
        assert_eq!(line["sni"], C, "{line}");
        assert!(
            field(&line, "reason").contains("(egress.default deny)"),
            "{line}"
        );
        settle();
        assert_eq!(l.received(), ["/a.test", "/b.test"], "c.test got through");
    }
}

#[test]
fn tier0_learn_then_enforce() {
    learn_then_enforce(&Learn::new(Mode::Root, "env"));
}

#[test]
fn tier1_learn_then_enforce() {
    for_each_mode(|mode| learn_then_enforce(&Learn::new(mode, "netns")));
}

#[test]
fn without_a_file_the_policy_goes_to_stderr_with_blocked_hosts_as_comments() {
    let l = Learn::new(Mode::Root, "env");
    let out = l.job(&["--deny", C, "--learn"], &[A, C]);
    // The job's own status is kept: c.test was denied, so the job failed.
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let start = stderr
        .find("# netcage --learn: the policy this run needs (1 host(s), 0 tcp entries, 1 blocked host(s) listed as comments); save it as netcage.toml and pass --policy netcage.toml\n")
        .unwrap_or_else(|| panic!("{}", describe(&out)));
    let printed = stderr[start..].split_once('\n').unwrap().1;
    assert_eq!(
        printed,
        "# Learned by `netcage --learn`: the hosts this run reached. Anything else is blocked.
[egress]
default = \"deny\"
allow = [
    \"a.test\",
]
# blocked during learning: c.test (c.test is not allowed by the egress policy (egress.deny c.test))
"
    );
    l.up.wait_for_requests(1, WAIT);
    settle();
    assert_eq!(l.received(), ["/a.test"]);

    // What was printed is a policy that works.
    let policy = l.fx.write("printed.toml", printed);
    let out = l.job(&["--policy", policy.to_str().unwrap()], &[A]);
    assert!(out.status.success(), "{}", describe(&out));
    let out = l.job(&["--policy", policy.to_str().unwrap()], &[B]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    settle();
    assert_eq!(l.received(), ["/a.test", "/a.test"]);
}

#[test]
fn a_learn_file_that_cannot_be_written_fails_the_run_in_one_line() {
    let l = Learn::new(Mode::Root, "env");
    let dir = l.fx.env.path("gone");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("learned.toml");
    // The job removes the directory: the write at the end fails.
    let script = format!("rm -r '{}'", dir.display());
    let out = run_with_timeout(
        &mut l.cmd(&["--learn", file.to_str().unwrap()], &["sh", "-c", &script]),
        RUN_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("--learn")).collect();
    assert_eq!(errors.len(), 1, "{}", describe(&out));
    assert!(
        errors[0].starts_with(&format!(
            "netcage: --learn: cannot write the learned policy to {} (choose another FILE): ",
            file.display()
        )),
        "{}",
        describe(&out)
    );

    // A directory that does not exist is refused before the command runs.
    let marker = l.fx.env.path("ran");
    let script = format!("touch '{}'", marker.display());
    let out = run_with_timeout(
        &mut l.cmd(&["--learn", file.to_str().unwrap()], &["sh", "-c", &script]),
        RUN_TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(!marker.exists(), "the command ran");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist; create it"),
        "{}",
        describe(&out)
    );
}

#[test]
fn the_proxy_writes_what_it_learned_when_terminated() {
    let l = Learn::new(Mode::Root, "env");
    let learned = l.fx.env.path("proxy-learned.toml");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut cmd = l.fx.netcage();
    cmd.args([
        "proxy",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(l.fx.env.data_dir())
    .arg("--upstream-ca")
    .arg(&l.fx.ca_path)
    .args(["--resolve", &format!("{A}=127.0.0.1")])
    .arg("--audit")
    .arg(&l.fx.audit)
    .arg("--learn")
    .arg(&learned)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut proxy = KillOnDrop::spawn(&mut cmd);
    wait_until(WAIT, "the proxy to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let bundle = l.fx.env.data_dir().join("proxy-ca-bundle.pem");
    let out = run_with_timeout(
        Command::new("curl")
            .args(["-sS", "--max-time", "20", "--proxy"])
            .arg(format!("http://127.0.0.1:{port}"))
            .arg("--cacert")
            .arg(&bundle)
            .arg(l.url(A)),
        RUN_TIMEOUT,
    );
    assert!(out.status.success(), "{}", describe(&out));
    l.up.wait_for_requests(1, WAIT);
    assert!(!learned.exists(), "written before the proxy ended");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(proxy.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    wait_until(WAIT, "the proxy to exit", || {
        proxy.0.try_wait().unwrap().is_some()
    });
    let status = proxy.0.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(proxy.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("learned policy (1 host(s), 0 tcp entries) written to"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&learned).unwrap();
    assert!(text.ends_with("allow = [\n    \"a.test\",\n]\n"), "{text}");
    assert!(
        Path::new(&learned).is_file() && !text.contains("b.test"),
        "{text}"
    );
}
