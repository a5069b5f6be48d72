// The client suite, included by tests/tier0_clients.rs (Tier 0) and tests/tier1_clients.rs
// (the same tests in Tier 1); `crate::TIER` says which.

use common::*;
use hyper::Version;
use serde_json::{Value, json};
use tier0::*;

#[test]
fn curl_http1_and_http2_deliver_a_sealed_value_in_a_header() {
    let fx = Fx::new();
    let script = r#"curl -sS --max-time 30 --http1.1 -H "Authorization: Bearer $TIER0_TOKEN" "$1" \
        && echo && curl -sS --max-time 30 --http2 -H "Authorization: Bearer $TIER0_TOKEN" "$2""#;
    let url1 = fx.url(BOUND, "/h1?via=curl");
    let url2 = fx.url(BOUND, "/h2?via=curl");
    let mut cmd = fx.run_cmd(
        &["--seal", "TIER0_TOKEN=api.github.com"],
        &["sh", "-c", script, "sh", &url1, &url2],
    );
    cmd.env("TIER0_TOKEN", SECRET);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = stdout_str(succeeded(&out));
    let echoes: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(echoes.len(), 2, "{text}");
    assert_eq!(echoes[0]["version"], "HTTP/1.1", "{text}");
    assert_eq!(echoes[1]["version"], "HTTP/2.0", "{text}");
    // The child sent a token and sees a token in the echo, never the value.
    for echo in &echoes {
        let auth = echo["headers"]["authorization"].as_str().unwrap();
        assert!(auth.starts_with("Bearer starpod:v1:"), "{text}");
    }
    assert!(free_of(&out.stdout, SECRET.as_bytes()), "{text}");

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
    let line = fx.wait_audit("the substitution on /h1", |l| {
        field(l, "path") == "/h1" && field(l, "decision") == "allow"
    });
    assert_eq!(line["tokens"][0]["action"], "substitute", "{line}");
    assert!(!line.to_string().contains(SECRET), "{line}");
}

#[test]
fn git_ls_remote_with_a_token_in_the_url_authenticates_with_the_value() {
    let fx = Fx::new();
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
}

#[test]
fn python_requests_delivers_the_value_in_header_query_and_json_body() {
    let fx = Fx::new();
    let script = r#"
import json, sys, urllib.parse, requests
base, token = sys.argv[1], sys.argv[2]
s = requests.Session()
out = {}
r = s.get(base + "/hdr", headers={"X-Api-Key": token}, timeout=30)
out["hdr"] = [r.status_code, r.json()["headers"]["x-api-key"]]
r = s.get(base + "/query", params={"access_token": token, "n": "1"}, timeout=30)
out["query"] = [r.status_code, r.json()["target"]]
r = s.get(base + "/pct?t=" + urllib.parse.quote(token, safe=""), timeout=30)
out["pct"] = [r.status_code, r.json()["target"]]
r = s.post(base + "/json", json={"token": token, "n": [1, 2]}, timeout=30)
out["json"] = [r.status_code, json.loads(r.json()["body"])]
print(json.dumps(out))
"#;
    let token = fx.token();
    let base = fx.url(BOUND, "");
    let result = stdout_json(&fx.python(&[], script, &[&base, &token]));
    // What the child saw: its token (the query echo shows it percent-encoded).
    assert_eq!(result["hdr"], json!([200, token]));
    assert_eq!(result["query"][0], 200);
    let query = result["query"][1].as_str().unwrap();
    assert!(query.starts_with("/query?access_token=starpod"), "{query}");
    assert_eq!(result["pct"][0], 200);
    assert!(
        result["pct"][1]
            .as_str()
            .unwrap()
            .starts_with("/pct?t=starpod"),
        "{result}"
    );
    assert_eq!(result["json"], json!([200, {"token": token, "n": [1, 2]}]));
    assert!(!result.to_string().contains(SECRET), "{result}");

    let requests = fx.up.wait_for_requests(4, WAIT);
    let by_path = |p: &str| requests.iter().find(|r| r.path() == p).unwrap().clone();
    assert_eq!(
        by_path("/hdr").header_str("x-api-key").as_deref(),
        Some(SECRET)
    );
    assert_eq!(
        by_path("/query").target,
        format!("/query?access_token={SECRET}&n=1")
    );
    assert_eq!(by_path("/pct").target, format!("/pct?t={SECRET}"));
    let body: Value = serde_json::from_slice(&by_path("/json").body_prefix).unwrap();
    assert_eq!(body, json!({"token": SECRET, "n": [1, 2]}));
    let json_rec = by_path("/json");
    assert_eq!(json_rec.body_len, json_rec.body_prefix.len() as u64);
    assert_eq!(
        json_rec.header_str("content-length"),
        Some(json_rec.body_len.to_string()),
        "Content-Length must match the substituted body"
    );
    assert!(requests.iter().all(|r| !r.contains(b"starpod:")));
}

