//! Runtimes beyond curl and python `requests`, through the real binary against real servers on
//! 127.0.0.1 that record what they received:
//! - gRPC: Python `grpcio` client and server (HTTP/2 with `te: trailers`, unary and server
//!   streaming, the token in metadata), trusting netcage's CA through
//!   `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`; Tier 0 (grpcio finds the proxy in `https_proxy`) and
//!   Tier 1 (root and rootless);
//! - Java: `java.net.http.HttpClient` (single-file source launch) trusting netcage's CA
//!   through the PKCS#12 truststore in `JAVA_TOOL_OPTIONS`, and in Tier 0 finding the proxy
//!   through the JVM's proxy properties there; Tier 0 and Tier 1 (root and rootless);
//! - `TE` on requests: `trailers` goes upstream, other values do not (HTTP/1.1 and HTTP/2).

mod common;
mod tier1_support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use tier1_support::{BOUND, Fx, Mode, OTHER, RUN_TIMEOUT, SECRET, for_each_mode};

const GRPC_SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/runtimes/grpc_server.py");

/// A client program of `tests/runtimes/` copied into the scratch root, where the rootless
/// user can read it (the checkout may sit below a directory it may not enter).
fn client_script(fx: &Fx, name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/runtimes")
        .join(name);
    fx.write(name, &std::fs::read_to_string(&src).unwrap())
}

/// A Python grpcio server with a leaf for [`BOUND`] and [`OTHER`] from the test's CA, killed
/// on drop. Every call it gets is a line in its log.
struct GrpcServer {
    _child: KillOnDrop,
    port: u16,
    log: PathBuf,
}

impl GrpcServer {
    fn start(fx: &Fx) -> GrpcServer {
        let dir = fx.env.path("grpc-server");
        std::fs::create_dir_all(&dir).unwrap();
        let (chain, key) = fx.ca.issue_pem(&[BOUND, OTHER]);
        std::fs::write(dir.join("chain.pem"), chain).unwrap();
        std::fs::write(dir.join("key.pem"), key).unwrap();
        let log = dir.join("calls.jsonl");
        let mut cmd = Command::new("python3");
        cmd.arg(GRPC_SERVER)
            .arg(dir.join("chain.pem"))
            .arg(dir.join("key.pem"))
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut child = KillOnDrop::spawn(&mut cmd);
        let mut line = String::new();
        BufReader::new(child.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            panic!("the grpcio server did not start (pip install grpcio); it printed {line:?}")
        });
        GrpcServer {
            _child: child,
            port,
            log,
        }
    }

    /// Every call the server has received: (method, authorization).
    fn calls(&self) -> Vec<(String, String)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["method"].as_str().unwrap_or_default().to_owned(),
                    v["authorization"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }
}

/// grpcio (and what it imports) copied where [`tier1_support::UID`] can read it.
fn grpc_packages(fx: &Fx) -> PathBuf {
    fx.python_modules("pylib-grpc", &["grpc", "typing_extensions"])
}

/// The gRPC client under `netcage run --tier TIER` (as `fx`'s user), calling `host` on the
/// server with `token`.
fn grpc_client(fx: &Fx, tier: &str, server: &GrpcServer, host: &str, token: &str) -> Output {
    let target = format!("{host}:{}", server.port);
    let client = client_script(fx, "grpc_client.py");
    let client = client.to_string_lossy();
    let mut cmd = fx.netcage();
    fx.run_args_in(tier, &mut cmd, &[], &["python3", &client, &target, token]);
    cmd.env("PYTHONPATH", grpc_packages(fx));
    // What grpcio would otherwise trust or use: only what netcage sets may count.
    for var in [
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "grpc_proxy",
        "GRPC_PROXY",
    ] {
        cmd.env_remove(var);
    }
    run_with_timeout(&mut cmd, RUN_TIMEOUT)
}

/// Unary and server-streaming calls carry the token's real value to the bound host, with the
/// replies intact, and a reply that echoes the value comes back with the token in its place
/// (the message's length rewritten); the same token aimed at another host is refused and the
/// server gets nothing.
fn grpc_round_trip(fx: &Fx, tier: &str) {
    let server = GrpcServer::start(fx);
    let token = fx.token();
    let out = grpc_client(fx, tier, &server, BOUND, &token);
    let what = format!("[{tier} {}]", fx.mode.name());
    assert!(out.status.success(), "{what} {}", describe(&out));
    assert_eq!(
        stdout_str(&out).lines().collect::<Vec<_>>(),
        [
            "unary unary:hello",
            "stream part0:hi",
            "stream part1:hi",
            "stream part2:hi",
            // The reflected real value comes back as the token, in a well-framed message.
            &format!("auth auth:Bearer {token}"),
        ],
        "{what} {}",
        describe(&out)
    );
    let real = format!("Bearer {SECRET}");
    assert_eq!(
        server.calls(),
        [
            ("unary".into(), real.clone()),
            ("stream".into(), real.clone()),
            ("auth".into(), real)
        ],
        "{what} the server must get every call with the real value"
    );
    assert!(
        free_of(&out.stdout, SECRET.as_bytes()) && free_of(&out.stderr, SECRET.as_bytes()),
        "{what} the client saw the real value: {}",
        describe(&out)
    );

    let out = grpc_client(fx, tier, &server, OTHER, &token);
    assert_eq!(out.status.code(), Some(3), "{what} {}", describe(&out));
    assert!(
        stdout_str(&out).starts_with("error "),
        "{what} {}",
        describe(&out)
    );
    assert_eq!(
        server.calls().len(),
        3,
        "{what} {OTHER} must receive nothing"
    );
    fx.wait_audit("the refused gRPC call", |l| {
        l["host"] == OTHER && l["decision"] == "block" && l["path"] == "/test.Echo/Unary"
    });
}

