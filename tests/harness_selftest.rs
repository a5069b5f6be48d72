//! Proves the test harness in `tests/common/` works, using only real clients (curl, git,
//! python3 with `requests` and `websocket-client`) against it directly: no netcage involved.
//! Every assertion that matters is on what the server recorded.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use hyper::Version;
use serde_json::{Value, json};

/// Upper bound for any one client command.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// An HTTPS upstream for several names, its CA written to a scratch dir.
struct Fixture {
    env: TestEnv,
    ca_path: PathBuf,
    up: Upstream,
}

fn fixture() -> Fixture {
    let ca = TestCa::new();
    let env = TestEnv::new();
    let ca_path = ca.write_pem(env.root());
    let up = Upstream::start(
        &ca,
        &["api.github.com", "other.example", "localhost", "127.0.0.1"],
    );
    Fixture { env, ca_path, up }
}

impl Fixture {
    /// curl trusting the test CA, with api.github.com and other.example pinned to 127.0.0.1.
    fn curl(&self, args: &[&str]) -> Output {
        let port = self.up.port();
        let mut cmd = Command::new("curl");
        isolate_client_env(&mut cmd, self.env.root())
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&self.ca_path)
            .arg("--resolve")
            .arg(format!("api.github.com:{port}:127.0.0.1"))
            .arg("--resolve")
            .arg(format!("other.example:{port}:127.0.0.1"))
            .args(args);
        run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
    }

    /// python3 running `script` with the CA path and the upstream port as arguments.
    fn python(&self, script: &str) -> Output {
        let mut cmd = Command::new("python3");
        isolate_client_env(&mut cmd, self.env.root())
            .args(["-c", script])
            .arg(&self.ca_path)
            .arg(self.up.port().to_string());
        let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("ModuleNotFoundError"),
            "python3 lacks a module these tests need \
             (pip install requests websocket-client):\n{stderr}"
        );
        out
    }

    /// `git ls-remote URL` trusting the test CA, with no credential helper.
    fn git_ls_remote(&self, url: &str) -> Output {
        let mut cmd = Command::new("git");
        isolate_client_env(&mut cmd, self.env.root())
            .env("GIT_SSL_CAINFO", &self.ca_path)
            .args(["-c", "credential.helper=", "ls-remote", url]);
        run_with_timeout(&mut cmd, CLIENT_TIMEOUT)
    }

    fn only_request(&self) -> Recorded {
        let requests = self.up.requests();
        assert_eq!(requests.len(), 1, "{requests:#?}");
        requests.into_iter().next().unwrap()
    }
}

fn succeeded(out: &Output) -> &Output {
    assert!(out.status.success(), "{}", describe(out));
    out
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&succeeded(out).stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", describe(out)))
}

#[test]
fn curl_http1_post_is_echoed_and_recorded() {
    let fx = fixture();
    let url = fx.up.url("api.github.com", "/x?y=1");
    let echo = stdout_json(&fx.curl(&[
        "--http1.1",
        "-H",
        "X-Probe: p1",
        "--data-binary",
        "hello=world",
        &url,
    ]));
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["target"], "/x?y=1");
    assert_eq!(echo["headers"]["x-probe"], "p1");
    assert_eq!(echo["body_len"], 11);
    assert_eq!(echo["body"], "hello=world");

    let rec = fx.only_request();
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.target, "/x?y=1");
    assert_eq!(rec.path(), "/x");
    assert_eq!(rec.version, Version::HTTP_11);
    assert_eq!(rec.sni.as_deref(), Some("api.github.com"));
    assert_eq!(rec.host(), Some(format!("api.github.com:{}", fx.up.port())));
    assert_eq!(rec.header("X-PROBE"), Some(&b"p1"[..]));
    assert_eq!(rec.body_prefix, b"hello=world");
    assert_eq!(rec.body_len, 11);
    assert_eq!(rec.body_sha256, sha256(b"hello=world"));
    assert!(rec.complete);
    assert!(rec.contains(b"p1") && rec.contains(b"y=1") && rec.contains(b"=world"));
}

#[test]
fn curl_http2_is_echoed_and_recorded() {
    let fx = fixture();
    let url = fx.up.url("other.example", "/h2?q=%41");
    let echo = stdout_json(&fx.curl(&["--http2", "-H", "X-Probe: p2", &url]));
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(echo["target"], "/h2?q=%41");

    let rec = fx.only_request();
    assert_eq!(rec.version, Version::HTTP_2);
    assert_eq!(rec.method, "GET");
    assert_eq!(rec.sni.as_deref(), Some("other.example"));
    let authority = format!("other.example:{}", fx.up.port());
    assert_eq!(rec.authority.as_deref(), Some(authority.as_str()));
    assert_eq!(rec.host(), Some(authority));
    assert_eq!(rec.header_str("x-probe").as_deref(), Some("p2"));
    assert_eq!(rec.body_len, 0);
    assert!(rec.complete);
}