const BIG: usize = 64 * 1024 * 1024;

#[test]
fn a_64mib_chunked_upload_from_a_python_generator_is_substituted_in_the_stream() {
    let fx = Fx::new();
    let token = fx.token();
    let layout = Layout::new(BIG, token.len(), 1000);
    let script = r#"
import json, sys, requests
url, token = sys.argv[1], sys.argv[2].encode()
n, a, b = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
big = bytes(range(251)) * ((1 << 20) // 251 + 2)
def pat(x, y):
    while x < y:
        l = min(1 << 20, y - x)
        yield big[x % 251:x % 251 + l]
        x += l
def gen():
    yield from pat(0, a)
    yield b'"' + token[:9]   # a token split across two chunks
    yield token[9:] + b'"'
    yield from pat(a, b)
    yield b'"' + token + b'"'
    yield from pat(b, n)
r = requests.post(url, data=gen(), headers={"Content-Type": "application/octet-stream"}, timeout=120)
print(json.dumps({"status": r.status_code, "body_len": r.json()["body_len"]}))
"#;
    let url = fx.url(BOUND, "/upload-stream");
    let (n, a, b) = (
        layout.n.to_string(),
        layout.a.to_string(),
        layout.b.to_string(),
    );
    let out = fx.python(&[], script, &[&url, &token, &n, &a, &b]);
    let expected = layout.body(SECRET.as_bytes());
    let result = stdout_json(&out);
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["body_len"], expected.len(), "{result}");

    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert!(rec.complete, "{rec:#?}");
    assert_eq!(
        rec.header_str("transfer-encoding").as_deref(),
        (rec.version == Version::HTTP_11).then_some("chunked")
    );
    assert_eq!(rec.body_len, expected.len() as u64);
    assert_eq!(
        rec.body_sha256,
        fast_sha256(&expected),
        "substituted body differs"
    );
}

#[test]
fn a_64mib_file_upload_with_content_length_is_substituted() {
    let fx = Fx::new();
    let token = fx.token();
    let layout = Layout::new(BIG, token.len(), 200);
    let file = fx.env.path("upload.bin");
    let sent = layout.body(token.as_bytes());
    assert_eq!(sent.len(), BIG);
    std::fs::write(&file, &sent).unwrap();
    drop(sent);
    let upload = format!("@{}", file.display());
    let url = fx.url(BOUND, "/upload-file");
    let out = fx.curl(
        &[],
        &[
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &upload,
            &url,
        ],
    );
    let expected = layout.body(SECRET.as_bytes());
    let echo = stdout_json(&out);
    assert_eq!(echo["body_len"], expected.len(), "{echo}");

    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert!(rec.complete, "{rec:#?}");
    assert_eq!(rec.body_len, expected.len() as u64);
    assert_eq!(
        rec.body_sha256,
        fast_sha256(&expected),
        "substituted body differs"
    );
    if let Some(length) = rec.header_str("content-length") {
        assert_eq!(length, expected.len().to_string(), "stale Content-Length");
    }
}

