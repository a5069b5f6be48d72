//! Tier 0 end to end: the leak guard. A command that holds a real value (here read from a file,
//! as if it had reached the command by some other path) cannot send it to a host its token is
//! not bound to — in a header, Basic credentials, the query (raw or percent-encoded), the path,
//! a buffered body, a form body, or a streamed body with the value split across reads — while
//! the same value to its own host, and token substitution, still work. Every refusal is checked
//! on the upstream side: nothing carrying the value may have arrived there.

mod common;
mod tier0;

const TIER: &str = "env";

use std::process::Output;

use common::*;
use serde_json::{Value, json};
use tier0::*;

/// A second sealed value, with characters that percent-encoding changes.
const PASSWORD: &str = "p@ss:w/rd+Tier0 Pass42";

/// The options that seal [`SECRET`] (as `TIER0_TOKEN`) and [`PASSWORD`] (as `TIER0_PASS`) for
/// [`BOUND`].
const SEALS: [&str; 4] = [
    "--seal",
    "TIER0_TOKEN=api.github.com",
    "--seal",
    "TIER0_PASS=api.github.com",
];

/// Defines `c`: curl printing the body, then the status code on a line of its own.
const CURL: &str = "c() { curl -sS --max-time 30 -w '\\n%{http_code}\\n' \"$@\"; }";

/// Writes the real values where the command can read them (the leak the guard is for).
fn value_files(fx: &Fx) -> (String, String) {
    let secret = fx.env.path("leaked-secret");
    let password = fx.env.path("leaked-password");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::write(&password, PASSWORD).unwrap();
    (
        secret.to_str().unwrap().to_owned(),
        password.to_str().unwrap().to_owned(),
    )
}

/// `sh -c SCRIPT sh ARGS` under `netcage run` with the values sealed (`extra` options too).
fn run_script(fx: &Fx, extra: &[&str], script: &str, args: &[&str]) -> Output {
    let mut opts = SEALS.to_vec();
    opts.extend_from_slice(extra);
    let mut child = vec!["sh", "-c", script, "sh"];
    child.extend_from_slice(args);
    let mut cmd = fx.run_cmd(&opts, &child);
    cmd.env("TIER0_TOKEN", SECRET).env("TIER0_PASS", PASSWORD);
    run_with_timeout(&mut cmd, RUN_TIMEOUT)
}

/// The script's output: the tokens it printed first (one per line, `n_tokens` of them), then
/// one (body, status) pair per `c` call.
fn parse(out: &Output, n_tokens: usize) -> (Vec<String>, Vec<(String, String)>) {
    let text = stdout_str(succeeded(out));
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let tokens: Vec<String> = lines.by_ref().take(n_tokens).map(str::to_owned).collect();
    let rest: Vec<&str> = lines.collect();
    assert!(
        rest.len().is_multiple_of(2),
        "body/status pairs: {}",
        describe(out)
    );
    let pairs = rest
        .chunks(2)
        .map(|p| (p[0].to_owned(), p[1].to_owned()))
        .collect();
    (tokens, pairs)
}

/// Every byte as `%xx` (lower-case hex): only a decoder finds the value in that.
fn pct_all(text: &str) -> String {
    text.bytes().map(|b| format!("%{b:02x}")).collect()
}

/// A 403 body of the leak guard for a value sealed in `token`.
fn assert_leak_refusal(body: &str, token: &str, what: &str) {
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(
        json["fingerprint"],
        netcage::token::fingerprint(token),
        "{what}: {json}"
    );
    assert_eq!(json["host"], OTHER, "{what}: {json}");
    assert_eq!(json["bound_hosts"], json!([BOUND]), "{what}: {json}");
    let error = json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("blocked") && error.contains("real value"),
        "{what}: {json}"
    );
    assert!(!body.contains(SECRET) && !body.contains(PASSWORD), "{what}");
}

/// The audit log must not hold the password either (the fixture checks [`SECRET`]).
fn assert_audit_free_of_password(fx: &Fx) {
    let log = std::fs::read(&fx.audit).unwrap_or_default();
    assert!(
        free_of(&log, PASSWORD.as_bytes()),
        "the audit log holds the password"
    );
}

