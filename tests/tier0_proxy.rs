//! Tier 0 end to end: bad input and failing upstreams against `netcage proxy` itself. Each case
//! gets a clear answer (or a closed connection), an audit line, and leaves the proxy serving:
//! a normal request through the same proxy works after every one.

mod common;
mod tier0;

const TIER: &str = "env";

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tier0::*;

/// curl through the explicit proxy, trusting netcage's CA.
fn curl_via(fx: &Fx, proxy: &ProxyProc, args: &[&str]) -> Output {
    let mut cmd = Command::new("curl");
    isolate_client_env(&mut cmd, fx.env.root())
        .args(["-sS", "--max-time", "30", "-x", &proxy.url(), "--cacert"])
        .arg(fx.env.data_dir().join("proxy-ca.pem"))
        .args(args);
    run_with_timeout(&mut cmd, RUN_TIMEOUT)
}

/// A normal HTTPS request through the proxy, with a token: it must arrive, substituted.
fn normal_request(fx: &Fx, proxy: &ProxyProc, n: usize) {
    let path = format!("/normal-{n}");
    let header = format!("Authorization: Bearer {}", fx.token());
    let out = curl_via(fx, proxy, &["-H", &header, &fx.url(BOUND, &path)]);
    let echo = stdout_json(&out);
    assert_eq!(echo["target"], path.as_str(), "after case {n}");
    let rec = fx
        .up
        .requests()
        .into_iter()
        .find(|r| r.path() == path)
        .unwrap_or_else(|| panic!("{path} did not reach the upstream"));
    assert_eq!(
        rec.header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
}

/// Writes `data`, then reads until the proxy closes the connection (bounded by the socket's
/// read timeout, which fails the test).
fn exchange(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).expect("write to the proxy");
    read_to_close(stream)
}

fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => got,
        // A reset after the proxy has given up on us is a close too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!(
            "the proxy kept the connection open ({e}); got so far: {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

/// Splits a raw HTTP/1.1 response into status code and body; the body must be one JSON line.
fn status_and_json(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status code: {text:?}"));
    let body = body.trim_end_matches('\n');
    assert!(!body.contains('\n'), "body is not one line: {body:?}");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    (code, json)
}