#[test]
fn a_token_for_another_host_is_refused_with_403_and_nothing_goes_upstream() {
    let fx = Fx::new();
    let token = fx.token();
    let fingerprint = netcage::token::fingerprint(&token);
    let check = |out: &std::process::Output, what: &str| {
        let text = stdout_str(succeeded(out));
        let (body, code) = text.rsplit_once('\n').expect("body then status");
        assert_eq!(code, "403", "{what}: {text}");
        let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(body["fingerprint"], fingerprint, "{what}: {body}");
        assert_eq!(body["host"], OTHER, "{what}: {body}");
        assert_eq!(body["bound_hosts"], json!([BOUND]), "{what}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("blocked"),
            "{body}"
        );
        assert!(!text.contains(SECRET));
    };
    let url = fx.url(OTHER, "/steal");
    let header = format!("Authorization: token {token}");
    check(
        &fx.curl(&[], &["-w", "\n%{http_code}", "-H", &header, &url]),
        "header",
    );
    let body = format!("{{\"t\":\"{token}\"}}");
    check(
        &fx.curl(&[], &["-w", "\n%{http_code}", "--data-binary", &body, &url]),
        "body",
    );
    let query = fx.url(OTHER, &format!("/q?key={}", pct(&token)));
    check(&fx.curl(&[], &["-w", "\n%{http_code}", &query]), "query");

    // The same token still works for the host it is bound to, on the same upstream.
    let ok = fx.url(BOUND, "/fine");
    let echo = stdout_json(&fx.curl(&[], &["-H", &header, &ok]));
    assert_eq!(echo["target"], "/fine");

    let requests = fx.up.wait_for_requests(1, WAIT);
    assert!(fx.requests_for(OTHER).is_empty(), "{requests:#?}");
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(
        requests[0].header_str("authorization"),
        Some(format!("token {SECRET}"))
    );
    let line = fx.wait_audit("the block", |l| {
        field(l, "decision") == "block" && field(l, "host") == OTHER
    });
    assert_eq!(line["tokens"][0]["fingerprint"], fingerprint, "{line}");
    assert_eq!(line["tokens"][0]["action"], "block", "{line}");
    assert_eq!(line["status"], 403, "{line}");
}

#[test]
fn a_streamed_body_with_a_token_for_another_host_is_cut_off_before_the_token() {
    let fx = Fx::new();
    let token = fx.token();
    // Larger than what netcage reads whole: the body streams, so the head and the data before
    // the token may already be upstream when the token is found.
    let layout = Layout::new(12 * 1024 * 1024, token.len(), 100);
    let file = fx.env.path("upload.bin");
    std::fs::write(&file, layout.body(token.as_bytes())).unwrap();
    let upload = format!("@{}", file.display());
    for (http, path) in [("--http1.1", "/exfil-h1"), ("--http2", "/exfil-h2")] {
        let url = fx.url(OTHER, path);
        let args = [http, "-w", "\n%{http_code}", "--data-binary", &upload, &url];
        let out = fx.curl(&[], &args);
        assert!(free_of(&out.stdout, SECRET.as_bytes()));
        let text = stdout_str(&out);
        // netcage answers 403 as soon as it finds the token, while the client is still
        // uploading; depending on timing the client reads that 403 or fails to send the rest
        // (HTTP/1.1: the connection is closed; HTTP/2: the stream is reset). Either way it
        // must not see success.
        let code = text.rsplit('\n').next().unwrap_or_default();
        assert!(
            code == "403" || !out.status.success() && !code.starts_with('2'),
            "{http}: the request was not refused: {}",
            describe(&out)
        );
        let line = fx.wait_audit(path, |l| {
            field(l, "path") == path && field(l, "decision") == "block"
        });
        assert_eq!(line["tokens"][0]["action"], "block", "{line}");
    }
    for rec in fx.up.requests() {
        assert!(!rec.complete, "the body arrived complete: {rec:#?}");
        assert!(
            rec.body_len <= layout.a as u64 + 1,
            "data after the token went out: {} > {} + 1",
            rec.body_len,
            layout.a
        );
        assert!(!rec.contains(SECRET.as_bytes()) && !rec.contains(b"starpod"));
    }
}

