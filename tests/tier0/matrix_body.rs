// The client matrix, included by tests/tier0_matrix.rs (Tier 0) and tests/tier1_matrix.rs
// (Tier 1); `crate::TIER` says which. Each real client does its real job (a package installed,
// a repository checked out, a module downloaded, an API called) against registries the test
// upstream serves from files (tests/common/registry.rs), with a sealed token as its only
// credential; judged by the client finishing its job and by what the upstream received (the
// real secret, never a token).

use std::path::{Path, PathBuf};

use common::registry::{self, GO_MODULE, PACKAGE, VALUE};
use common::*;
use tier0::*;

/// The registries of [`registry`] served by the upstream of `fx`; returns `/files`' URL.
fn registries(fx: &Fx) -> String {
    let dir = fx.env.path("files");
    let base = fx.url(BOUND, "/files");
    registry::make_all(&dir, &base);
    fx.up.serve_files(&dir, SECRET);
    base
}

/// A fresh directory under the scratch root (the command's working directory).
fn project(fx: &Fx, name: &str) -> PathBuf {
    let dir = fx.env.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The client finished and printed [`VALUE`] (which the registries give only to requests that
/// carry the real secret); a request for `/files/` carried the secret and none showed a
/// token; neither its output nor its stderr shows the secret.
fn judge(fx: &Fx, what: &str, out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains(VALUE),
        "[{what}] did not finish its job: {}",
        describe(out)
    );
    assert!(free_of(&out.stdout, SECRET.as_bytes()), "[{what}] stdout");
    assert!(free_of(&out.stderr, SECRET.as_bytes()), "[{what}] stderr");
    let requests: Vec<Recorded> = fx
        .up
        .requests()
        .into_iter()
        .filter(|r| r.path().starts_with("/files/"))
        .collect();
    let carried = |r: &Recorded| {
        r.contains(SECRET.as_bytes())
            || r.basic_credentials().is_some_and(|(user, password)| {
                password == SECRET.as_bytes() || user == SECRET.as_bytes()
            })
    };
    assert!(
        requests.iter().any(carried),
        "[{what}] no request carried the secret: {requests:#?}"
    );
    for r in &requests {
        assert!(!r.contains(b"starpod:"), "[{what}] a token went upstream: {r:#?}");
    }
}

/// The path of the interpreter `python3` runs.
fn python_executable() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The rustup toolchain of the test's own user (the command's `$HOME` is the scratch root).
fn rustup_home() -> String {
    std::env::var("RUSTUP_HOME").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.rustup")
    })
}

#[test]
fn pip_installs_from_an_index_with_a_token_in_its_url() {
    let fx = Fx::new();
    let base = registries(&fx);
    let index = with_userinfo(&base, "__token__", &fx.token(), "/simple/");
    // The interpreter itself: pyenv's shim would rehash after an install, which Tier 1's
    // read-only ~/.pyenv refuses (README: Known gaps).
    let python = python_executable();
    let script = r#""$2" -m pip install -q --no-cache-dir --disable-pip-version-check \
        --no-input --target ./site --index-url "$1" nctest \
        && PYTHONPATH=./site "$2" -c 'import nctest; print(nctest.VALUE)'"#;
    let out = fx.run(&[], &["sh", "-c", script, "sh", &index, &python]);
    judge(&fx, "pip", &out);
}

#[test]
fn uv_installs_from_an_index_with_a_token_in_its_url() {
    let fx = Fx::new();
    let base = registries(&fx);
    let index = with_userinfo(&base, "__token__", &fx.token(), "/simple/");
    let script = r#"uv pip install -q --no-cache --python python3 --target ./site \
        --index-url "$1" nctest \
        && PYTHONPATH=./site python3 -c 'import nctest; print(nctest.VALUE)'"#;
    let out = fx.run(&[], &["sh", "-c", script, "sh", &index]);
    judge(&fx, "uv", &out);
}

