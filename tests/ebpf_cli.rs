//! The eBPF attribution end to end, as root: `netcage proxy` and `netcage run --attribute`
//! name each connection's process (pid, comm, uid) in the audit log, a SIGKILLed netcage
//! leaves nothing loaded or attached, and `doctor` says which method is in use (the /proc
//! scan for a user who is not root). Clients talk only to the test's own upstream on
//! 127.0.0.1 (pinned with `--resolve`).

mod common;
mod tier0;

/// `Fx::run` starts Tier 1: the sockops program sees the sandbox's connects.
const TIER: &str = "netns";

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tier0::*;

/// The tests of this file one at a time: the SIGKILL test tells its netcage's program from
/// the others by their ids, so no other test may load one meanwhile.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("skipped: the eBPF program loads only as root");
    }
    root
}

/// Ids of the programs named netcage_sockops loaded now (any netcage's).
fn sockops_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some("netcage_sockops"))
        .map(|p| p.id())
        .collect()
}

#[test]
fn netcage_proxy_names_the_process_of_each_client() {
    if !root() {
        return;
    }
    let _serial = one_at_a_time();
    let fx = Fx::new();
    let proxy = ProxyProc::start(&fx, &[]);
    // The program loads right after the listener is bound; wait for it.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    let line = loop {
        n += 1;
        let path = format!("/who-{n}");
        let mut cmd = Command::new("curl");
        isolate_client_env(&mut cmd, fx.env.root())
            .args(["-sS", "--max-time", "30", "-x", &proxy.url(), "--cacert"])
            .arg(fx.env.data_dir().join("proxy-ca.pem"))
            .arg(fx.url(BOUND, &path))
            .stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let pid = child.id();
        assert!(child.wait().unwrap().success());
        let line = fx.wait_audit("the request", |l| l["path"] == path.as_str());
        if line.get("pid").is_some() || Instant::now() > deadline {
            break (line, pid);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (line, pid) = line;
    assert_eq!(line["pid"], pid, "{line}");
    assert_eq!(line["comm"], "curl", "{line}");
    assert_eq!(line["uid"], 0, "{line}");
    assert!(
        line.get("exec").is_none(),
        "netcage proxy has no execs: {line}"
    );
}

#[test]
fn run_attribute_names_short_lived_and_daemonized_clients() {
    if !root() {
        return;
    }
    let _serial = one_at_a_time();
    let fx = Fx::new();
    let (a, b) = (fx.url(BOUND, "/short"), fx.url(BOUND, "/daemon"));
    // A curl that exits at once, then one started by a double fork with setsid, whose
    // parents are gone by the time it connects.
    let script = format!(
        "curl -sS -o /dev/null {a} || exit 1\n\
         (setsid sh -c 'sleep 0.2; curl -sS -o /dev/null {b}; echo done > daemon.out' &)\n\
         i=0; while [ ! -s daemon.out ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n\
         test -s daemon.out"
    );
    let out = fx.run(&["--attribute"], &["sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    let lines = read_audit(&fx.audit);
    for path in ["/short", "/daemon"] {
        let line = lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no audit line for {path}: {lines:?}"));
        assert_eq!(line["comm"], "curl", "{line}");
        assert_eq!(line["uid"], 0, "{line}");
        assert!(line["pid"].as_u64().is_some_and(|p| p > 1), "{line}");
        assert!(
            line["exec"].as_str().is_some_and(|e| e.starts_with("run-")),
            "{line}"
        );
    }
    let pids: Vec<&Value> = ["/short", "/daemon"]
        .iter()
        .filter_map(|p| lines.iter().find(|l| l["path"] == *p))
        .map(|l| &l["pid"])
        .collect();
    assert_ne!(pids[0], pids[1], "two processes");
    // Without --attribute, `run` does not load the program: no process in the lines.
    let fx = Fx::new();
    let out = fx.run(
        &[],
        &["curl", "-sS", "-o", "/dev/null", &fx.url(BOUND, "/plain")],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let lines = read_audit(&fx.audit);
    let line = lines.iter().find(|l| l["path"] == "/plain").expect("line");
    assert!(line.get("pid").is_none(), "{line}");
}

#[test]
fn nothing_stays_loaded_or_attached_after_sigkill() {
    if !root() {
        return;
    }
    let _serial = one_at_a_time();
    let before = sockops_ids();
    let fx = Fx::new();
    let proxy = ProxyProc::start(&fx, &[]);
    let mut ours = Vec::new();
    wait_until(WAIT, "netcage proxy to load its sockops program", || {
        ours = sockops_ids()
            .into_iter()
            .filter(|id| !before.contains(id))
            .collect();
        !ours.is_empty()
    });
    let cgroup = netcage::sandbox::bpf::cgroup2_root().expect("cgroup2 is mounted");
    let attached = |id: u32| {
        let out = Command::new("bpftool")
            .args(["-j", "cgroup", "show"])
            .arg(&cgroup)
            .output();
        match out {
            Ok(out) if out.status.success() => {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                Some(
                    v.as_array()
                        .is_some_and(|a| a.iter().any(|p| p["id"] == id)),
                )
            }
            _ => None,
        }
    };
    assert_eq!(ours.len(), 1, "one program for the one netcage: {ours:?}");
    if attached(ours[0]).is_some() {
        wait_until(WAIT, "bpftool to show the program attached", || {
            attached(ours[0]) == Some(true)
        });
    } else {
        eprintln!("bpftool is missing: attachments are judged by the loaded programs only");
    }
    let mut child = proxy.child;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.0.wait();
    wait_until(WAIT, "the killed netcage's program to be unloaded", || {
        let now = sockops_ids();
        !ours.iter().any(|id| now.contains(id))
    });
    if let Some(seen) = attached(ours[0]) {
        assert!(!seen, "still attached to {}", cgroup.display());
    }
}

#[test]
fn doctor_says_which_attribution_is_in_use() {
    let _serial = one_at_a_time();
    let env = TestEnv::new();
    let mut cmd = Command::new(netcage_bin());
    isolate_client_env(&mut cmd, env.root()).arg("doctor");
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = stdout_str(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("process attribution:"))
        .unwrap_or_else(|| panic!("no attribution line:\n{text}"));
    if nix::unistd::geteuid().is_root() {
        assert!(line.contains("eBPF (sockops on"), "{line}");
        // A user who is not root falls back to the /proc scan, and says why.
        let mut cmd = as_uid(Some(4242), &bin_for_others(), env.root());
        cmd.arg("doctor");
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(&out);
        assert!(
            text.contains("process attribution:              /proc scan (the eBPF program is not loaded: loading eBPF needs root"),
            "{text}"
        );
    } else {
        assert!(line.contains("/proc scan"), "{line}");
    }
}