#[test]
fn a_websocket_echo_works_through_the_proxy() {
    let fx = Fx::new();
    let script = r#"
import json, os, sys, websocket
url, token = sys.argv[1], sys.argv[2]
# Tier 0 sets https_proxy; Tier 1 intercepts without it.
assert bool(os.environ.get("https_proxy")) == (os.environ["NETCAGE_TEST_TIER"] == "env")
# websocket-client takes the proxy from https_proxy itself.
ws = websocket.create_connection(url, timeout=20, header=[f"Authorization: Bearer {token}"],
                                 sslopt={"ca_certs": os.environ["SSL_CERT_FILE"]})
ws.send("hello through netcage")
text = ws.recv()
payload = b"\x00\x01\xfe\xff" * 5000
ws.send_binary(payload)
binary = ws.recv()
ws.close()
print(json.dumps({"text": text, "binary_ok": binary == payload}))
"#;
    let token = fx.token();
    let url = format!("wss://{BOUND}:{}/ws", fx.up.port());
    let result = stdout_json(&fx.python(&[], script, &[&url, &token]));
    assert_eq!(
        result,
        json!({"text": "hello through netcage", "binary_ok": true})
    );

    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert_eq!(rec.path(), "/ws");
    assert_eq!(rec.version, Version::HTTP_11);
    assert_eq!(
        rec.header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
    let frames = fx.up.ws_frames();
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0].payload, b"hello through netcage");
    assert_eq!(frames[1].payload, b"\x00\x01\xfe\xff".repeat(5000));
}

/// One keep-alive connection, idle past the proxy's rest (250 ms: `src/proxy/rest.rs`, where
/// hyper's buffers are freed) between its requests: the next request is served on the same
/// connection, and a WebSocket upgrade after a rest works. A pipelining client whose next head
/// is cut across a rest gets that request answered whole, and then (as `rest.rs` says, and
/// HTTP allows) a closed connection.
#[test]
fn a_keep_alive_connection_serves_its_requests_across_rests() {
    let fx = Fx::new();
    let script = r#"
import http.client, json, os, socket, ssl, sys, time, websocket
host, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
REST = 0.8  # over three times the proxy's rest
proxy = os.environ.get("https_proxy")
assert bool(proxy) == (os.environ["NETCAGE_TEST_TIER"] == "env")

def connect():
    if proxy:
        ph, pp = proxy.rstrip("/").rsplit("//", 1)[-1].rsplit(":", 1)
        raw = socket.create_connection((ph, int(pp)), timeout=20)
        raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += raw.recv(1)
        assert head.split()[1] == b"200", head
    else:
        raw = socket.create_connection((host, port), timeout=20)
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(raw, server_hostname=host)

def req(path):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()

def answer(s, kept=True):
    r = http.client.HTTPResponse(s, method="GET")
    r.begin()
    body = json.loads(r.read())
    if kept:
        assert not r.will_close, ("the proxy closes the connection", r.getheaders())
    return [r.status, body["target"]]

out = []
s = connect()
s.sendall(req("/rest-1"))
out.append(answer(s))
time.sleep(REST)
s.sendall(req("/rest-2"))
out.append(answer(s))
time.sleep(REST)
ws = websocket.create_connection(f"wss://{host}:{port}/ws", socket=s, timeout=20,
                                 header=[f"Authorization: Bearer {token}"])
ws.send("after a rest")
out.append(ws.recv())
ws.close()
# Pipelined: the next request's head starts in the same write as this one, ends after a rest.
s = connect()
third, fourth = req("/rest-3"), req("/rest-4")
s.sendall(third + fourth[:20])
out.append(answer(s))
time.sleep(REST)
s.sendall(fourth[20:])
out.append(answer(s, kept=False))
# ... and the proxy closes that connection, as its `connection: close` said.
s.settimeout(10)
out.append(s.recv(1) == b"")
print(json.dumps(out))
"#;
    let token = fx.token();
    let port = fx.up.port().to_string();
    let out = fx.python(&[], script, &[BOUND, &port, &token]);
    assert_eq!(
        stdout_json(&out),
        json!([
            [200, "/rest-1"],
            [200, "/rest-2"],
            "after a rest",
            [200, "/rest-3"],
            [200, "/rest-4"],
            true
        ]),
        "{}",
        describe(&out)
    );
    let recs = fx.up.wait_for_requests(5, WAIT);
    let paths: Vec<_> = recs.iter().map(|r| r.path().to_owned()).collect();
    assert_eq!(paths, ["/rest-1", "/rest-2", "/ws", "/rest-3", "/rest-4"]);
    for rec in &recs {
        assert_eq!(
            rec.header_str("authorization"),
            Some(format!("Bearer {SECRET}")),
            "{rec:#?}"
        );
    }
    let frames = fx.up.ws_frames();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].payload, b"after a rest");
}