#[test]
fn grpc_unary_and_streaming_carry_the_real_value_in_tier0() {
    let fx = Fx::new(Mode::Root);
    grpc_round_trip(&fx, "env");
}

#[test]
fn grpc_unary_and_streaming_carry_the_real_value_in_tier1() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        grpc_round_trip(&fx, "netns");
    });
}

/// `java Main.java URL TOKEN` under `netcage run --tier TIER`: the token's real value
/// reaches the bound host, the reply comes back; aimed at another host it is refused and
/// nothing arrives there.
fn java_round_trip(fx: &Fx, tier: &str) {
    let what = format!("[{tier} {}]", fx.mode.name());
    let main = client_script(fx, "Main.java");
    let main = main.to_string_lossy();
    let token = fx.token();
    let java = |url: &str| {
        let mut cmd = fx.netcage();
        fx.run_args_in(tier, &mut cmd, &[], &["java", &main, url, &token]);
        // The user's own options are kept, and netcage's truststore wins over one named there.
        cmd.env(
            "JAVA_TOOL_OPTIONS",
            "-Dnetcage.test.marker=kept -Djavax.net.ssl.trustStore=/nonexistent.p12",
        );
        for var in ["JDK_JAVA_OPTIONS", "_JAVA_OPTIONS"] {
            cmd.env_remove(var);
        }
        run_with_timeout(&mut cmd, RUN_TIMEOUT)
    };
    let out = java(&fx.url(BOUND, "/java"));
    assert!(out.status.success(), "{what} {}", describe(&out));
    assert!(
        stdout_str(&out).starts_with("200 ") && stdout_str(&out).contains("\nmarker=kept\n"),
        "{what} {}",
        describe(&out)
    );
    let got = fx.up.wait_for_requests(1, Duration::from_secs(10));
    assert_eq!(got[0].path(), "/java", "{what}");
    assert_eq!(
        got[0].header_str("authorization").as_deref(),
        Some(&*format!("Bearer {SECRET}")),
        "{what} what the server got"
    );
    assert!(
        free_of(&out.stdout, SECRET.as_bytes()) && free_of(&out.stderr, SECRET.as_bytes()),
        "{what} {}",
        describe(&out)
    );

    fx.up.clear();
    let out = java(&fx.url(OTHER, "/java-elsewhere"));
    assert!(
        stdout_str(&out).starts_with("403 "),
        "{what} {}",
        describe(&out)
    );
    assert!(
        fx.up.requests().is_empty(),
        "{what} {OTHER} must receive nothing"
    );
}

#[test]
fn java_httpclient_carries_the_real_value_in_tier0() {
    let fx = Fx::new(Mode::Root);
    java_round_trip(&fx, "env");
}

#[test]
fn java_httpclient_carries_the_real_value_in_tier1() {
    for_each_mode(|mode| java_round_trip(&Fx::new(mode), "netns"));
}

/// `TE: trailers` reaches the upstream; any other TE value does not (HTTP/1.1 and HTTP/2).
#[test]
fn te_trailers_is_passed_on_and_other_te_values_are_not() {
    let fx = Fx::new(Mode::Root);
    let url = fx.url(BOUND, "/te");
    for (proto, te, expect) in [
        ("--http1.1", "trailers", Some("trailers")),
        ("--http1.1", "gzip;q=0.5, trailers", Some("trailers")),
        ("--http1.1", "gzip", None),
        ("--http2", "trailers", Some("trailers")),
    ] {
        fx.up.clear();
        let header = format!("TE: {te}");
        let mut cmd = fx.netcage();
        fx.run_args_in(
            "env",
            &mut cmd,
            &[],
            &[
                "curl",
                "-sS",
                "--max-time",
                "20",
                proto,
                "-H",
                &header,
                &url,
            ],
        );
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        assert!(out.status.success(), "{proto} {te}: {}", describe(&out));
        let got = fx.up.wait_for_requests(1, Duration::from_secs(10));
        assert_eq!(
            got[0].header_values("te"),
            expect.map(str::as_bytes).into_iter().collect::<Vec<_>>(),
            "{proto} {te}: what the upstream got as TE"
        );
    }
}