#[test]
fn npm_installs_from_a_registry_with_an_auth_token() {
    let fx = Fx::new();
    let base = registries(&fx);
    let dir = project(&fx, "npm-project");
    std::fs::write(
        dir.join("package.json"),
        format!(r#"{{"name":"p","version":"1.0.0","dependencies":{{"{PACKAGE}":"0.1.0"}}}}"#),
    )
    .unwrap();
    let registry = format!("{base}/npm/");
    let scope = registry.trim_start_matches("https:");
    std::fs::write(
        dir.join(".npmrc"),
        format!("registry={registry}\n{scope}:_authToken=${{NPM_TOKEN}}\n"),
    )
    .unwrap();
    let script = r#"cd npm-project && npm install --no-audit --no-fund --loglevel=error \
        --cache ../npm-cache && node -e "console.log(require('nctest').value)""#;
    let mut cmd = fx.run_cmd(&["--seal", "NPM_TOKEN=api.github.com"], &["sh", "-c", script]);
    cmd.env("NPM_TOKEN", SECRET);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    judge(&fx, "npm", &out);
}

#[test]
fn cargo_fetches_from_a_sparse_registry_that_requires_a_token() {
    let fx = Fx::new();
    let base = registries(&fx);
    let dir = project(&fx, "crate");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::create_dir_all(dir.join(".cargo")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"p\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{PACKAGE} = {{ version = \"0.1.0\", registry = \"nc\" }}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join(".cargo/config.toml"),
        format!(
            "[registries.nc]\nindex = \"sparse+{base}/cargo/index/\"\n\n[registry]\nglobal-credential-providers = [\"cargo:token\"]\n"
        ),
    )
    .unwrap();
    let script = r#"cd crate && cargo fetch -q && cat ../cargo-home/registry/src/*/nctest-0.1.0/src/lib.rs"#;
    let mut cmd = fx.run_cmd(
        &["--seal", "CARGO_REGISTRIES_NC_TOKEN=api.github.com"],
        &["sh", "-c", script],
    );
    cmd.env("CARGO_REGISTRIES_NC_TOKEN", SECRET)
        .env("CARGO_HOME", fx.env.path("cargo-home"))
        .env("RUSTUP_HOME", rustup_home());
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    judge(&fx, "cargo", &out);
}

#[test]
fn git_clones_over_https_with_a_credential_store() {
    let fx = Fx::new();
    let base = registries(&fx);
    let store = fx.env.path("git-credentials");
    std::fs::write(
        &store,
        format!("{}\n", with_userinfo(&base, "x-access-token", &fx.token(), "")),
    )
    .unwrap();
    let helper = format!("credential.helper=store --file={}", store.display());
    let script = r#"git -c "$1" clone -q "$2/repo.git" checkout && cat checkout/README"#;
    let out = fx.run(&[], &["sh", "-c", script, "sh", &helper, &base]);
    judge(&fx, "git", &out);
}

#[test]
fn go_downloads_a_module_from_a_goproxy_with_netrc_credentials() {
    let fx = Fx::new();
    let base = registries(&fx);
    let netrc = fx.env.path("netrc");
    std::fs::write(
        &netrc,
        format!("machine {BOUND} login x password {}\n", fx.token()),
    )
    .unwrap();
    let script = r#"go mod download -json "$1@v0.1.0" > /dev/null \
        && cat gopath/pkg/mod/example.test/nctest@v0.1.0/nctest.go"#;
    let root: &Path = fx.env.root();
    let mut cmd = fx.run_cmd(&[], &["sh", "-c", script, "sh", GO_MODULE]);
    cmd.env("GOPROXY", format!("{base}/goproxy"))
        .env("GOSUMDB", "off")
        .env("GOFLAGS", "-modcacherw")
        .env("GOPATH", root.join("gopath"))
        .env("GOCACHE", root.join("gocache"))
        .env("GOTOOLCHAIN", "local")
        .env("NETRC", &netrc);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    judge(&fx, "go", &out);
}

/// An upstream for the AI APIs' own names, reached at their default port 443 through
/// `--resolve NAME:443=127.0.0.1:PORT`: the SDKs run with their default base URLs.
struct Apis {
    up: Upstream,
}

impl Apis {
    const NAMES: [&'static str; 2] = ["api.openai.com", "api.anthropic.com"];

    fn start(fx: &Fx) -> Self {
        Apis {
            up: Upstream::start(&fx.ca, &Self::NAMES),
        }
    }

    /// `netcage run` with VAR sealed (its default hosts) and the pins.
    fn run(&self, fx: &Fx, var: &str, script: &str) -> std::process::Output {
        let mut opts = vec!["--seal".to_owned(), var.to_owned()];
        for name in Self::NAMES {
            opts.push("--resolve".into());
            opts.push(format!("{name}:443=127.0.0.1:{}", self.up.port()));
        }
        let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
        let mut cmd = fx.run_cmd(&opts, &["python3", "-c", script]);
        cmd.env(var, SECRET);
        run_with_timeout(&mut cmd, RUN_TIMEOUT)
    }

    /// The SDK finished, and the request the upstream got for `path` had one of `wants` (a
    /// header and its value: the real secret in place of the token).
    fn judge(&self, what: &str, out: &std::process::Output, path: &str, wants: &[(&str, String)]) {
        assert!(out.status.success(), "[{what}] {}", describe(out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("status 200"),
            "[{what}] {}",
            describe(out)
        );
        assert!(free_of(&out.stdout, SECRET.as_bytes()), "[{what}] stdout");
        assert!(free_of(&out.stderr, SECRET.as_bytes()), "[{what}] stderr");
        let requests = self.up.wait_for_requests(1, WAIT);
        let r = requests
            .iter()
            .find(|r| r.path() == path)
            .unwrap_or_else(|| panic!("[{what}] no request for {path}: {requests:#?}"));
        assert!(
            wants
                .iter()
                .any(|(header, want)| r.header_str(header).as_deref() == Some(want.as_str())),
            "[{what}] {r:#?}"
        );
        assert!(!r.contains(b"starpod:"), "[{what}] {r:#?}");
    }
}

#[test]
fn the_openai_sdk_calls_its_default_base_url_with_the_real_key() {
    let fx = Fx::new();
    let apis = Apis::start(&fx);
    let script = r#"
from openai import OpenAI
r = OpenAI(max_retries=0).chat.completions.with_raw_response.create(
    model="gpt-test", messages=[{"role": "user", "content": "hi"}])
print("status", r.http_response.status_code)
"#;
    let out = apis.run(&fx, "OPENAI_API_KEY", script);
    let wants = [("authorization", format!("Bearer {SECRET}"))];
    apis.judge(&fx_name("openai"), &out, "/v1/chat/completions", &wants);
}

#[test]
fn the_anthropic_sdk_calls_its_default_base_url_with_the_real_key() {
    let fx = Fx::new();
    let apis = Apis::start(&fx);
    let script = r#"
from anthropic import Anthropic
r = Anthropic(max_retries=0).messages.with_raw_response.create(
    model="claude-test", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
print("status", r.http_response.status_code)
"#;
    let out = apis.run(&fx, "ANTHROPIC_API_KEY", script);
    // Older SDKs send the key as `x-api-key`, newer ones as a bearer token.
    let wants = [
        ("x-api-key", SECRET.to_owned()),
        ("authorization", format!("Bearer {SECRET}")),
    ];
    apis.judge(&fx_name("anthropic"), &out, "/v1/messages", &wants);
}

fn fx_name(client: &str) -> String {
    format!("{client}, tier {}", crate::TIER)
}

/// `https://USER:TOKEN@HOST:PORT/files` + `suffix`, the token percent-encoded.
fn with_userinfo(base: &str, user: &str, token: &str, suffix: &str) -> String {
    let rest = base.strip_prefix("https://").expect("an https base");
    format!("https://{user}:{}@{rest}{suffix}", pct(token))
}
