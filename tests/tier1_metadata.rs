//! Cloud metadata and credential endpoints, end to end in Tier 1 (root and rootless): every
//! form of address a command may try — link-local, the providers' fixed addresses, IPv6 and
//! IPv4-mapped forms, numeric names getaddrinfo turns into 169.254.169.254, a Host header or
//! TLS server name naming another host on a connection made to a metadata address — gets a 403
//! from the proxy and an audit line with decision `block`.
//!
//! So that even a broken proxy could never send a packet to those addresses, the whole test
//! (upstream, netcage, its sandbox) runs in a throwaway network namespace holding only `lo`,
//! checked to have no route anywhere before anything starts.

mod common;
mod tier1_support;

use std::process::Command;

use common::*;
use nix::sched::CloneFlags;
use serde_json::Value;
use tier1_support::*;

/// `label code` per attempt; `$1` is the upstream's port. `control` must reach the upstream.
const SCRIPT: &str = r#"
c() { label=$1; shift; echo "$label $(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$@")"; }
p=$1
c control "https://other.example:$p/control"
c aws http://169.254.169.254/latest/meta-data/
c ecs http://169.254.170.2/v2/credentials/
c eks-pod-identity http://169.254.170.23/v1/credentials
c tencent http://169.254.0.23/
c link-local-port "http://169.254.1.1:$p/"
c alibaba http://100.100.100.200/latest/meta-data/
c oracle http://192.0.0.192/
c v6-link-local 'http://[fe80::1%25lo]/'
c v6-aws 'http://[fd00:ec2::254]/'
c v6-eks 'http://[fd00:ec2::23]/'
c v4-mapped 'http://[::ffff:169.254.170.2]/'
c decimal http://2852039166/
c https-ecs https://169.254.170.2/
c host-ecs -H 'Host: 169.254.170.2' "http://other.example:$p/"
c host-decimal -H 'Host: 2852039166' "http://other.example:$p/"
c host-hex -H 'Host: 0xa9fea9fe' "http://other.example:$p/"
c host-octal -H 'Host: 0251.0376.0251.0376' "http://other.example:$p/"
c host-mapped -H 'Host: [::ffff:a9fe:a9fe]' "http://other.example:$p/"
c host-link-local -H 'Host: [fe80::1]' "http://other.example:$p/"
c host-gcp -H 'Host: metadata.google.internal' "http://other.example:$p/"
c host-gcp-short -H 'Host: metadata' "http://other.example:$p/"
c host-aws-name -H 'Host: instance-data' "http://other.example:$p/"
c host-tencent-name -H 'Host: metadata.tencentyun.com' "http://other.example:$p/"
c other-host-at-metadata -H "Host: other.example:$p" "http://169.254.170.2:$p/"
c other-sni-at-metadata --connect-to "other.example:$p:169.254.169.254:$p" "https://other.example:$p/"
"#;

/// Runs `f` on a thread of its own in a new network namespace that holds only `lo` (up), after
/// checking that nothing there leads anywhere. Threads and processes it starts inherit it.
fn in_a_world_without_routes(f: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        let host_ns = std::fs::read_link("/proc/self/ns/net").unwrap();
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let ours = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        assert_ne!(
            ours, host_ns,
            "the thread is still in the host's network namespace"
        );
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .output()
            .expect("run ip");
        assert!(up.status.success(), "{}", describe(&up));
        let ip =
            |args: &[&str]| stdout_str(succeeded(&Command::new("ip").args(args).output().unwrap()));
        let links = ip(&["-o", "link", "show"]);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains(": lo:"), "{links}");
        for family in ["-4", "-6"] {
            let routes = ip(&[family, "route", "show", "table", "all"]);
            for route in routes.lines() {
                assert!(
                    !route.starts_with("default") && route.contains("dev lo"),
                    "the throwaway namespace has a route out: {route}\n{routes}"
                );
            }
        }
        f();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn every_metadata_endpoint_gets_a_403_and_nothing_is_connected() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "SKIPPED: not root: this test needs CAP_SYS_ADMIN for a throwaway network namespace \
             (so that nothing could reach a real metadata address) and runs Tier 1 inside it"
        );
        return;
    }
    in_a_world_without_routes(|| {
        for_each_mode(|mode| {
            let fx = Fx::new(mode);
            let port = fx.up.port().to_string();
            let out = fx.sh(&[], SCRIPT, &[&port]);
            assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
            let text = stdout_str(&out);
            let results: Vec<(&str, &str)> =
                text.lines().filter_map(|l| l.split_once(' ')).collect();
            let attempts = SCRIPT.lines().filter(|l| l.starts_with("c ")).count();
            assert_eq!(results.len(), attempts, "{}", describe(&out));
            for (label, code) in &results {
                let want = if *label == "control" { "200" } else { "403" };
                assert_eq!(*code, want, "[{}] {label}: {}", mode.name(), describe(&out));
            }
            // Only the control request reached the upstream.
            let reached: Vec<String> = fx
                .up
                .requests()
                .iter()
                .map(|r| r.path().to_owned())
                .collect();
            assert_eq!(reached, ["/control"], "[{}]", mode.name());
            // One refusal line per attempt, each a policy block; nothing tried and failed.
            let lines = fx.wait_audit("the last refusal", |l| {
                field(l, "kind") == "request"
                    && field(l, "sni") == "other.example"
                    && l["status"] == 403
            });
            assert_eq!(lines["decision"], "block", "{lines}");
            let all = fx.audit_lines();
            let refused: Vec<&Value> = all
                .iter()
                .filter(|l| field(l, "kind") == "request" && l["status"] == 403)
                .collect();
            assert_eq!(refused.len(), attempts - 1, "{all:#?}");
            assert!(
                refused.iter().all(|l| field(l, "decision") == "block"
                    && (field(l, "reason").contains("metadata"))),
                "{refused:#?}"
            );
            assert!(
                all.iter().all(|l| field(l, "decision") != "error"),
                "something tried to connect: {all:#?}"
            );
        });
    });
}
