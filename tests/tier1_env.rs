//! The command's environment, end to end through the real binary (Tier 1 as root and
//! rootless, and Tier 0) and through the library: a sealed value is a token in every
//! variable that held it, credential-named variables and agent sockets are withheld and named
//! (never their values) on one stderr line, `--pass-env NAME` keeps one, and the token still
//! reaches its bound host as the real value — and no other host.

mod common;
mod tier1_support;

use std::collections::BTreeMap;
use std::process::{Command, Output};

use common::*;
use tier1_support::*;

/// Other variables' values that must not reach the command unless passed on purpose.
const FOO_VALUE: &str = "foo-real-credential-9001";
const BAR_VALUE: &str = "bar-real-password-9002";
const AGENT: &str = "/tmp/netcage-test-agent.sock";

/// The command: its environment (`env -0`), then the sealed GH_TOKEN sent to the bound host
/// and to another one (HTTP status of each).
const SCRIPT: &str = r#"env -0; printf '\n==curl==\n'
for url in "$1" "$2"; do
  curl -sS --max-time 20 -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer $GH_TOKEN" "$url"
done"#;

/// netcage's own environment: the sealed value under two more names and inside a URL, and
/// variables that must be withheld (or, the look-alike, passed).
fn set_env(cmd: &mut Command) {
    cmd.env("GITHUB_TOKEN", SECRET)
        .env("GH_TOKEN", SECRET)
        .env("REMOTE_URL", format!("https://x:{SECRET}@git.example/repo"))
        .env("FOO_TOKEN", FOO_VALUE)
        .env("BAR_PASSWORD", BAR_VALUE)
        .env("SSH_AUTH_SOCK", AGENT)
        .env("TOKENIZERS_PARALLELISM", "false");
}

/// `netcage run --tier TIER` with the fixture's data dir, CA, pins and audit log.
fn run(fx: &Fx, tier: &str, opts: &[&str]) -> Output {
    let mut cmd = fx.netcage();
    cmd.args(["run", "--tier", tier, "--data-dir"])
        .arg(fx.env.data_dir())
        .arg("--upstream-ca")
        .arg(&fx.ca_path)
        .args(["--resolve", &format!("{BOUND}=127.0.0.1")])
        .args(["--resolve", &format!("{OTHER}=127.0.0.1")])
        .arg("--audit")
        .arg(&fx.audit)
        .args(["--seal", "GITHUB_TOKEN"])
        .args(opts)
        .args(["--", "sh", "-c", SCRIPT, "sh"])
        .arg(fx.url(BOUND, "/bound"))
        .arg(fx.url(OTHER, "/other"));
    set_env(&mut cmd);
    run_with_timeout(&mut cmd, RUN_TIMEOUT)
}

/// The command's environment and the two HTTP statuses, from its stdout.
fn parse(out: &Output) -> (BTreeMap<String, String>, Vec<String>) {
    let text = String::from_utf8_lossy(&out.stdout);
    let (env, codes) = text
        .split_once("\n==curl==\n")
        .unwrap_or_else(|| panic!("{}", describe(out)));
    let env = env
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (env, codes.lines().map(str::to_owned).collect())
}