#[test]
fn a_real_value_sent_to_another_host_is_refused_wherever_the_command_puts_it() {
    let fx = Fx::new();
    let (secret_file, password_file) = value_files(&fx);
    let script = format!(
        r#"{CURL}
v=$(cat "$1"); p=$(cat "$2"); u=$3
printf '%s\n%s\n' "$TIER0_TOKEN" "$TIER0_PASS"
c -H "X-Api-Key: $v" "$u/header"
c -u "x-access-token:$v" "$u/basic"
c "$u/query?k=$v"
c "$u/query-pct?k=$4"
c "$u/path/$v/x"
c --data-binary "{{\"t\":\"$v\"}}" "$u/body"
c --data-urlencode "p=$p" "$u/form"
"#
    );
    let base = fx.url(OTHER, "");
    let enc = pct_all(SECRET);
    let out = run_script(
        &fx,
        &[],
        &script,
        &[&secret_file, &password_file, &base, &enc],
    );
    let (tokens, answers) = parse(&out, 2);
    let (token, pass_token) = (&tokens[0], &tokens[1]);
    assert!(token.starts_with("starpod:v1:"), "{}", describe(&out));
    let cases = [
        ("header", "header:x-api-key", token),
        ("basic", "header:authorization", token),
        ("query", "target", token),
        ("query-pct", "target", token),
        ("path", "target", token),
        ("body", "body", token),
        ("form", "body", pass_token),
    ];
    assert_eq!(answers.len(), cases.len(), "{}", describe(&out));
    for ((what, _, token), (body, code)) in cases.iter().zip(&answers) {
        assert_eq!(code, "403", "{what}: {body}");
        assert_leak_refusal(body, token, what);
    }

    // Nothing reached the upstream at all: the guard refuses before connecting.
    assert!(fx.up.requests().is_empty(), "{:#?}", fx.up.requests());
    assert_eq!(fx.up.connections(), 0);
    // One audit line per refusal, with the fingerprint and where the value was.
    let lines = fx.wait_audit_count("the seven refusals", cases.len(), |l| {
        field(l, "decision") == "block" && field(l, "host") == OTHER
    });
    assert_eq!(lines.len(), cases.len(), "{lines:#?}");
    for (what, location, token) in cases {
        // A path that holds the value is left out of the line.
        let path = format!("/{what}");
        let line = lines
            .iter()
            .find(|l| match what {
                "path" => l.get("path").is_none(),
                _ => field(l, "path") == path,
            })
            .unwrap_or_else(|| panic!("no audit line for {what}: {lines:#?}"));
        assert_eq!(line["status"], 403, "{line}");
        assert!(field(line, "reason").contains("real value"), "{line}");
        let used = &line["tokens"][0];
        assert_eq!(
            used["fingerprint"],
            netcage::token::fingerprint(token),
            "{line}"
        );
        assert_eq!(used["action"], "block", "{line}");
        assert_eq!(used["where"], location, "{line}");
    }
    assert_audit_free_of_password(&fx);
}

