//! Tier 1 end to end: real clients run under `netcage run --tier netns`, once as root and once
//! rootless (as uid 4242 through `setpriv`, in a user namespace), against a recording HTTPS
//! upstream on the host's 127.0.0.1. The sandbox has no proxy variables: every client,
//! including ones that ignore proxy settings, is intercepted by the namespace's rules.
//! Also the run's lifecycle: exit status, signal forwarding, and a SIGKILLed netcage leaving
//! nothing behind.

mod common;
mod tier1_support;

use std::time::{Duration, Instant};

use common::*;
use hyper::Version;
use serde_json::{Value, json};
use tier1_support::*;

#[test]
fn curl_h1_and_h2_with_and_without_noproxy_get_the_value_substituted() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // No proxy variables exist in Tier 1; --noproxy '*' makes curl ignore them anyway.
        let script = r#"curl -sS --max-time 20 --http1.1 -H "Authorization: Bearer $T1_TOKEN" "$1" \
            && echo && curl -sS --max-time 20 --http2 --noproxy '*' \
                -H "Authorization: Bearer $T1_TOKEN" "$2""#;
        let url1 = fx.url(BOUND, "/h1?via=curl");
        let url2 = fx.url(BOUND, "/h2?via=curl-noproxy");
        let mut cmd = fx.run_cmd(
            &["--seal", "T1_TOKEN=api.github.com"],
            &["sh", "-c", script, "sh", &url1, &url2],
        );
        cmd.env("T1_TOKEN", SECRET);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(succeeded(&out));
        let echoes: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(echoes.len(), 2, "{text}");
        assert_eq!(echoes[0]["version"], "HTTP/1.1", "{text}");
        assert_eq!(echoes[1]["version"], "HTTP/2.0", "{text}");
        // The child sent its token and sees its token in the echo, never the value.
        for echo in &echoes {
            let auth = echo["headers"]["authorization"].as_str().unwrap();
            assert!(auth.starts_with("Bearer starpod:v1:"), "{text}");
        }
        assert!(free_of(&out.stdout, SECRET.as_bytes()), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = match mode {
            Mode::Root => "Tier 1 (netns, root)",
            Mode::Rootless => "Tier 1 (netns, rootless",
        };
        assert!(stderr.contains(expected), "{stderr}");

        let requests = fx.up.wait_for_requests(2, WAIT);
        let h1 = requests.iter().find(|r| r.path() == "/h1").expect("/h1");
        let h2 = requests.iter().find(|r| r.path() == "/h2").expect("/h2");
        assert_eq!(h1.version, Version::HTTP_11, "{h1:#?}");
        assert_eq!(h2.version, Version::HTTP_2, "{h2:#?}");
        for rec in [h1, h2] {
            assert_eq!(
                rec.header_str("authorization"),
                Some(format!("Bearer {SECRET}")),
                "{rec:#?}"
            );
            assert_eq!(rec.sni.as_deref(), Some(BOUND));
            assert!(!rec.contains(b"starpod:"), "{rec:#?}");
        }
        let line = fx.wait_audit("the substitution on /h2", |l| {
            field(l, "path") == "/h2" && field(l, "decision") == "allow"
        });
        assert_eq!(line["tokens"][0]["action"], "substitute", "{line}");
        assert_eq!(line["sni"], BOUND, "{line}");
        assert!(!line.to_string().contains(SECRET), "{line}");
    });
}

#[test]
fn node_https_ignores_proxies_and_is_intercepted_anyway() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let script = format!(
            "require('https').get({{host:'{BOUND}',port:{},path:'/node',\
             headers:{{authorization:'Bearer '+process.env.TOK}}}}, r => {{\
               let b=''; r.on('data', d => b += d);\
               r.on('end', () => {{ console.log(JSON.stringify({{status:r.statusCode, body:JSON.parse(b)}})); }});\
             }}).on('error', e => {{ console.error(e); process.exit(3); }});",
            fx.up.port()
        );
        let mut cmd = fx.run_cmd(&["--seal", "TOK=api.github.com"], &["node", "-e", &script]);
        cmd.env("TOK", SECRET);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let result = stdout_json(&out);
        assert_eq!(result["status"], 200, "{result}");
        let auth = result["body"]["headers"]["authorization"].as_str().unwrap();
        assert!(auth.starts_with("Bearer starpod:v1:"), "{result}");
        assert!(free_of(&out.stdout, SECRET.as_bytes()));

        let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
        assert_eq!(rec.path(), "/node");
        assert_eq!(rec.sni.as_deref(), Some(BOUND));
        assert_eq!(
            rec.header_str("authorization"),
            Some(format!("Bearer {SECRET}"))
        );
    });
}