#[test]
fn big_downloads_have_exact_length_and_content() {
    let fx = fixture();
    let size: u64 = 3 * 1024 * 1024 + 7;
    let cases = [
        ("--http1.1", format!("/big?bytes={size}")),
        ("--http1.1", format!("/big?bytes={size}&chunked=1")),
        ("--http2", format!("/big?bytes={size}")),
    ];
    for (i, (http, target)) in cases.iter().enumerate() {
        let file = fx.env.path(&format!("big-{i}"));
        let url = fx.up.url("api.github.com", target);
        succeeded(&fx.curl(&[http, "-o", file.to_str().unwrap(), &url]));
        let data = std::fs::read(&file).unwrap();
        assert_eq!(data.len() as u64, size, "{http} {target}");
        assert_eq!(sha256(&data), pattern_sha256(size), "{http} {target}");
    }
    let targets: Vec<String> = fx.up.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(targets, cases.map(|(_, t)| t));
}

#[test]
fn large_upload_is_hashed_in_full_and_its_prefix_kept() {
    let fx = fixture();
    let size = 2 * BODY_PREFIX_LIMIT + 3;
    let data = pattern(11, size);
    let file = fx.env.path("upload");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());
    let url = fx.up.url("api.github.com", "/upload");
    let echo = stdout_json(&fx.curl(&["--http2", "--data-binary", &upload, &url]));
    assert_eq!(echo["body_len"], size);

    let rec = fx.only_request();
    assert!(rec.complete);
    assert_eq!(rec.body_len, size as u64);
    assert_eq!(rec.body_sha256, sha256(&data));
    assert_eq!(rec.body_prefix, data[..BODY_PREFIX_LIMIT]);
}

#[test]
fn sse_events_arrive_spaced_out() {
    let fx = fixture();
    let started = Instant::now();
    let out = fx.curl(&[
        "-N",
        "-w",
        "\ncontent-type=%{content_type}",
        &fx.up.url("api.github.com", "/sse"),
    ]);
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&succeeded(&out).stdout).into_owned();
    let events = text.lines().filter(|l| l.starts_with("data: ")).count();
    assert_eq!(events, 5, "{text}");
    assert!(text.contains("data: {\"n\":5}"), "{text}");
    assert!(text.contains("content-type=text/event-stream"), "{text}");
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert_eq!(fx.only_request().target, "/sse");
}

#[test]
fn python_requests_post_of_json_is_recorded() {
    let fx = fixture();
    let script = r#"
import json, sys, requests
ca, port = sys.argv[1], sys.argv[2]
r = requests.post(f"https://localhost:{port}/api/items?page=2",
                  json={"name": "probe", "n": [1, 2, 3]}, verify=ca, timeout=20)
print(json.dumps({"status": r.status_code, "echo": r.json()}))
"#;
    let result = stdout_json(&fx.python(script));
    assert_eq!(result["status"], 200);
    assert_eq!(result["echo"]["method"], "POST");

    let rec = fx.only_request();
    assert_eq!(rec.target, "/api/items?page=2");
    assert_eq!(rec.sni.as_deref(), Some("localhost"));
    assert_eq!(
        rec.header_str("content-type").as_deref(),
        Some("application/json")
    );
    let body: Value = serde_json::from_slice(&rec.body_prefix).unwrap();
    assert_eq!(body, json!({"name": "probe", "n": [1, 2, 3]}));
    assert_eq!(rec.body_len, rec.body_prefix.len() as u64);
}

#[test]
fn git_ls_remote_succeeds_with_the_expected_password() {
    let fx = fixture();
    fx.up.set_git_password("s3cret-pass");
    let url = format!(
        "https://x-access-token:s3cret-pass@127.0.0.1:{}/git",
        fx.up.port()
    );
    let out = fx.git_ls_remote(&url);
    let stdout = String::from_utf8_lossy(&succeeded(&out).stdout).into_owned();
    assert_eq!(stdout.trim(), format!("{GIT_HEAD_SHA}\tHEAD"));

    let requests = fx.up.requests();
    let last = requests.last().expect("git made a request");
    assert_eq!(last.target, "/git/info/refs?service=git-upload-pack");
    assert_eq!(
        last.basic_credentials(),
        Some((b"x-access-token".to_vec(), b"s3cret-pass".to_vec()))
    );
    assert!(last.header_str("user-agent").unwrap().starts_with("git/"));
}