#[test]
fn the_same_value_to_its_own_host_passes_and_tokens_are_still_substituted() {
    let fx = Fx::new();
    let (secret_file, _) = value_files(&fx);
    let script = format!(
        r#"{CURL}
v=$(cat "$1")
c -H "X-Api-Key: $v" "$2/own-header?k=$v"
c --data-binary "{{\"t\":\"$v\"}}" "$2/own-body"
c -H "Authorization: Bearer $TIER0_TOKEN" "$2/own-token"
c -H "X-Nothing: here" "$3/clean?q=1"
"#
    );
    let out = run_script(
        &fx,
        &[],
        &script,
        &[&secret_file, &fx.url(BOUND, ""), &fx.url(OTHER, "")],
    );
    let (_, answers) = parse(&out, 0);
    let codes: Vec<&str> = answers.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(codes, ["200"; 4], "{}", describe(&out));

    let requests = fx.up.wait_for_requests(4, WAIT);
    let find = |path: &str| {
        requests
            .iter()
            .find(|r| r.path() == path)
            .unwrap_or_else(|| panic!("{path} did not arrive: {requests:#?}"))
    };
    let own = find("/own-header");
    assert_eq!(own.header_str("x-api-key").as_deref(), Some(SECRET));
    assert_eq!(own.target, format!("/own-header?k={SECRET}"));
    assert!(contains(&find("/own-body").body_prefix, SECRET.as_bytes()));
    assert_eq!(
        find("/own-token").header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
    let clean = find("/clean");
    assert_eq!(clean.sni.as_deref(), Some(OTHER));
    assert!(!clean.contains(SECRET.as_bytes()));
    let allowed = fx.wait_audit_count("four allowed requests", 4, |l| {
        field(l, "decision") == "allow" && l["status"] == 200
    });
    assert_eq!(allowed.len(), 4, "{allowed:#?}");
}

#[test]
fn strip_mode_and_plaintext_http_do_not_let_a_real_value_through() {
    let fx = Fx::new();
    let plain = Upstream::start_plain();
    let policy = fx.env.path("strip.toml");
    std::fs::write(
        &policy,
        "[secrets]\non_host_mismatch = \"strip\"\nplaintext_http = true\n",
    )
    .unwrap();
    let (secret_file, _) = value_files(&fx);
    let script = format!(
        r#"{CURL}
v=$(cat "$1")
printf '%s\n' "$TIER0_TOKEN"
c -H "X-Api-Key: $v" "$2/strip"
c -H "X-Api-Key: $v" "$3/plain"
c -H "X-Api-Key: $TIER0_TOKEN" "$2/stripped-token"
"#
    );
    let out = run_script(
        &fx,
        &["--policy", policy.to_str().unwrap()],
        &script,
        &[&secret_file, &fx.url(OTHER, ""), &plain.url(OTHER, "")],
    );
    let (tokens, answers) = parse(&out, 1);
    assert_eq!(answers.len(), 3, "{}", describe(&out));
    for (what, (body, code)) in ["strip", "plain"].iter().zip(&answers) {
        assert_eq!(code, "403", "{what}: {body}");
        assert_leak_refusal(body, &tokens[0], what);
    }
    // Strip mode still strips a token: the guard changes nothing for tokens.
    assert_eq!(answers[2].1, "200", "{}", describe(&out));
    let requests = fx.up.wait_for_requests(1, WAIT);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].path(), "/stripped-token");
    assert!(!requests[0].contains(SECRET.as_bytes()), "{requests:#?}");
    assert_eq!(plain.connections(), 0, "{:#?}", plain.requests());
    let blocks = fx.wait_audit_count("two refusals", 2, |l| {
        field(l, "decision") == "block" && field(l, "reason").contains("real value")
    });
    assert_eq!(blocks.len(), 2, "{blocks:#?}");
}

#[test]
fn a_streamed_body_with_a_real_value_is_cut_off_before_the_value() {
    let fx = Fx::new();
    // Larger than netcage reads whole, so it streams; the value straddles a 64 KiB boundary
    // (and so every smaller power of two), so some read boundary splits it.
    let at = 6 * 1024 * 1024 - SECRET.len() / 2;
    let mut data = Vec::new();
    pattern_into(&mut data, 0, at);
    data.extend_from_slice(SECRET.as_bytes());
    let rest = 12 * 1024 * 1024 - data.len();
    pattern_into(&mut data, at, rest);
    let file = fx.env.path("upload.bin");
    std::fs::write(&file, &data).unwrap();
    let upload = format!("@{}", file.display());

    // Python's requests sends a generator chunked: the value is split between two chunks.
    let script = r#"
import os, requests, sys
value = open(sys.argv[1]).read()
half = len(value) // 2
def body():
    yield b"x" * 100000 + value[:half].encode()
    yield value[half:].encode() + b"y" * 1000
for url in sys.argv[2:]:
    try:
        r = requests.post(url, data=body(), timeout=30)
        print(r.status_code)
    except requests.RequestException as e:
        print("failed", type(e).__name__)
    sys.stdout.flush()
"#;
    let (secret_file, _) = value_files(&fx);
    let mut child = vec!["python3", "-c", script, &secret_file];
    let split_other = fx.url(OTHER, "/split-other");
    let split_own = fx.url(BOUND, "/split-own");
    child.extend([split_other.as_str(), split_own.as_str()]);
    let mut cmd = fx.run_cmd(&SEALS, &child);
    cmd.env("TIER0_TOKEN", SECRET).env("TIER0_PASS", PASSWORD);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = stdout_str(succeeded(&out));
    let results: Vec<&str> = text.lines().collect();
    assert_eq!(results.len(), 2, "{}", describe(&out));
    assert_ne!(results[0], "200", "{}", describe(&out));
    assert!(
        results[0] == "403" || results[0].starts_with("failed"),
        "{text}"
    );
    assert_eq!(
        results[1], "200",
        "the value split across chunks reaches its own host"
    );

    for (http, path) in [("--http1.1", "/big-h1"), ("--http2", "/big-h2")] {
        let url = fx.url(OTHER, path);
        let args = [http, "-w", "\n%{http_code}", "--data-binary", &upload, &url];
        let mut child = vec!["curl", "-sS", "--max-time", "30"];
        child.extend_from_slice(&args);
        let mut cmd = fx.run_cmd(&SEALS, &child);
        cmd.env("TIER0_TOKEN", SECRET).env("TIER0_PASS", PASSWORD);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(&out);
        // netcage answers 403 as soon as it finds the value, while the client is still
        // uploading; the client reads that 403 or fails to send the rest. Never success.
        let code = text.rsplit('\n').next().unwrap_or_default();
        assert!(
            code == "403" || !out.status.success() && !code.starts_with('2'),
            "{http}: the request was not refused: {}",
            describe(&out)
        );
        let line = fx.wait_audit(path, |l| {
            field(l, "path") == path && field(l, "decision") == "block"
        });
        assert_eq!(line["tokens"][0]["where"], "body", "{line}");
        assert_eq!(line["tokens"][0]["action"], "block", "{line}");
        assert!(field(&line, "reason").contains("real value"), "{line}");
    }
    let line = fx.wait_audit("/split-other", |l| {
        field(l, "path") == "/split-other" && field(l, "decision") == "block"
    });
    assert_eq!(line["tokens"][0]["where"], "body", "{line}");

    let requests = fx.up.requests();
    for rec in requests.iter().filter(|r| r.sni.as_deref() == Some(OTHER)) {
        assert!(!rec.complete, "the body arrived complete: {rec:#?}");
        let limit = if rec.path() == "/split-other" {
            100_000
        } else {
            at
        };
        assert!(
            rec.body_len <= limit as u64,
            "{}: bytes of the value went out: {} > {limit}",
            rec.path(),
            rec.body_len
        );
        assert!(!rec.contains(SECRET.as_bytes()), "{rec:#?}");
        assert!(
            !rec.contains(&SECRET.as_bytes()[..SECRET.len() / 2]),
            "{rec:#?}"
        );
    }
    let own = requests
        .iter()
        .find(|r| r.path() == "/split-own")
        .expect("/split-own arrived");
    assert!(own.complete, "{own:#?}");
    assert_eq!(own.body_len, 100_000 + SECRET.len() as u64 + 1000);
    assert!(contains(&own.body_prefix, SECRET.as_bytes()), "{own:#?}");
}