#[test]
fn python_requests_gets_the_value_into_a_json_body() {
    let script = r#"
import json, sys, requests
url, token = sys.argv[1], sys.argv[2]
r = requests.post(url, json={"token": token, "n": [1, 2]}, headers={"X-Api-Key": token}, timeout=20)
echo = r.json()
print(json.dumps({"status": r.status_code, "body": json.loads(echo["body"]),
                  "key": echo["headers"]["x-api-key"]}))
"#;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let token = fx.token();
        let out = fx.python(&[], script, &[&fx.url(BOUND, "/json"), &token]);
        let result = stdout_json(&out);
        assert_eq!(
            result,
            json!({"status": 200, "body": {"token": token, "n": [1, 2]}, "key": token})
        );
        assert!(free_of(&out.stdout, SECRET.as_bytes()));

        let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
        let body: Value = serde_json::from_slice(&rec.body_prefix).unwrap();
        assert_eq!(body, json!({"token": SECRET, "n": [1, 2]}));
        assert_eq!(rec.header_str("x-api-key").as_deref(), Some(SECRET));
        assert_eq!(
            rec.header_str("content-length"),
            Some(rec.body_len.to_string()),
            "Content-Length must match the substituted body"
        );
    });
}

#[test]
fn git_ls_remote_with_the_token_as_basic_password() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        fx.up.set_git_password(SECRET);
        let token = fx.token();
        let url = format!(
            "https://x-access-token:{}@{BOUND}:{}/git",
            pct(&token),
            fx.up.port()
        );
        let out = fx.run(&[], &["git", "-c", "credential.helper=", "ls-remote", &url]);
        let stdout = stdout_str(succeeded(&out));
        assert_eq!(
            stdout.trim(),
            format!("{GIT_HEAD_SHA}\tHEAD"),
            "{}",
            describe(&out)
        );
        assert!(free_of(&out.stdout, SECRET.as_bytes()));
        assert!(free_of(&out.stderr, SECRET.as_bytes()));
        let requests = fx.up.requests();
        let last = requests.last().expect("git made a request");
        assert_eq!(last.target, "/git/info/refs?service=git-upload-pack");
        assert_eq!(
            last.basic_credentials(),
            Some((b"x-access-token".to_vec(), SECRET.as_bytes().to_vec())),
            "{last:#?}"
        );
        assert!(requests.iter().all(|r| !r.contains(b"starpod:")));
    });
}

#[test]
fn a_token_for_another_host_gets_403_and_nothing_goes_upstream() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let token = fx.token();
        let fingerprint = netcage::token::fingerprint(&token);
        let header = format!("Authorization: token {token}");
        let out = fx.run(
            &[],
            &[
                "curl",
                "-sS",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "-H",
                &header,
                &fx.url(OTHER, "/steal"),
            ],
        );
        let text = stdout_str(succeeded(&out));
        let (body, code) = text.rsplit_once('\n').expect("body then status");
        assert_eq!(code, "403", "{text}");
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(body["fingerprint"], fingerprint, "{body}");
        assert_eq!(body["host"], OTHER, "{body}");
        assert_eq!(body["bound_hosts"], json!([BOUND]), "{body}");
        assert!(!text.contains(SECRET));
        let line = fx.wait_audit("the block", |l| {
            field(l, "decision") == "block" && field(l, "host") == OTHER
        });
        assert_eq!(line["tokens"][0]["action"], "block", "{line}");
        assert_eq!(line["status"], 403, "{line}");
        assert!(fx.up.requests().is_empty(), "{:#?}", fx.up.requests());
        assert_eq!(fx.up.connections(), 0, "the proxy connected upstream");
    });
}

