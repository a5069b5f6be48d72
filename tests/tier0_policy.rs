//! Tier 0 end to end: policy decisions under `netcage run --tier env` — strip mode, secrets over
//! plaintext HTTP, egress allow lists, the cloud metadata address and domain fronting. Every
//! refusal is checked on the upstream side too: nothing may have arrived there.

mod common;
mod tier0;

const TIER: &str = "env";

use std::process::Output;

use common::*;
use serde_json::Value;
use tier0::*;

/// `curl … -w '\n%{http_code}'` output split into (body, status).
fn body_and_code(out: &Output) -> (String, String) {
    let text = stdout_str(out);
    let (body, code) = text
        .rsplit_once('\n')
        .unwrap_or_else(|| panic!("no status line: {}", describe(out)));
    (body.to_owned(), code.to_owned())
}

/// The JSON body of a refusal, and its `error` text.
fn refusal(body: &str) -> (Value, String) {
    let json: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("refusal is not JSON ({e}): {body}"));
    let error = json["error"].as_str().unwrap_or_default().to_owned();
    (json, error)
}

fn write_policy(fx: &Fx, name: &str, text: &str) -> String {
    let path = fx.env.path(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn strip_mode_forwards_the_request_without_the_token_or_the_value() {
    let fx = Fx::new();
    let policy = write_policy(
        &fx,
        "strip.toml",
        "[secrets]\non_host_mismatch = \"strip\"\n",
    );
    let token = fx.token();
    let header = format!("Authorization: Bearer {token}");
    let body = format!("{{\"t\":\"{token}\"}}");
    let out = fx.curl(
        &["--policy", &policy],
        &[
            "-H",
            &header,
            "--data-binary",
            &body,
            &fx.url(OTHER, &format!("/strip?k={}", pct(&token))),
        ],
    );
    let echo = stdout_json(&out);
    assert_eq!(
        echo["target"].as_str().unwrap().split('?').next(),
        Some("/strip")
    );

    let requests = fx.up.wait_for_requests(1, WAIT);
    let rec = &requests[0];
    assert_eq!(rec.sni.as_deref(), Some(OTHER));
    assert_eq!(rec.path(), "/strip");
    let b64 = token.strip_prefix("starpod:v1:").unwrap();
    for needle in [b"starpod".as_slice(), b64.as_bytes(), SECRET.as_bytes()] {
        assert!(
            !rec.contains(needle),
            "{} reached {OTHER}: {rec:#?}",
            String::from_utf8_lossy(needle)
        );
    }
    let auth = rec.header_str("authorization").unwrap_or_default();
    assert!(auth.starts_with("Bearer"), "{auth}");
    let line = fx.wait_audit("the strip", |l| field(l, "host") == OTHER);
    let actions: Vec<&str> = line["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["strip"; 3], "{line}");
    assert_eq!(line["decision"], "allow", "{line}");
    // The line names the run that made the request.
    assert!(field(&line, "exec").starts_with("run-"), "{line}");
}

#[test]
fn a_secret_over_plaintext_http_is_refused_unless_the_policy_allows_it() {
    let fx = Fx::new();
    let plain = Upstream::start_plain();
    let token = fx.token();
    let header = format!("Authorization: Bearer {token}");
    let url = plain.url(BOUND, "/plain");

    let out = fx.curl(&[], &["-w", "\n%{http_code}", "-H", &header, &url]);
    let (body, code) = body_and_code(succeeded(&out));
    assert_eq!(code, "403", "{}", describe(&out));
    let (json, error) = refusal(&body);
    assert!(error.contains("plaintext"), "{body}");
    assert_eq!(json["fingerprint"], netcage::token::fingerprint(&token));
    assert!(free_of(&out.stdout, SECRET.as_bytes()));
    assert!(plain.requests().is_empty(), "{:#?}", plain.requests());
    assert_eq!(plain.connections(), 0);
    fx.wait_audit("the plaintext block", |l| {
        field(l, "decision") == "block" && field(l, "reason").contains("plaintext")
    });

    // The same request without a token goes through: plain HTTP itself is allowed.
    let out = fx.curl(
        &[],
        &["-w", "\n%{http_code}", &plain.url(BOUND, "/no-token")],
    );
    assert_eq!(body_and_code(succeeded(&out)).1, "200");

    let policy = write_policy(&fx, "plain.toml", "[secrets]\nplaintext_http = true\n");
    let out = fx.curl(&["--policy", &policy], &["-H", &header, &url]);
    let echo = stdout_json(&out);
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {token}"));
    let requests = plain.wait_for_requests(2, WAIT);
    let paths: Vec<&str> = requests.iter().map(|r| r.path()).collect();
    assert_eq!(paths, ["/no-token", "/plain"]);
    assert_eq!(
        requests[1].header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
}

#[test]
fn an_egress_allow_list_refuses_other_hosts_before_connecting() {
    let fx = Fx::new();
    let plain = Upstream::start_plain();
    let allow = ["--allow", BOUND];

    // HTTPS: the CONNECT itself is refused.
    let out = fx.curl(
        &allow,
        &[
            "-w",
            "%{http_connect}",
            "-o",
            "/dev/null",
            &fx.url(OTHER, "/x"),
        ],
    );
    assert!(!out.status.success(), "{}", describe(&out));
    assert_eq!(stdout_str(&out), "403", "{}", describe(&out));
    // Plain HTTP: refused with a JSON reason.
    let out = fx.curl(&allow, &["-w", "\n%{http_code}", &plain.url(OTHER, "/y")]);
    let (body, code) = body_and_code(succeeded(&out));
    assert_eq!(code, "403", "{body}");
    let (json, error) = refusal(&body);
    assert!(error.contains("egress"), "{body}");
    assert_eq!(json["host"], OTHER);
    assert_eq!(fx.up.connections(), 0, "{:#?}", fx.up.requests());
    assert_eq!(plain.connections(), 0, "{:#?}", plain.requests());
    let blocks = fx.wait_audit_count("the two egress refusals", 2, |l| {
        field(l, "host") == OTHER && field(l, "decision") == "block"
    });
    assert!(
        blocks.iter().all(|l| field(l, "reason").contains("egress")),
        "{blocks:#?}"
    );

    // The allowed host still works.
    let echo = stdout_json(&fx.curl(&allow, &[&fx.url(BOUND, "/allowed")]));
    assert_eq!(echo["target"], "/allowed");
    assert_eq!(fx.up.wait_for_requests(1, WAIT)[0].path(), "/allowed");
}

#[test]
fn the_cloud_metadata_address_is_refused_by_netcage() {
    let fx = Fx::new();
    // Should netcage ever try to connect, this pin sends it to a local recording server
    // rather than to the real metadata address.
    let plain = Upstream::start_plain();
    let pin = ["--resolve", "169.254.169.254=127.0.0.1"];
    let url = format!(
        "http://169.254.169.254:{}/latest/meta-data/iam/",
        plain.port()
    );
    let out = fx.curl(&pin, &["-w", "\n%{http_code}", &url]);
    let (body, code) = body_and_code(succeeded(&out));
    assert_eq!(code, "403", "{body}");
    let (_, error) = refusal(&body);
    assert!(
        error.contains("egress") && error.contains("metadata"),
        "{body}"
    );
    let https = format!("https://169.254.169.254:{}/latest/", plain.port());
    let out = fx.curl(&pin, &["-w", "%{http_connect}", "-o", "/dev/null", &https]);
    assert_eq!(stdout_str(&out), "403", "{}", describe(&out));
    assert_eq!(plain.connections(), 0, "{:#?}", plain.requests());
    let line = fx.wait_audit("the metadata refusal", |l| {
        field(l, "host") == "169.254.169.254" && field(l, "reason").contains("metadata")
    });
    assert_eq!(line["decision"], "block", "{line}");
}

#[test]
fn domain_fronting_is_refused_with_421() {
    let fx = Fx::new();
    let token = fx.token();
    let auth = format!("Authorization: Bearer {token}");
    let url = fx.url(BOUND, "/front");
    for http in ["--http1.1", "--http2"] {
        let out = fx.curl(
            &[],
            &[
                http,
                "-w",
                "\n%{http_code}",
                "-H",
                &auth,
                "-H",
                "Host: other.example",
                &url,
            ],
        );
        let (body, code) = body_and_code(succeeded(&out));
        assert_eq!(code, "421", "{http}: {body}");
        let (_, error) = refusal(&body);
        assert!(error.contains("other.example"), "{body}");
    }
    // CONNECT to one host, TLS server name of another.
    let script = r#"
import os, socket, ssl, sys
port, token = sys.argv[1], sys.argv[2]
proxy = os.environ["https_proxy"].rsplit("/", 1)[1]
host, pport = proxy.rsplit(":", 1)
s = socket.create_connection((host, int(pport)), timeout=20)
s.sendall(f"CONNECT other.example:{port} HTTP/1.1\r\nHost: other.example:{port}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(1)
    if not chunk:
        break
    head += chunk
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
t = ctx.wrap_socket(s, server_hostname="api.github.com")
t.sendall(f"GET /front-sni HTTP/1.1\r\nHost: api.github.com:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode())
resp = b""
while True:
    chunk = t.recv(65536)
    if not chunk:
        break
    resp += chunk
sys.stdout.write(resp.decode(errors="replace"))
"#;
    let out = fx.python(&[], script, &[&fx.up.port().to_string(), &token]);
    let text = stdout_str(succeeded(&out));
    assert!(text.starts_with("HTTP/1.1 421"), "{}", describe(&out));
    assert!(text.contains("other.example"), "{text}");

    assert!(fx.up.requests().is_empty(), "{:#?}", fx.up.requests());
    assert_eq!(fx.up.connections(), 0);
    fx.wait_audit_count("three 421 refusals", 3, |l| {
        field(l, "decision") == "block" && l["status"] == 421
    });
}