#[test]
fn a_value_the_proxy_has_opened_from_a_token_is_guarded_from_then_on() {
    let fx = Fx::new();
    // `netcage proxy` with nothing sealed: it learns the value when it opens the token.
    let proxy = ProxyProc::start(&fx, &[]);
    let token = fx.token();
    let curl = |header: &str, url: &str| {
        let mut cmd = std::process::Command::new("curl");
        isolate_client_env(&mut cmd, fx.env.root())
            .args(["-sS", "--max-time", "30", "-x", &proxy.url(), "--cacert"])
            .arg(fx.env.data_dir().join("proxy-ca.pem"))
            .args(["-w", "\n%{http_code}", "-H", header, url]);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        let text = stdout_str(succeeded(&out));
        let (body, code) = text.rsplit_once('\n').expect("body then status");
        (body.trim_end().to_owned(), code.to_owned())
    };
    let raw = format!("X-Api-Key: {SECRET}");
    // Before: the proxy has never seen the value, so it cannot know it.
    let (_, code) = curl(&raw, &fx.url(OTHER, "/before"));
    assert_eq!(code, "200");
    // The token is opened (and substituted) for its host...
    let (_, code) = curl(&format!("X-Api-Key: {token}"), &fx.url(BOUND, "/opened"));
    assert_eq!(code, "200");
    // ...and from then on the value itself is refused for other hosts, but not for its own.
    let (body, code) = curl(&raw, &fx.url(OTHER, "/after"));
    assert_eq!(code, "403", "{body}");
    assert_leak_refusal(&body, &token, "after");
    let (_, code) = curl(&raw, &fx.url(BOUND, "/own"));
    assert_eq!(code, "200");

    let paths: Vec<String> = fx
        .up
        .wait_for_requests(3, WAIT)
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    assert_eq!(paths, ["/before", "/opened", "/own"]);
    let line = fx.wait_audit("/after", |l| field(l, "path") == "/after");
    assert_eq!(line["decision"], "block", "{line}");
    assert_eq!(
        line["tokens"][0]["fingerprint"],
        netcage::token::fingerprint(&token),
        "{line}"
    );
}