#[test]
fn the_child_environment_holds_tokens_not_secrets_or_key_material() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mut cmd = fx.run_cmd(&["--seal", "T1_SECRET=api.github.com"], &["env"]);
        cmd.env("T1_SECRET", SECRET);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(succeeded(&out));
        assert_no_secret_material(&out.stdout, &fx.env.key(), "the child's environment");
        let token = text
            .lines()
            .find_map(|l| l.strip_prefix("T1_SECRET="))
            .unwrap_or_else(|| panic!("no T1_SECRET in the child's env:\n{text}"));
        assert_eq!(
            fx.env.unseal(token),
            Some((SECRET.to_owned(), vec![BOUND.to_owned()]))
        );
        // Tier 1 needs no proxy variables; the CA variables point into the (hidden) data dir,
        // where the sandbox shows only the public CA files.
        for line in text.lines() {
            let name = line.split('=').next().unwrap_or("");
            assert!(
                !name.to_ascii_lowercase().ends_with("_proxy"),
                "proxy variable in Tier 1: {line}"
            );
        }
        let data = std::fs::canonicalize(fx.env.data_dir()).unwrap();
        let bundle = format!("SSL_CERT_FILE={}/proxy-ca-bundle.pem", data.display());
        assert!(text.lines().any(|l| l == bundle), "{bundle}: {text}");
    });
}

#[test]
fn the_exit_status_passes_through() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let out = fx.sh(&[], "exit 7", &[]);
        assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
        let out = fx.sh(&[], "kill -TERM $$", &[]);
        assert_eq!(out.status.code(), Some(128 + 15), "{}", describe(&out));
        let out = fx.run(&[], &["true"]);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    });
}

/// `NETCAGE_TIMING=1`: each step of start-up and shutdown, from netcage and from its holder (a
/// process of its own), on one clock and in the order they depend on each other: the holder
/// (started before the configuration is resolved) gets its spec only after it is, the proxy
/// comes up after the sandbox is built, the command after both. Without the variable, no step
/// is printed.
#[test]
fn timing_steps_come_from_netcage_and_its_holder_in_order() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mut cmd = fx.run_cmd(&[], &["true"]);
        cmd.env("NETCAGE_TIMING", "1");
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let stderr = String::from_utf8_lossy(&succeeded(&out).stderr).into_owned();
        let steps: Vec<(f64, u32, &str)> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("netcage-timing: "))
            .map(|l| {
                let mut part = l.splitn(3, ' ');
                let ms = part.next().and_then(|t| t.parse().ok());
                let pid = part.next().and_then(|p| p.parse().ok());
                match (ms, pid, part.next()) {
                    (Some(ms), Some(pid), Some(step)) => (ms, pid, step),
                    _ => panic!("malformed timing line {l:?}"),
                }
            })
            .collect();
        let at = |step: &str| {
            *steps
                .iter()
                .find(|s| s.2 == step)
                .unwrap_or_else(|| panic!("[{}] no step {step:?}:\n{stderr}", mode.name()))
        };
        let order = [
            "main",
            "resolved",
            "holder: layout received",
            "holder: built",
            "init: ready",
            "proxy up",
            "command spawned",
            "command exited",
            "sandbox shut down",
            "audit flushed",
        ];
        for pair in order.windows(2) {
            assert!(
                at(pair[0]).0 <= at(pair[1]).0,
                "[{}] {:?} came after {:?}:\n{stderr}",
                mode.name(),
                pair[0],
                pair[1]
            );
        }
        // The holder builds the network while netcage resolves the rest: its spec may come
        // before "resolved", its layout after.
        assert!(
            at("holder: spec received").0 <= at("holder: layout received").0,
            "[{}] the holder got its layout before its spec:\n{stderr}",
            mode.name()
        );
        let netcage = at("resolved").1;
        assert_eq!(at("main").1, netcage, "{stderr}");
        assert_eq!(at("audit flushed").1, netcage, "{stderr}");
        assert_ne!(
            at("holder: built").1,
            netcage,
            "the holder is a process of its own"
        );
        let out = fx.run(&[], &["true"]);
        let quiet = String::from_utf8_lossy(&succeeded(&out).stderr).into_owned();
        assert!(!quiet.contains("netcage-timing"), "{quiet}");
    });
}

/// `Cpus_allowed_list` from a /proc/<pid>/status.
fn cpus_allowed(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or_else(|| panic!("no Cpus_allowed_list in {status}"))
        .trim()
        .to_owned()
}

/// netcage starts its forked holder on another CPU than its own, and the holder takes back
/// every CPU before it builds anything: the command may run on all the CPUs netcage may.
#[test]
fn the_command_may_run_on_every_cpu_netcage_may() {
    let ours = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    if !ours.contains(['-', ',']) {
        eprintln!("NOTE: this process may run on one CPU only ({ours}): nothing to take back");
    }
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        for _ in 0..3 {
            let mut cmd = fx.run_cmd(&[], &["cat", "/proc/self/status"]);
            let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
            let theirs = cpus_allowed(&stdout_str(succeeded(&out)));
            assert_eq!(theirs, ours, "[{}] the command's CPUs", mode.name());
        }
    });
}