#[test]
fn bad_client_input_is_answered_or_dropped_and_the_proxy_keeps_serving() {
    let fx = Fx::new();
    let plain = Upstream::start_plain();
    let proxy = ProxyProc::start(&fx, &[]);
    normal_request(&fx, &proxy, 0);
    let audit_has = |what: &str, pred: &dyn Fn(&Value) -> bool| fx.wait_audit(what, pred);

    // 1. A malformed request line: 400, one JSON line.
    let raw = exchange(&mut proxy.connect(), b"this is not http\r\n\r\n");
    let (code, json) = status_and_json(&raw);
    assert_eq!(code, 400, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("malformed"),
        "{json}"
    );
    audit_has("the malformed request", &|l| {
        field(l, "decision") == "block" && field(l, "reason").contains("malformed")
    });
    normal_request(&fx, &proxy, 1);

    // 2. CONNECT without a port: 400.
    let raw = exchange(
        &mut proxy.connect(),
        b"CONNECT api.github.com HTTP/1.1\r\nHost: api.github.com\r\n\r\n",
    );
    let (code, json) = status_and_json(&raw);
    assert_eq!(code, 400, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("host:port"),
        "{json}"
    );
    audit_has("the CONNECT without port", &|l| {
        field(l, "decision") == "block" && field(l, "reason").contains("not host:port")
    });
    normal_request(&fx, &proxy, 2);

    // 3. CONNECT, then bytes that are neither TLS nor HTTP: the tunnel is closed.
    let connections = fx.up.connections();
    let connect = format!(
        "CONNECT {BOUND}:{0} HTTP/1.1\r\nHost: {BOUND}:{0}\r\n\r\n",
        fx.up.port()
    );
    let mut stream = proxy.connect();
    let mut data = connect.clone().into_bytes();
    data.extend_from_slice(b"\x00\x01\x02garbage that is not a protocol\r\n\r\n");
    let raw = exchange(&mut stream, &data);
    assert_eq!(
        String::from_utf8_lossy(&raw),
        "HTTP/1.1 200 Connection established\r\n\r\n"
    );
    let line = audit_has("the non-HTTP tunnel", &|l| {
        field(l, "decision") == "block" && field(l, "reason").contains("non-HTTP")
    });
    assert_eq!(field(&line, "host"), BOUND, "{line}");
    assert_eq!(
        fx.up.connections(),
        connections,
        "garbage reached the upstream"
    );
    normal_request(&fx, &proxy, 3);

    // 4. A TLS record that is not a ClientHello: closed, logged.
    let mut data = connect.clone().into_bytes();
    data.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x20]);
    data.extend_from_slice(&[0xAB; 32]);
    let raw = exchange(&mut proxy.connect(), &data);
    let text = String::from_utf8_lossy(&raw);
    assert!(
        text.starts_with("HTTP/1.1 200 Connection established\r\n\r\n"),
        "{text:?}"
    );
    audit_has("the bad ClientHello", &|l| {
        field(l, "decision") == "error" && field(l, "reason").contains("TLS")
    });
    normal_request(&fx, &proxy, 4);

    // 5. A request that names no host: 400.
    let raw = exchange(
        &mut proxy.connect(),
        b"GET /nohost HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let (code, json) = status_and_json(&raw);
    assert_eq!(code, 400, "{json}");
    audit_has("the request without a host", &|l| {
        field(l, "path") == "/nohost" && field(l, "decision") == "block"
    });

    // 6. The client goes away in the middle of a body: one small enough to be read whole
    //    (nothing goes upstream), one large enough to be streamed (the upstream sees an
    //    incomplete request).
    for (path, length) in [("/cut-small", 1_000_000u64), ("/cut-large", 20_000_000)] {
        let mut stream = proxy.connect();
        let head = format!(
            "POST http://{BOUND}:{port}{path} HTTP/1.1\r\nHost: {BOUND}:{port}\r\nContent-Length: {length}\r\n\r\n",
            port = plain.port()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(b"0123456789").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        drop(stream);
        let line = audit_has(path, &|l| {
            field(l, "path") == path && matches!(field(l, "decision"), "block" | "error")
        });
        assert_eq!(
            field(&line, "dst"),
            format!("{BOUND}:{}", plain.port()),
            "{line}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && plain.requests().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    for rec in plain.requests() {
        assert!(!rec.complete, "a cut-off body arrived complete: {rec:#?}");
        assert_eq!(rec.path(), "/cut-large", "{rec:#?}");
        assert!(rec.body_len <= 10, "{rec:#?}");
    }
    normal_request(&fx, &proxy, 6);
}

#[test]
fn upstream_failures_are_502_with_a_one_line_json_reason() {
    let fx = Fx::new();
    let proxy = ProxyProc::start(&fx, &[]);
    normal_request(&fx, &proxy, 0);

    // 1. Nothing listening.
    let dead = free_port();
    let url = format!("https://{BOUND}:{dead}/down");
    let out = curl_via(&fx, &proxy, &["-w", "\n%{http_code}", &url]);
    let text = stdout_str(succeeded(&out));
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "502", "{text}");
    assert!(!body.trim_end().contains('\n'), "{body}");
    let json: Value = serde_json::from_str(body).unwrap();
    let error = json["error"].as_str().unwrap();
    assert!(error.contains("refused the connection"), "{json}");
    assert!(error.contains(&dead.to_string()), "{json}");
    fx.wait_audit("the refused upstream", |l| {
        field(l, "path") == "/down" && field(l, "decision") == "error" && l["status"] == 502
    });
    normal_request(&fx, &proxy, 1);

    // 2. A certificate from a CA netcage was not told about.
    let rogue_ca = TestCa::with_name("rogue CA");
    let rogue = Upstream::start(&rogue_ca, &[BOUND, OTHER]);
    let url = rogue.url(BOUND, "/rogue");
    let header = format!("Authorization: Bearer {}", fx.token());
    let out = curl_via(&fx, &proxy, &["-w", "\n%{http_code}", "-H", &header, &url]);
    let text = stdout_str(succeeded(&out));
    let (body, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "502", "{text}");
    assert!(!body.trim_end().contains('\n'), "{body}");
    let json: Value = serde_json::from_str(body).unwrap();
    let error = json["error"].as_str().unwrap();
    assert!(
        error.contains("certificate")
            && error.contains("verify")
            && error.contains("--upstream-ca"),
        "{json}"
    );
    assert!(rogue.requests().is_empty(), "{:#?}", rogue.requests());
    assert!(
        rogue.connections() >= 1,
        "netcage never tried the rogue server"
    );
    let line = fx.wait_audit("the certificate failure", |l| {
        field(l, "path") == "/rogue" && field(l, "decision") == "error"
    });
    assert!(field(&line, "reason").contains("certificate"), "{line}");
    assert!(!line.to_string().contains(SECRET), "{line}");
    normal_request(&fx, &proxy, 2);
}