/// Everything the spec says about one run; `passed` = whether `--pass-env FOO_TOKEN` was given.
fn check(fx: &Fx, what: &str, out: &Output, passed: bool) {
    assert_eq!(out.status.code(), Some(0), "{what}: {}", describe(out));
    // The real value is nowhere in what the command saw or printed, nor on netcage's stderr.
    assert_no_secret_material(&out.stdout, &fx.env.key(), what);
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for value in [SECRET, BAR_VALUE] {
            assert!(
                free_of(bytes, value.as_bytes()),
                "{what}: {value} on {stream}: {}",
                describe(out)
            );
        }
    }
    assert_eq!(
        free_of(&out.stdout, FOO_VALUE.as_bytes()),
        !passed,
        "{what}: {}",
        describe(out)
    );
    assert!(free_of(&out.stderr, FOO_VALUE.as_bytes()), "{what}");

    let (env, codes) = parse(out);
    let token = env.get("GITHUB_TOKEN").expect("GITHUB_TOKEN");
    assert_eq!(
        fx.env.unseal(token),
        Some((
            SECRET.to_owned(),
            vec![BOUND.to_owned(), "github.com".to_owned()]
        )),
        "{what}: {token}"
    );
    assert_eq!(env.get("GH_TOKEN"), Some(token), "{what}: {env:#?}");
    assert_eq!(
        env.get("REMOTE_URL"),
        Some(&format!("https://x:{token}@git.example/repo")),
        "{what}"
    );
    assert_eq!(
        env.get("TOKENIZERS_PARALLELISM").map(String::as_str),
        Some("false")
    );
    assert_eq!(env.get("BAR_PASSWORD"), None, "{what}");
    assert_eq!(env.get("SSH_AUTH_SOCK"), None, "{what}");
    assert_eq!(
        env.get("FOO_TOKEN").map(String::as_str),
        passed.then_some(FOO_VALUE),
        "{what}"
    );

    // One line names what was withheld, and only that.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let notices: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("not passing"))
        .collect();
    assert_eq!(notices.len(), 1, "{what}: {stderr}");
    let notice = notices[0];
    assert!(
        notice.starts_with("netcage: not passing ") && notice.contains("--pass-env NAME"),
        "{what}: {notice}"
    );
    for name in ["BAR_PASSWORD", "SSH_AUTH_SOCK"] {
        assert!(notice.contains(name), "{what}: {notice}");
    }
    assert_eq!(notice.contains("FOO_TOKEN"), !passed, "{what}: {notice}");
    for name in ["GH_TOKEN", "GITHUB_TOKEN", "REMOTE_URL", "TOKENIZERS"] {
        assert!(!notice.contains(name), "{what}: {notice}");
    }

    // The token still works: the real value at the bound host only.
    assert_eq!(codes, ["200", "403"], "{what}: {}", describe(out));
    let with_secret = fx.requests_with_secret();
    assert_eq!(with_secret.len(), 1, "{what}: {with_secret:#?}");
    assert_eq!(with_secret[0].path(), "/bound", "{what}");
    assert_eq!(
        with_secret[0].header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
    assert_eq!(with_secret[0].sni.as_deref(), Some(BOUND), "{what}");
    assert!(
        fx.up.requests().iter().all(|r| r.path() != "/other"),
        "{what}: the token went to {OTHER}"
    );
    fx.up.clear();
}

#[test]
fn tier1_gives_tokens_for_sealed_values_everywhere_and_withholds_credential_names() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let out = run(&fx, "netns", &[]);
        check(&fx, &format!("[{}] netns", mode.name()), &out, false);
        let out = run(&fx, "netns", &["--pass-env", "FOO_TOKEN"]);
        check(
            &fx,
            &format!("[{}] netns --pass-env", mode.name()),
            &out,
            true,
        );
    });
}

#[test]
fn tier0_gives_tokens_for_sealed_values_everywhere_and_withholds_credential_names() {
    // Tier 0 needs no privilege: Mode::Root only means "no setpriv".
    let fx = Fx::new(Mode::Root);
    let out = run(&fx, "env", &[]);
    check(&fx, "env", &out, false);
    let out = run(&fx, "env", &["--pass-env", "FOO_TOKEN"]);
    check(&fx, "env --pass-env", &out, true);
}

#[test]
fn the_library_reports_what_it_withheld_and_passes_what_it_is_told() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: not root: this test builds the rootful sandbox from the test process");
        return;
    }
    common::ca::install_crypto_provider();
    let env = TestEnv::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (removed, out) = rt.block_on(async {
        let sandbox = netcage::Sandbox::builder()
            .data_dir(env.data_dir())
            .netcage_binary(env!("CARGO_BIN_EXE_netcage"))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("GH_TOKEN", SECRET)
            .env("FOO_TOKEN", FOO_VALUE)
            .env("SSH_AUTH_SOCK", AGENT)
            .env("BAR_PASSWORD", BAR_VALUE)
            .seal("GITHUB_TOKEN", SECRET, &[BOUND])
            .pass_env("BAR_PASSWORD")
            .start()
            .await
            .expect("the sandbox starts");
        let removed = sandbox.removed_env().to_vec();
        let out = sandbox
            .command("env")
            .arg("-0")
            .stdout(netcage::Stdio::Piped)
            .spawn()
            .await
            .expect("env starts")
            .wait_with_output()
            .await
            .expect("env runs");
        sandbox.shutdown(std::time::Duration::from_secs(2)).await;
        (removed, out)
    });
    assert_eq!(removed, ["FOO_TOKEN", "SSH_AUTH_SOCK"]);
    assert!(out.status.success());
    assert!(free_of(&out.stdout, SECRET.as_bytes()));
    assert!(free_of(&out.stdout, FOO_VALUE.as_bytes()));
    assert!(free_of(&out.stdout, AGENT.as_bytes()));
    let seen: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let token = &seen["GITHUB_TOKEN"];
    assert_eq!(
        env.unseal(token),
        Some((SECRET.to_owned(), vec![BOUND.to_owned()]))
    );
    assert_eq!(seen.get("GH_TOKEN"), Some(token), "{seen:#?}");
    assert_eq!(seen.get("FOO_TOKEN"), None, "{seen:#?}");
    assert_eq!(seen.get("SSH_AUTH_SOCK"), None, "{seen:#?}");
    assert_eq!(
        seen.get("BAR_PASSWORD").map(String::as_str),
        Some(BAR_VALUE)
    );
}