#[test]
fn responses_that_echo_the_value_show_the_child_the_token() {
    let fx = Fx::new();
    let token = fx.token();
    let header = format!("X-Api-Key: {token}");
    let body = json!({"token": token, "again": format!("<{token}>")}).to_string();
    let out = fx.curl(
        &[],
        &[
            "-H",
            &header,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &fx.url(BOUND, "/echo"),
        ],
    );
    let echo = stdout_json(&out);
    assert!(
        free_of(&out.stdout, SECRET.as_bytes()),
        "{}",
        describe(&out)
    );
    assert_eq!(echo["headers"]["x-api-key"], token.as_str());
    let echoed: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        echoed,
        json!({"token": token, "again": format!("<{token}>")})
    );

    // The upstream did get the value, in both places.
    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert_eq!(rec.header_str("x-api-key").as_deref(), Some(SECRET));
    let sent: Value = serde_json::from_slice(&rec.body_prefix).unwrap();
    assert_eq!(
        sent,
        json!({"token": SECRET, "again": format!("<{SECRET}>")})
    );
}

#[test]
fn the_child_environment_holds_tokens_not_secrets_or_key_material() {
    let fx = Fx::new();
    let mut cmd = fx.run_cmd(&["--seal", "TIER0_SECRET=api.github.com"], &["env"]);
    cmd.env("TIER0_SECRET", SECRET);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = stdout_str(succeeded(&out));
    assert!(free_of(&out.stdout, SECRET.as_bytes()), "{text}");
    let key = fx.env.key();
    assert!(free_of(&out.stdout, hex(&key).as_bytes()), "{text}");
    assert!(
        free_of(&out.stdout, hex(&key).to_uppercase().as_bytes()),
        "{text}"
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    assert!(free_of(&out.stdout, b64.as_bytes()), "{text}");

    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("TIER0_SECRET="))
        .unwrap_or_else(|| panic!("no TIER0_SECRET in the child's env:\n{text}"));
    assert!(token.starts_with("starpod:v1:"), "{token}");
    assert_eq!(
        fx.env.unseal(token),
        Some((SECRET.to_owned(), vec![BOUND.to_owned()]))
    );
    assert!(
        text.lines().any(|l| l.starts_with("SSL_CERT_FILE=")),
        "{text}"
    );
    // Tier 0 works through proxy variables; Tier 1 needs none and sets none.
    for var in ["HTTPS_PROXY=http://127.0.0.1:", "https_proxy="] {
        let set = text.lines().any(|l| l.starts_with(var));
        assert_eq!(
            set,
            crate::TIER == "env",
            "{var} in tier {}: {text}",
            crate::TIER
        );
    }
}

