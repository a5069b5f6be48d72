//! Sealed credential files in Tier 1 (root and rootless): the real file sits in a `$HOME`
//! outside the working directory; real clients (git, npm, gh, a docker-config client, curl)
//! read the sealed copy inside and do their job; `cat` of the file inside shows only tokens
//! and every other byte as it was; the upstream received the real secret. Also: a file that
//! does not parse stays hidden with one line saying so, and a token taken from a file is
//! refused on its way to another host.
//!
//! Nothing here talks to anything but 127.0.0.1 (real host names are pinned with --resolve).

mod common;
mod tier1_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::registry::{self, PACKAGE, VALUE};
use common::*;
use tier1_support::*;

/// A test's world: the fixture, a `$HOME` outside the working directory (and outside /tmp,
/// which is fresh in the sandbox), and the working directory.
struct World {
    fx: Fx,
    _home: tempfile::TempDir,
    home: PathBuf,
    work: PathBuf,
}

impl World {
    fn new(mode: Mode) -> World {
        let fx = Fx::new(mode);
        let dir = tempfile::Builder::new()
            .prefix("netcage-credfiles-home-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = dir.path().to_owned();
        let work = fx.env.path("work");
        std::fs::create_dir_all(&work).unwrap();
        World {
            fx,
            _home: dir,
            home,
            work,
        }
    }

    /// Writes `~/rel` (mode 0600).
    fn put(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.home.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// The registries of `tests/common/registry.rs` on the upstream; returns `/files`' URL.
    fn registries(&self) -> String {
        let dir = self.fx.env.path("files");
        let base = self.fx.url(BOUND, "/files");
        registry::make_all(&dir, &base);
        self.fx.up.serve_files(&dir, SECRET);
        base
    }

    /// `sh -c SCRIPT sh ARGS…` in the sandbox with this `$HOME`, from the working directory.
    fn sh(&self, opts: &[&str], script: &str, args: &[&str]) -> Output {
        if self.fx.mode == Mode::Rootless {
            chown_tree(self.fx.env.root());
            chown_tree(&self.home);
        }
        let mut child = vec!["sh", "-c", script, "sh"];
        child.extend_from_slice(args);
        let mut cmd = self.fx.run_cmd(opts, &child);
        cmd.env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .current_dir(&self.work);
        run_with_timeout(&mut cmd, RUN_TIMEOUT)
    }

    /// The requests for `path_prefix` the upstream recorded.
    fn requests(&self, path_prefix: &str) -> Vec<Recorded> {
        self.fx
            .up
            .requests()
            .into_iter()
            .filter(|r| r.path().starts_with(path_prefix))
            .collect()
    }
}

/// What the command printed between `--- file` and `--- end` (the `cat` of the file inside).
fn shown_file(out: &Output) -> String {
    let text = stdout_str(out);
    let start = text.find("--- file\n").map(|i| i + 9).unwrap_or(0);
    let end = text[start..]
        .find("--- end")
        .map_or(text.len(), |i| start + i);
    text[start..end].to_owned()
}

/// The first `starpod:v1:` token in `text` (raw, or percent-encoded as git's store writes it).
fn first_token(text: &str) -> String {
    let decoded = text
        .replace("%3A", ":")
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    let at = decoded.find("starpod:v1:").expect("a token in the file");
    decoded[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '+' | '/' | '='))
        .collect()
}

/// The command succeeded and printed `want`; the file inside held a token and not the
/// secret, byte for byte the real file with the token in place of the secret (as `encode`
/// writes it); neither output shows the secret; the upstream got the secret and no token.
fn judge(w: &World, what: &str, out: &Output, real: &str, encode: impl Fn(&str) -> String) {
    let mode = w.fx.mode.name();
    assert!(
        out.status.success() && stdout_str(out).contains(VALUE),
        "[{mode}] {what}: the client did not finish its job: {}",
        describe(out)
    );
    let inside = shown_file(out);
    let token = first_token(&inside);
    assert!(
        !inside.contains(SECRET),
        "[{mode}] {what}: the secret inside:\n{inside}"
    );
    assert_eq!(
        inside,
        real.replace(SECRET, &encode(&token)),
        "[{mode}] {what}: the file inside is not the real one with a token in place of the secret"
    );
    assert!(
        free_of(&out.stdout, SECRET.as_bytes()),
        "[{mode}] {what}: stdout"
    );
    assert!(
        free_of(&out.stderr, SECRET.as_bytes()),
        "[{mode}] {what}: stderr"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("netcage: sealed for the command: "),
        "[{mode}] {what}: netcage did not say what it sealed: {stderr}"
    );
    let requests = w.requests("/files/");
    let carried = |r: &Recorded| {
        r.contains(SECRET.as_bytes())
            || r.basic_credentials()
                .is_some_and(|(_, password)| password == SECRET.as_bytes())
    };
    assert!(
        requests.iter().any(carried),
        "[{mode}] {what}: no request carried the real secret: {requests:#?}"
    );
    for r in w.fx.up.requests() {
        assert!(
            !r.contains(b"starpod:"),
            "[{mode}] {what}: a token went upstream: {r:#?}"
        );
    }
}

fn pct(token: &str) -> String {
    token
        .replace(':', "%3A")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

#[test]
fn git_clones_with_a_sealed_git_credentials() {
    for_each_mode(|mode| {
        let w = World::new(mode);
        let base = w.registries();
        let port = w.fx.up.port();
        let real = format!("https://x-access-token:{SECRET}@{BOUND}:{port}\n");
        w.put(".git-credentials", &real);
        let script = r#"git -c credential.helper=store clone -q "$1/repo.git" checkout \
            && cat checkout/README && echo '--- file' && cat ~/.git-credentials && echo '--- end'"#;
        let out = w.sh(&[], script, &[&base]);
        judge(&w, "git", &out, &real, pct);
    });
}

#[test]
fn npm_installs_with_a_sealed_npmrc() {
    for_each_mode(|mode| {
        let w = World::new(mode);
        let base = w.registries();
        std::fs::write(
            w.work.join("package.json"),
            format!(r#"{{"name":"p","version":"1.0.0","dependencies":{{"{PACKAGE}":"0.1.0"}}}}"#),
        )
        .unwrap();
        let registry = format!("{base}/npm/");
        let scope = registry.trim_start_matches("https:");
        let real =
            format!("; mine\nregistry={registry}\n{scope}:_authToken={SECRET}\nfund=false\n");
        w.put(".npmrc", &real);
        let script = r#"npm install --no-audit --no-fund --loglevel=error --cache ../npm-cache \
            && node -e "console.log(require('nctest').value)" \
            && echo '--- file' && cat ~/.npmrc && echo '--- end'"#;
        let out = w.sh(&[], script, &[]);
        judge(&w, "npm", &out, &real, |t| t.to_owned());
    });
}

/// A client of `~/.docker/config.json` as docker's own: the registry's `auth` sent as Basic
/// credentials to `/v2/`.
const DOCKER_CLIENT: &str = r#"
import base64, json, os, ssl, sys, urllib.request
registry = sys.argv[1]
conf = json.load(open(os.path.expanduser("~/.docker/config.json")))
auth = conf["auths"][registry]["auth"]
req = urllib.request.Request(f"https://{registry}/files/v2/", headers={"Authorization": "Basic " + auth})
try:
    urllib.request.urlopen(req, context=ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"]))
except urllib.error.HTTPError as e:
    print("status", e.code)
print("user", base64.b64decode(auth).split(b":")[0].decode())
"#;

#[test]
fn a_docker_config_client_reaches_its_registry_with_sealed_auth() {
    for_each_mode(|mode| {
        let w = World::new(mode);
        let _ = w.registries();
        let registry = format!("{BOUND}:{}", w.fx.up.port());
        let auth = B64.encode(format!("me:{SECRET}"));
        let real = format!(
            "{{\n\t\"auths\": {{\n\t\t\"{registry}\": {{\n\t\t\t\"auth\": \"{auth}\"\n\t\t}}\n\t}}\n}}"
        );
        w.put(".docker/config.json", &real);
        let script = r#"/usr/bin/python3 -c "$1" "$2" && echo '--- file' && cat ~/.docker/config.json && echo '--- end'"#;
        let out = w.sh(&[], script, &[DOCKER_CLIENT, &registry]);
        let mname = mode.name();
        assert!(
            out.status.success() && stdout_str(&out).contains("user me"),
            "[{mname}] {}",
            describe(&out)
        );
        let inside = shown_file(&out);
        let sealed_auth = inside
            .split('"')
            .find(|s| {
                B64.decode(s)
                    .is_ok_and(|d| d.starts_with(b"me:starpod:v1:"))
            })
            .unwrap_or_else(|| panic!("[{mname}] no sealed auth inside:\n{inside}"));
        assert_eq!(inside, real.replace(&auth, sealed_auth), "[{mname}]");
        let requests = w.requests("/files/v2/");
        assert!(
            requests.iter().any(
                |r| r.basic_credentials() == Some((b"me".to_vec(), SECRET.as_bytes().to_vec()))
            ),
            "[{mname}] the registry did not get the real credentials: {requests:#?}"
        );
        assert!(free_of(&out.stdout, SECRET.as_bytes()) && free_of(&out.stderr, SECRET.as_bytes()));
    });
}

#[test]
fn gh_api_works_with_a_sealed_hosts_yml() {
    if !Path::new("/usr/bin/gh").exists() {
        eprintln!("SKIPPED: gh is not installed (apt-get install gh; .ci/run does)");
        return;
    }
    for_each_mode(|mode| {
        let w = World::new(mode);
        let real = format!(
            "github.com:\n    users:\n        octocat:\n            oauth_token: {SECRET}\n    git_protocol: https\n    user: octocat\n    oauth_token: {SECRET}\n"
        );
        w.put(".config/gh/hosts.yml", &real);
        w.put(".config/gh/config.yml", "git_protocol: https\n");
        let pin = format!("{BOUND}:443=127.0.0.1:{}", w.fx.up.port());
        let script = r#"gh api /user/netcage-gh > /dev/null && echo "ok $1" \
            && echo '--- file' && cat ~/.config/gh/hosts.yml && echo '--- end'"#;
        let out = w.sh(&["--resolve", &pin], script, &[VALUE]);
        let mname = mode.name();
        let inside = shown_file(&out);
        assert!(out.status.success(), "[{mname}] {}", describe(&out));
        let token = first_token(&inside);
        assert_eq!(inside, real.replace(SECRET, &token), "[{mname}]");
        let requests = w.requests("/user/netcage-gh");
        assert!(
            requests
                .iter()
                .any(|r| r.header_str("authorization") == Some(format!("token {SECRET}"))),
            "[{mname}] api.github.com did not get the real token: {requests:#?}"
        );
        for r in w.fx.up.requests() {
            assert!(!r.contains(b"starpod:"), "[{mname}] a token went upstream");
        }
    });
}

#[test]
fn a_file_that_does_not_parse_stays_hidden_with_one_line() {
    for_each_mode(|mode| {
        let w = World::new(mode);
        let marker = "MarkerThatMustStayHidden7731";
        w.put(".npmrc", &format!("secret = {marker}\n"));
        w.put(
            ".netrc",
            &format!("machine {BOUND} login x password {SECRET}\n"),
        );
        let out = w.sh(
            &[],
            r#"echo "npmrc: [$(cat ~/.npmrc)]"; echo "netrc: [$(cat ~/.netrc)]""#,
            &[],
        );
        let mname = mode.name();
        assert!(out.status.success(), "[{mname}] {}", describe(&out));
        let stdout = stdout_str(&out);
        assert!(stdout.contains("npmrc: []"), "[{mname}] {stdout}");
        assert!(
            stdout.contains("netrc: [machine"),
            "[{mname}] the control: {stdout}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let notes: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("~/.npmrc stays hidden"))
            .collect();
        assert_eq!(
            notes,
            vec![
                "netcage: note: ~/.npmrc stays hidden, not sealed (npmrc format): line 1: a credential netcage cannot bind to a registry"
            ],
            "[{mname}] {stderr}"
        );
        assert!(free_of(&out.stdout, marker.as_bytes()) && free_of(&out.stderr, marker.as_bytes()));
    });
}

#[test]
fn a_token_from_a_sealed_file_is_refused_for_another_host() {
    for_each_mode(|mode| {
        let w = World::new(mode);
        let real = format!("machine {BOUND}\n  login x\n  password {SECRET}\n");
        w.put(".netrc", &real);
        let port = w.fx.up.port().to_string();
        let script = r#"tok=$(awk '$1 == "password" {print $2}' ~/.netrc)
            curl -s -o /dev/null -w 'bound %{http_code}\n' --netrc "https://$1:$3/netrc-bound"
            curl -s -o /dev/null -w 'other %{http_code}\n' -H "Authorization: Bearer $tok" "https://$2:$3/netrc-other"
            /usr/bin/python3 -c 'import netrc, sys; print("python netrc", netrc.netrc().authenticators(sys.argv[1])[0])' "$1"
            true"#;
        let out = w.sh(&[], script, &[BOUND, OTHER, &port]);
        let mname = mode.name();
        let stdout = stdout_str(&out);
        assert!(
            stdout.contains("bound 200"),
            "[{mname}] the control: {}",
            describe(&out)
        );
        assert!(stdout.contains("other 403"), "[{mname}] {}", describe(&out));
        // Python's netrc refuses a ~/.netrc with a password that is not the user's own, 0600.
        assert!(
            stdout.contains("python netrc x"),
            "[{mname}] {}",
            describe(&out)
        );
        let bound = w.requests("/netrc-bound");
        assert!(
            bound.iter().any(|r| r.basic_credentials() == Some((b"x".to_vec(), SECRET.as_bytes().to_vec()))),
            "[{mname}] {bound:#?}"
        );
        assert!(
            w.requests("/netrc-other").is_empty(),
            "[{mname}] the other host was reached"
        );
    });
}

/// The rustup toolchain of the test's own user (the command's `$HOME` is the test's).
fn rustup_home() -> String {
    std::env::var("RUSTUP_HOME").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        format!("{home}/.rustup")
    })
}

#[test]
fn cargo_fetches_with_a_sealed_credentials_toml() {
    for_each_mode(|mode| {
        if mode == Mode::Rootless {
            // rustup's toolchain sits in the test user's home, out of uid 4242's reach.
            eprintln!("SKIPPED the rootless run: the toolchain is not readable by uid {UID}");
            return;
        }
        let w = World::new(mode);
        let base = w.registries();
        let krate = w.work.join("crate");
        std::fs::create_dir_all(krate.join("src")).unwrap();
        std::fs::write(krate.join("src/lib.rs"), "").unwrap();
        std::fs::write(
            krate.join("Cargo.toml"),
            format!(
                "[package]\nname = \"p\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{PACKAGE} = {{ version = \"0.1.0\", registry = \"nc\" }}\n"
            ),
        )
        .unwrap();
        w.put(
            ".cargo/config.toml",
            &format!(
                "[registries.nc]\nindex = \"sparse+{base}/cargo/index/\"\n\n[registry]\nglobal-credential-providers = [\"cargo:token\"]\n"
            ),
        );
        let real = format!("# cargo login\n[registries.nc]\ntoken = \"{SECRET}\"\n");
        w.put(".cargo/credentials.toml", &real);
        let script = r#"cd crate && cargo fetch -q \
            && cat ~/.cargo/registry/src/*/nctest-0.1.0/src/lib.rs \
            && echo '--- file' && cat ~/.cargo/credentials.toml && echo '--- end'"#;
        let mut child = vec!["sh", "-c", script];
        child.push("sh");
        let mut cmd = w.fx.run_cmd(&[], &child);
        cmd.env("HOME", &w.home)
            .env("CARGO_HOME", w.home.join(".cargo"))
            .env("RUSTUP_HOME", rustup_home())
            .current_dir(&w.work);
        let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
        judge(&w, "cargo", &out, &real, |t| t.to_owned());
    });
}

/// `--seal-file` seals a file elsewhere (here in the writable working directory: covered, its
/// directory pinned, the real file unchanged); `[files] show` shows a built-in one as it is.
#[test]
fn seal_file_seals_a_file_elsewhere_and_show_opts_out() {
    for_each_mode(|mode| {
        let w = World::new(mode);
        let real = format!("machine {BOUND} login ci password {SECRET}\n");
        let ci = w.work.join("ci.netrc");
        std::fs::write(&ci, &real).unwrap();
        let shown = "machine shown.test login me password not-sealed-because-shown\n";
        w.put(".netrc", shown);
        let policy = w.fx.env.path("show.toml");
        std::fs::write(&policy, "[files]\nshow = [\"~/.netrc\"]\n").unwrap();
        let port = w.fx.up.port().to_string();
        let script = r#"curl -s -o /dev/null -w 'bound %{http_code}\n' --netrc-file ci.netrc "https://$1:$2/seal-file" \
            && echo "home: $(cat ~/.netrc)" && echo '--- file' && cat ci.netrc && echo '--- end'"#;
        let policy = policy.to_str().unwrap();
        let out = w.sh(
            &["--seal-file", "ci.netrc", "--policy", policy],
            script,
            &[BOUND, &port],
        );
        let mname = mode.name();
        let stdout = stdout_str(&out);
        assert!(stdout.contains("bound 200"), "[{mname}] {}", describe(&out));
        assert!(
            stdout.contains(&format!("home: {}", shown.trim())),
            "[{mname}] {stdout}"
        );
        let inside = shown_file(&out);
        assert_eq!(
            inside,
            real.replace(SECRET, &first_token(&inside)),
            "[{mname}]"
        );
        assert_eq!(
            std::fs::read_to_string(&ci).unwrap(),
            real,
            "[{mname}] the real file changed"
        );
        let requests = w.requests("/seal-file");
        assert!(
            requests.iter().any(
                |r| r.basic_credentials() == Some((b"ci".to_vec(), SECRET.as_bytes().to_vec()))
            ),
            "[{mname}] {requests:#?}"
        );
        assert!(free_of(&out.stdout, SECRET.as_bytes()) && free_of(&out.stderr, SECRET.as_bytes()));
    });
}

/// A client of `~/.pypirc` as twine reads it (`RawConfigParser`): the repository's username and
/// password as Basic credentials on an upload to its `repository` URL.
const PYPIRC_CLIENT: &str = r#"
import base64, configparser, os, ssl, urllib.request
c = configparser.RawConfigParser()
c.read(os.path.expanduser("~/.pypirc"))
s = c["corp"]
creds = base64.b64encode(f"{s['username']}:{s['password']}".encode()).decode()
req = urllib.request.Request(s["repository"], data=b"upload", headers={"Authorization": "Basic " + creds})
ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
print("status", urllib.request.urlopen(req, context=ctx).status)
"#;

#[test]
fn a_pypirc_client_uploads_with_a_sealed_password() {
    for_each_mode(|mode| {
        let w = World::new(mode);
        let repository = w.fx.url(BOUND, "/legacy/");
        let real = format!(
            "[distutils]\nindex-servers =\n    corp\n\n[corp]\nrepository = {repository}\nusername = __token__\npassword = {SECRET}\n"
        );
        w.put(".pypirc", &real);
        let script =
            r#"/usr/bin/python3 -c "$1" && echo '--- file' && cat ~/.pypirc && echo '--- end'"#;
        let out = w.sh(&[], script, &[PYPIRC_CLIENT]);
        let mname = mode.name();
        assert!(
            stdout_str(&out).contains("status 200"),
            "[{mname}] {}",
            describe(&out)
        );
        let inside = shown_file(&out);
        assert_eq!(
            inside,
            real.replace(SECRET, &first_token(&inside)),
            "[{mname}]"
        );
        let requests = w.requests("/legacy/");
        assert!(
            requests.iter().any(|r| r.basic_credentials()
                == Some((b"__token__".to_vec(), SECRET.as_bytes().to_vec()))),
            "[{mname}] the repository did not get the real password: {requests:#?}"
        );
        assert!(free_of(&out.stdout, SECRET.as_bytes()) && free_of(&out.stderr, SECRET.as_bytes()));
    });
}
