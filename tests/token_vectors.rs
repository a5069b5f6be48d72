//! Every case in ../shared/testdata/token_vectors.json, through the library and the CLI.

use std::path::PathBuf;
use std::process::Command;

use netcage::{hosts, token};
use serde_json::Value;

fn vectors() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/token_vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (shared/ must sit beside the repo)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn key(v: &Value) -> token::Key {
    token::Key::parse(v["key_hex"].as_str().unwrap().as_bytes()).unwrap()
}

fn hosts_of(case: &Value) -> Vec<String> {
    case["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn library_agrees_with_every_vector() {
    let v = vectors();
    let key = key(&v);
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 26);
    let (mut valid, mut invalid) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let tok = case["token"].as_str().unwrap();
        match token::open(&key, tok) {
            Ok(secret) => {
                assert!(
                    case["valid"].as_bool().unwrap(),
                    "{name}: opened an invalid token"
                );
                assert_eq!(
                    secret.value.as_str(),
                    case["value"].as_str().unwrap(),
                    "{name}"
                );
                assert_eq!(secret.hosts, hosts_of(case), "{name}");
                for (host, expect) in case["checks"].as_object().unwrap() {
                    assert_eq!(
                        hosts::allowed(&secret.hosts, host),
                        expect.as_bool().unwrap(),
                        "{name}: host {host}"
                    );
                }
                valid += 1;
            }
            Err(e) => {
                assert!(!case["valid"].as_bool().unwrap(), "{name}: {e}");
                invalid += 1;
            }
        }
    }
    assert!(valid > 0 && invalid > 0);
}

fn netcage(key_file: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netcage"))
        .arg("token")
        .args(args)
        .arg("--key-file")
        .arg(key_file)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn cli_inspect_and_check_agree_with_every_vector() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.hex");
    std::fs::write(&key_file, v["key_hex"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let tok = case["token"].as_str().unwrap();
        let out = netcage(&key_file, &["inspect", "--reveal", tok]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if case["valid"].as_bool().unwrap() {
            assert_eq!(out.status.code(), Some(0), "{name}: {stderr}");
            let json: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json["valid"], true);
            assert_eq!(json["value"], case["value"], "{name}");
            assert_eq!(json["hosts"], case["hosts"], "{name}");
            assert!(json["fingerprint"].as_str().unwrap().starts_with("fp:"));
            for (host, expect) in case["checks"].as_object().unwrap() {
                let out = netcage(&key_file, &["check", "--host", host, tok]);
                let want = if expect.as_bool().unwrap() { 0 } else { 1 };
                assert_eq!(out.status.code(), Some(want), "{name}: check {host}");
            }
        } else {
            assert_eq!(
                out.status.code(),
                Some(2),
                "{name}: invalid token must exit 2"
            );
            assert_eq!(
                stderr.trim().lines().count(),
                1,
                "{name}: one-line reason: {stderr}"
            );
            assert!(stderr.contains("invalid token"), "{name}: {stderr}");
            let out = netcage(&key_file, &["check", "--host", "example.com", tok]);
            assert_eq!(out.status.code(), Some(2), "{name}: check of invalid token");
        }
    }
}

#[test]
fn cli_inspect_without_reveal_never_prints_the_value() {
    let v = vectors();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key.hex");
    std::fs::write(&key_file, v["key_hex"].as_str().unwrap()).unwrap();
    let case = &v["cases"][0];
    let out = netcage(&key_file, &["inspect", case["token"].as_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let value = case["value"].as_str().unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains(value));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(value));
}