#[test]
fn git_ls_remote_fails_with_a_wrong_password() {
    let fx = fixture();
    fx.up.set_git_password("s3cret-pass");
    let url = format!(
        "https://x-access-token:wrong@127.0.0.1:{}/git",
        fx.up.port()
    );
    let out = fx.git_ls_remote(&url);
    assert!(!out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Authentication failed"),
        "{}",
        describe(&out)
    );

    let requests = fx.up.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.basic_credentials().map(|(_, p)| p) == Some(b"wrong".to_vec())),
        "{requests:#?}"
    );
    assert!(requests.iter().all(|r| !r.contains(b"s3cret-pass")));
}

#[test]
fn websocket_echo_with_python_websocket_client() {
    let fx = fixture();
    let script = r#"
import json, ssl, sys, websocket
ca, port = sys.argv[1], sys.argv[2]
ws = websocket.create_connection(f"wss://localhost:{port}/ws", timeout=10,
                                 sslopt={"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": ca})
ws.send("hello over ws")
text = ws.recv()
ws.send_binary(b"\x00\x01\xfe\xff" * 100)
binary = ws.recv()
ws.ping(b"are you there")
ws.close()
print(json.dumps({"text": text, "binary_len": len(binary), "binary_ok": binary == b"\x00\x01\xfe\xff" * 100}))
"#;
    let result = stdout_json(&fx.python(script));
    assert_eq!(
        result,
        json!({"text": "hello over ws", "binary_len": 400, "binary_ok": true})
    );

    let rec = fx.only_request();
    assert_eq!(rec.target, "/ws");
    assert_eq!(rec.version, Version::HTTP_11);
    assert!(
        rec.header_str("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
    );
    let frames = fx.up.ws_frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!((frames[0].opcode, frames[0].fin), (1, true));
    assert_eq!(frames[0].payload, b"hello over ws");
    assert_eq!(frames[1].opcode, 2);
    assert_eq!(frames[1].payload, b"\x00\x01\xfe\xff".repeat(100));
}

#[test]
fn trailers_arrive_over_http2() {
    let fx = fixture();
    let out = fx.curl(&["--http2", "-v", &fx.up.url("api.github.com", "/trailers")]);
    succeeded(&out);
    assert_eq!(out.stdout, b"trailers follow\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("< grpc-status: 0"), "{}", describe(&out));
    assert_eq!(fx.only_request().version, Version::HTTP_2);
}

#[test]
fn redirect_and_status_routes() {
    let fx = fixture();
    let to = fx.up.url("other.example", "/landed");
    let echo = stdout_json(&fx.curl(&[
        "-L",
        &fx.up.url("api.github.com", &format!("/redirect?to={to}")),
    ]));
    assert_eq!(echo["target"], "/landed");
    let out = fx.curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &fx.up.url("api.github.com", "/status/418"),
    ]);
    assert_eq!(succeeded(&out).stdout, b"418");
    let hosts: Vec<_> = fx.up.requests().into_iter().map(|r| r.sni).collect();
    let expected = ["api.github.com", "other.example", "api.github.com"];
    assert_eq!(hosts, expected.map(|h| Some(h.to_owned())));
}

#[test]
fn plain_upstream_serves_http_without_sni() {
    let up = Upstream::start_plain();
    let env = TestEnv::new();
    let mut cmd = Command::new("curl");
    isolate_client_env(&mut cmd, env.root())
        .args(["-sS", "--max-time", "20", "-H", "Authorization: Bearer abc"])
        .arg(up.url("127.0.0.1", "/plain?z"));
    let echo = stdout_json(&run_with_timeout(&mut cmd, CLIENT_TIMEOUT));
    assert_eq!(echo["headers"]["authorization"], "Bearer abc");
    let rec = up.wait_for_requests(1, Duration::from_secs(5)).remove(0);
    assert_eq!(rec.target, "/plain?z");
    assert_eq!(rec.sni, None);
    assert_eq!(up.connections(), 1);
}

#[test]
fn a_body_cut_short_is_recorded_as_incomplete() {
    let up = Upstream::start_plain();
    let mut stream = TcpStream::connect(up.addr()).unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    stream.write_all(&[b'a'; 100]).unwrap();
    // Give the server the first 100 bytes as a separate read before the connection ends.
    std::thread::sleep(Duration::from_millis(100));
    drop(stream);
    let rec = up.wait_for_requests(1, Duration::from_secs(5)).remove(0);
    assert!(!rec.complete);
    assert_eq!(rec.body_len, 100);
    assert_eq!(rec.body_sha256, sha256(&[b'a'; 100]));
}