#[test]
fn server_sent_events_stream_through_as_they_come() {
    let fx = Fx::new();
    let script = r#"
import json, sys, time, requests
url, token = sys.argv[1], sys.argv[2]
r = requests.get(url, headers={"Authorization": "Bearer " + token}, stream=True, timeout=30)
times, data = [], []
for line in r.iter_lines(chunk_size=1):
    if line.startswith(b"data: "):
        times.append(time.monotonic())
        data.append(line.decode())
print(json.dumps({"status": r.status_code, "type": r.headers.get("content-type"),
                  "data": data, "spread_ms": (times[-1] - times[0]) * 1000 if times else 0}))
"#;
    let token = fx.token();
    let result = stdout_json(&fx.python(&[], script, &[&fx.url(BOUND, "/sse"), &token]));
    assert_eq!(result["status"], 200, "{result}");
    assert_eq!(result["type"], "text/event-stream", "{result}");
    let expected: Vec<String> = (1..=5).map(|n| format!("data: {{\"n\":{n}}}")).collect();
    assert_eq!(result["data"], json!(expected), "{result}");
    // The upstream spaces five events 50 ms apart (200 ms in all): if the proxy held the body
    // back, they would all arrive together at the end. (Loose bound: the machine may be busy.)
    let spread = result["spread_ms"].as_f64().unwrap();
    assert!(spread >= 50.0, "events arrived together: {result}");
    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert_eq!(rec.path(), "/sse");
    assert_eq!(
        rec.header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
}

#[test]
fn http2_trailers_reach_the_client() {
    let fx = Fx::new();
    let out = fx.curl(&[], &["--http2", "-v", &fx.url(BOUND, "/trailers")]);
    succeeded(&out);
    assert_eq!(out.stdout, b"trailers follow\n", "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("< grpc-status: 0"), "{}", describe(&out));
    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert_eq!(rec.version, Version::HTTP_2);
}

/// HEAD answers (uv asks for a wheel's size with HEAD) keep their `Content-Length` and carry
/// no body, over HTTP/2 and HTTP/1.1, with and without a token in the request.
#[test]
fn head_requests_get_their_headers() {
    let fx = Fx::new();
    let token = fx.token();
    for version in ["--http2", "--http1.1"] {
        for auth in ["x: none".to_owned(), format!("Authorization: Bearer {token}")] {
            let out = fx.curl(
                &[],
                &[version, "-sSI", "--fail", "-H", &auth, &fx.url(BOUND, "/big?bytes=1000")],
            );
            let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
            assert!(
                out.status.success() && head.contains("content-length: 1000"),
                "{version} {auth}: {}",
                describe(&out)
            );
        }
    }
    let requests = fx.up.wait_for_requests(4, WAIT);
    assert!(requests.iter().all(|r| r.method == "HEAD"), "{requests:#?}");
    assert!(requests.iter().any(|r| r.contains(SECRET.as_bytes())));
}

#[test]
fn a_64mib_download_arrives_complete() {
    let fx = Fx::new();
    let token = fx.token();
    let file = fx.env.path("big.bin");
    let header = format!("Authorization: Bearer {token}");
    let url = fx.url(BOUND, &format!("/big?bytes={BIG}"));
    // With a substituted token the response goes through the redactor too.
    let out = fx.curl(
        &[],
        &[
            "-H",
            &header,
            "-o",
            file.to_str().unwrap(),
            "-w",
            "%{size_download}",
            &url,
        ],
    );
    assert_eq!(stdout_str(succeeded(&out)), BIG.to_string());
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), BIG);
    let mut expected = Vec::with_capacity(BIG);
    pattern_into(&mut expected, 0, BIG);
    assert!(
        data == expected,
        "downloaded bytes differ from /big's pattern"
    );
    let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
    assert_eq!(
        rec.header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
}

#[test]
fn expect_100_continue_uploads_work() {
    let fx = Fx::new();
    let token = fx.token();
    // One body small enough to be read whole, one large enough to be streamed.
    let small = Layout::new(2 * 1024 * 1024, token.len(), 10);
    let large = Layout::new(10 * 1024 * 1024, token.len(), 10);
    let small_file = fx.env.path("small.bin");
    let large_file = fx.env.path("large.bin");
    std::fs::write(&small_file, small.body(token.as_bytes())).unwrap();
    std::fs::write(&large_file, large.body(token.as_bytes())).unwrap();
    let small_arg = format!("@{}", small_file.display());
    let large_arg = format!("@{}", large_file.display());
    let (url_small, url_large) = (fx.url(BOUND, "/small"), fx.url(BOUND, "/large"));
    let common = [
        "--http1.1",
        "-v",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
    ];
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        small_arg.as_str(),
        url_small.as_str(),
        "--next",
        "-sS",
        "--max-time",
        "30",
    ]);
    args.extend(common);
    args.extend([large_arg.as_str(), url_large.as_str()]);
    let out = fx.curl(&[], &args);
    succeeded(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("> Expect: 100-continue").count(),
        2,
        "{}",
        describe(&out)
    );
    assert_eq!(
        stderr.matches("< HTTP/1.1 100 Continue").count(),
        2,
        "{}",
        describe(&out)
    );

    let requests = fx.up.wait_for_requests(2, WAIT);
    for (path, layout) in [("/small", small), ("/large", large)] {
        let rec = requests.iter().find(|r| r.path() == path).unwrap();
        let expected = layout.body(SECRET.as_bytes());
        assert!(rec.complete, "{path}");
        assert_eq!(rec.body_len, expected.len() as u64, "{path}");
        assert_eq!(rec.body_sha256, fast_sha256(&expected), "{path}");
    }
}
