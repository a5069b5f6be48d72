//! `netcage k8s-check` on the shipped manifests (deploy/k8s/): they pass, and the ways round
//! the pod's boundary are caught, one line each, with a non-zero exit.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn manifest(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/k8s")
        .join(name)
}

fn check_text(text: &str) -> std::process::Output {
    run_with_stdin(
        Command::new(netcage_bin()).args(["k8s-check", "-"]),
        text.as_bytes(),
        Duration::from_secs(20),
    )
}

#[test]
fn the_shipped_manifests_pass() {
    let out = run_with_timeout(
        Command::new(netcage_bin())
            .arg("k8s-check")
            .arg(manifest("pod.yaml"))
            .arg(manifest("deployment.yaml"))
            .arg(manifest("secret.example.yaml")),
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 pod(s) checked"));
}

#[test]
fn an_app_running_as_the_proxy_uid_is_caught() {
    for file in ["pod.yaml", "deployment.yaml"] {
        let text = std::fs::read_to_string(manifest(file)).unwrap();
        assert_eq!(text.matches("runAsUser: 1000").count(), 1);
        let out = check_text(&text.replace("runAsUser: 1000", "runAsUser: 1337"));
        assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        assert!(
            stdout.contains("container \"app\": runs as uid 1337, the proxy's"),
            "{stdout}"
        );
    }
}

#[test]
fn capabilities_host_network_and_the_secret_are_caught() {
    let text = std::fs::read_to_string(manifest("pod.yaml")).unwrap();
    let app_caps = "        capabilities:\n          drop: [\"ALL\"]\n      volumeMounts:\n        - name: netcage-shared\n          mountPath: /var/run/netcage/shared\n          readOnly: true";
    assert_eq!(text.matches(app_caps).count(), 1);
    let bad = text
        .replace(
            app_caps,
            "        capabilities:\n          add: [\"NET_RAW\", \"NET_ADMIN\"]\n      volumeMounts:\n        - name: netcage-key\n          mountPath: /key",
        )
        .replace("  securityContext:\n    # The Secret", "  hostNetwork: true\n  shareProcessNamespace: true\n  securityContext:\n    # The Secret");
    let out = check_text(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "hostNetwork: true",
        "shareProcessNamespace: true",
        "does not drop ALL capabilities",
        "adds capability NET_RAW",
        "adds capability NET_ADMIN",
        "mounts volume \"netcage-key\" of Secret \"netcage-key\"",
    ] {
        assert_eq!(
            stdout.lines().filter(|l| l.contains(needle)).count(),
            1,
            "{needle}:\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().count(), 6, "{stdout}");
}

#[test]
fn a_file_that_is_not_yaml_is_one_line_and_exit_2() {
    let out = check_text("spec: [unclosed\n");
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}