#[test]
fn sigterm_to_netcage_reaches_the_command() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let ready = fx.env.path("ready");
        let got = fx.env.path("got-term");
        let script = r#"trap 'echo term > "$2"; exit 0' TERM
echo up > "$1"
while :; do sleep 0.05; done"#;
        let mut cmd = fx.run_cmd(
            &[],
            &[
                "sh",
                "-c",
                script,
                "sh",
                ready.to_str().unwrap(),
                got.to_str().unwrap(),
            ],
        );
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut netcage = KillOnDrop::spawn(&mut cmd);
        wait_until(WAIT, "the command to start", || ready.exists());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(netcage.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        wait_until(WAIT, "the command's TERM trap", || got.exists());
        assert_eq!(std::fs::read_to_string(&got).unwrap(), "term\n");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = netcage.0.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "netcage did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "the trap exits 0: {status}");
    });
}

#[test]
fn a_sigkilled_netcage_leaves_nothing_behind() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let netns_before = named_netns();
        let data_dir = std::fs::canonicalize(fx.env.data_dir()).unwrap();
        assert!(mounts_on(&data_dir).is_empty());
        let ready = fx.env.path("ready");
        // A marker no other process has: in the shell's command line and sleep's argument.
        let marker = format!("31.{}{}", std::process::id(), rand::random::<u32>());
        let script = format!("echo up > \"$1\"; sleep {marker}; echo never");
        let mut cmd = fx.run_cmd(&[], &["sh", "-c", &script, "sh", ready.to_str().unwrap()]);
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut netcage = KillOnDrop::spawn(&mut cmd);
        wait_until(WAIT, "the command to start", || ready.exists());
        wait_until(WAIT, "sleep to start", || {
            processes_with(&marker)
                .iter()
                .any(|(_, c)| c.starts_with("sleep "))
        });
        let inside = processes_with(&marker);
        // netcage itself, its holder and init (forks of netcage), sh, sleep.
        assert!(inside.len() >= 3, "{inside:?}");
        let sleep_pid = inside
            .iter()
            .find(|(_, c)| c.starts_with("sleep "))
            .unwrap()
            .0;
        let sandbox_netns = std::fs::read_link(format!("/proc/{sleep_pid}/ns/net")).unwrap();
        let own_netns = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_ne!(
            sandbox_netns, own_netns,
            "the command runs in its own netns"
        );

        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(netcage.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let status = netcage.0.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        wait_until(
            Duration::from_secs(5),
            "every sandbox process to die",
            || processes_with(&marker).is_empty(),
        );
        // The anonymous namespace went with its last process: no process is in it any more.
        wait_until(Duration::from_secs(5), "the sandbox's netns to go", || {
            !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
                std::fs::read_link(e.path().join("ns/net")).ok().as_ref() == Some(&sandbox_netns)
            })
        });
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let ns_name = sandbox_netns.to_string_lossy();
        assert!(
            !mountinfo.contains(&*ns_name),
            "a mount keeps the netns alive"
        );
        assert_eq!(named_netns(), netns_before, "ip netns list changed");
        assert!(
            mounts_on(&data_dir).is_empty(),
            "the data dir's tmpfs leaked into the host: {:?}",
            mounts_on(&data_dir)
        );
        assert!(fx.env.key_path().exists(), "the host still sees the key");
    });
}

#[test]
fn doctor_names_cap_net_admin_and_user_namespaces() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mut cmd = fx.netcage();
        cmd.arg("doctor");
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(succeeded(&out));
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
        let cap_line = text
            .lines()
            .find(|l| l.contains("CAP_NET_ADMIN"))
            .unwrap()
            .to_owned();
        let expected = match mode {
            Mode::Root => "yes",
            Mode::Rootless => "no",
        };
        assert!(cap_line.trim_end().ends_with(expected), "{mode:?}: {text}");
        // The rootless run happens only where user namespaces work.
        let userns = text.lines().find(|l| l.contains("user namespaces"));
        assert!(userns.is_some(), "{text}");
        if mode == Mode::Rootless {
            assert!(userns.unwrap().contains("yes"), "{text}");
        }
        // The rules go to the kernel over netlink: no nft binary to ask for.
        let tier1 = text.lines().find(|l| l.starts_with("Tier 1")).unwrap_or("");
        assert!(tier1.contains("available"), "{text}");
        assert!(!text.contains("nft"), "{text}");
    });
}