#[test]
fn untrusted_clients_fail_the_handshake_and_nothing_is_recorded() {
    let fx = fixture();
    let other_ca = TestCa::with_name("some other CA");
    let other_dir = fx.env.path("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other_path = other_ca.write_pem(&other_dir);
    let mut cmd = Command::new("curl");
    isolate_client_env(&mut cmd, fx.env.root())
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(other_path)
        .arg(fx.up.url("127.0.0.1", "/"));
    let out = run_with_timeout(&mut cmd, CLIENT_TIMEOUT);
    assert!(!out.status.success(), "{}", describe(&out));
    wait_until(Duration::from_secs(5), "the connection", || {
        fx.up.connections() == 1
    });
    assert!(fx.up.requests().is_empty());
}

/// The harness's token codec agrees with the independent vectors in shared/testdata.
#[test]
fn token_vectors_open_with_the_harness_codec() {
    let path = shared_testdata("token_vectors.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let vectors: Value = serde_json::from_str(&text).unwrap();
    let key = hex32(vectors["key_hex"].as_str().unwrap());
    let cases = vectors["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let name = &case["name"];
        let token = case["token"].as_str().unwrap();
        let opened = unseal_with_key(&key, token);
        if case["valid"].as_bool().unwrap() {
            let hosts: Vec<String> = serde_json::from_value(case["hosts"].clone()).unwrap();
            let value = case["value"].as_str().unwrap().to_owned();
            assert_eq!(opened, Some((value.clone(), hosts.clone())), "{name}");
            let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let resealed = seal_with_key(&key, &value, &host_refs);
            assert_eq!(
                unseal_with_key(&key, &resealed),
                Some((value, hosts)),
                "{name}"
            );
        } else {
            assert_eq!(opened, None, "{name} must be invalid");
        }
    }
}

#[test]
fn test_env_holds_a_private_key_and_seals_tokens() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let meta = std::fs::metadata(env.key_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(env.key_path()).unwrap(), env.key());
    assert_eq!(env.key_path().parent().unwrap(), env.data_dir());

    let a = env.seal("ghp_example", &["api.github.com", "github.com"]);
    let b = env.seal("ghp_example", &["api.github.com", "github.com"]);
    assert!(a.starts_with("starpod:v1:"));
    assert_ne!(a, b, "each token has a fresh nonce");
    let expected = (
        "ghp_example".to_owned(),
        vec!["api.github.com".to_owned(), "github.com".to_owned()],
    );
    assert_eq!(env.unseal(&a), Some(expected));
    assert_eq!(
        TestEnv::new().unseal(&a),
        None,
        "another key cannot open it"
    );
    assert_eq!(env.unseal(&a.replace("starpod:v1:", "starpod:v2:")), None);

    let ca = TestCa::new();
    env.install_ca(&ca);
    let ca_key = env.data_dir().join("proxy-ca-key.pem");
    assert_eq!(
        std::fs::metadata(&ca_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        std::fs::read_to_string(ca_key)
            .unwrap()
            .contains("PRIVATE KEY")
    );
}

#[test]
fn run_with_timeout_kills_the_whole_process_group() {
    let started = Instant::now();
    let result = std::panic::catch_unwind(|| {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo grandchild=$!; wait"]);
        run_with_timeout(&mut cmd, Duration::from_millis(500))
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    let panic = result.expect_err("must panic on timeout");
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    assert!(message.contains("did not exit"), "{message}");
    let pid = message
        .split("grandchild=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the grandchild's pid is in the captured stdout");
    // The grandchild was in the same process group, so it is gone too.
    wait_until(Duration::from_secs(5), "the grandchild to die", || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| stat.contains(") Z "))
    });
}

#[test]
fn run_with_stdin_feeds_input_and_captures_both_streams() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "tr a-z A-Z; echo oops >&2; exit 3"]);
    let out = run_with_stdin(&mut cmd, b"secret\n", CLIENT_TIMEOUT);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"SECRET\n");
    assert_eq!(out.stderr, b"oops\n");
}

#[test]
fn websocket_accept_key_matches_rfc6455() {
    // RFC 6455 §1.3's example handshake.
    let accept = common::ws::accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

#[test]
fn free_of_finds_needles() {
    assert!(free_of(b"nothing here", b"ghp_"));
    assert!(!free_of(b"xx ghp_123 yy", b"ghp_123"));
    assert!(!free_of(b"ghp_", b"ghp_"));
    assert!(free_of(b"gh", b"ghp_"));
}

fn hex32(hex: &str) -> [u8; 32] {
    assert_eq!(hex.len(), 64);
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    key
}
