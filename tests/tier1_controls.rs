//! Controls for the sandbox's filesystem view and process handling (`tests/tier1_escape.rs`
//! is the attack side): what a developer does every day still works inside `netcage run`,
//! root and rootless — `git commit`, `npm install`, `pip install`, `cargo build` with the
//! user's own `~/.cargo`, writes to the working directory and `/tmp` — while `$HOME`, which
//! they write caches and lock files to, is unchanged afterwards; and an interactive program
//! under a terminal still gets Ctrl-C, and Ctrl-Z/`fg` work from the shell that started it.
//!
//! Nothing here reaches any network: npm and pip install local packages offline (npm's
//! registry points at a dead port of the sandbox's own loopback), cargo builds offline.

mod common;
mod tier1_support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use tier1_support::*;

/// A `$HOME` that is not the working directory and not under /tmp (which is the sandbox's
/// own), owned by the user the mode runs as.
struct Home {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Home {
    fn new(mode: Mode) -> Home {
        let base = ["/home", "/srv", "/var/lib"]
            .into_iter()
            .find(|d| Path::new(d).is_dir())
            .expect("a directory for a test home outside /tmp");
        let dir = tempfile::Builder::new()
            .prefix("netcage-home-")
            .tempdir_in(base)
            .unwrap();
        let path = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(path.join(".bashrc"), "# the user's own\n").unwrap();

        if mode == Mode::Rootless {
            chown_tree(&path);
        }
        Home { _dir: dir, path }
    }
}

/// Every entry under `root` (but the `skip` subtrees) with its size, mtime and mode.
fn snapshot(root: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (u64, i64, i64, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if skip.iter().any(|s| path.starts_with(s)) {
                continue;
            }
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            out.insert(
                path.clone(),
                (meta.len(), meta.mtime(), meta.mtime_nsec(), meta.mode()),
            );
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn assert_unchanged(
    before: &BTreeMap<PathBuf, (u64, i64, i64, u32)>,
    after: &BTreeMap<PathBuf, (u64, i64, i64, u32)>,
    what: &str,
) {
    let changed: Vec<String> = before
        .iter()
        .filter(|(p, m)| after.get(*p) != Some(m))
        .map(|(p, _)| format!("changed or removed: {}", p.display()))
        .chain(
            after
                .keys()
                .filter(|p| !before.contains_key(*p))
                .map(|p| format!("new: {}", p.display())),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "{what} changed although the command's writes there must not persist:\n{}",
        changed.join("\n")
    );
}

/// Local packages for npm and pip, a crate for cargo, a git repository: in `dir`.
fn projects(dir: &Path) {
    let w = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "npmpkg/package/package.json",
        r#"{"name":"netcage-demo","version":"1.0.0","main":"index.js"}"#,
    );
    w("npmpkg/package/index.js", "module.exports = 42;\n");
    let tar = Command::new("tar")
        .args(["czf", "demo.tgz", "-C", "npmpkg", "package"])
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(tar.success());
    w(
        "pypkg/setup.py",
        "from setuptools import setup\nsetup(name='netcage-demo', version='1.0', packages=['netcage_demo'])\n",
    );
    w("pypkg/netcage_demo/__init__.py", "X = 1\n");
    w(
        "crate/Cargo.toml",
        "[package]\nname = \"netcage-control\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    w("crate/src/main.rs", "fn main() { println!(\"built\"); }\n");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", describe(&out));
    };
    git(&["init", "-q"]);
    std::fs::create_dir_all(dir.join(".git/hooks")).unwrap();
}

/// Runs each step; prints `OK name` or `FAIL name` and its output.
const STEPS: &str = r#"
step() { name=$1; shift; if "$@" >/tmp/step.log 2>&1; then echo "OK $name"; else echo "FAIL $name"; cat /tmp/step.log; fi; }
step tmp sh -c 'echo t > /tmp/x && test "$(cat /tmp/x)" = t'
step cwd sh -c 'echo w > written-inside && test -s written-inside'
step git sh -c 'echo hi > file.txt && git add file.txt && git -c user.name=n -c user.email=n@example.invalid commit -qm inside'
step hook_refused sh -c '! sh -c "echo evil > .git/hooks/pre-commit" 2>/dev/null'
step npm npm install --no-audit --no-fund --offline ./demo.tgz
step pip_target /usr/bin/python3 -m pip install -q --disable-pip-version-check --no-index --no-build-isolation --target ./vendor ./pypkg
step pip_user /usr/bin/python3 -m pip install -q --disable-pip-version-check --no-index --no-build-isolation --break-system-packages --user ./pypkg
step home_write sh -c 'echo "echo planted" >> "$HOME/.bashrc" && mkdir -p "$HOME/.cache/x" && touch "$HOME/.cache/x/y"'
if [ "$WITH_CARGO" = 1 ]; then step cargo cargo build -q --offline --manifest-path crate/Cargo.toml; fi
step token sh -c 'curl -sS --max-time 10 -H "Authorization: Bearer $T1_TOKEN" "$URL" > /tmp/reply && test -s /tmp/reply'
"#;

#[test]
fn everyday_tools_work_and_home_is_unchanged_afterwards() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // As root: the real $HOME, with the real ~/.cargo and toolchain. Rootless: a home of
        // its own (the toolchain under /root is out of uid 4242's reach).
        let fake;
        let (home, with_cargo) = match mode {
            Mode::Root => (std::env::var("HOME").map(PathBuf::from).unwrap(), true),
            Mode::Rootless => {
                fake = Home::new(mode);
                eprintln!(
                    "note: no cargo step rootless: uid {UID} cannot reach the Rust toolchain under /root"
                );
                (fake.path.clone(), false)
            }
        };
        let home = std::fs::canonicalize(&home).unwrap();
        projects(fx.env.root());
        if mode == Mode::Rootless {
            chown_tree(fx.env.root());
        }
        // netcage's own state (the writable directories it records) is written outside, on
        // purpose; toolchains are only read.
        let skip = [
            home.join(".local/share/netcage"),
            home.join(".rustup"),
            home.join(".pyenv"),
        ];
        // Made by netcage itself on first use, outside the sandbox: let it exist already.
        let state = home.join(".local/share/netcage");
        if !state.exists() {
            std::fs::create_dir_all(&state).unwrap();
            if mode == Mode::Rootless {
                chown_tree(&home.join(".local"));
            }
        }
        let before = snapshot(&home, &skip);
        let url = fx.url(BOUND, "/controls");
        let mut cmd = fx.run_cmd(&["--seal", "T1_TOKEN=api.github.com"], &["sh", "-c", STEPS]);
        cmd.env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("T1_TOKEN", SECRET)
            .env("URL", &url)
            .env("WITH_CARGO", if with_cargo { "1" } else { "0" })
            .env("npm_config_registry", "http://127.0.0.1:9/")
            .env("npm_config_update_notifier", "false")
            .env_remove("CARGO_TARGET_DIR");
        let out = run_with_timeout(&mut cmd, std::time::Duration::from_secs(120));
        let text = stdout_str(&out);
        let mut steps = vec![
            "tmp",
            "cwd",
            "git",
            "hook_refused",
            "npm",
            "pip_target",
            "pip_user",
            "home_write",
            "token",
        ];
        if with_cargo {
            steps.push("cargo");
        }
        for step in steps {
            assert!(
                text.lines().any(|l| l == format!("OK {step}")),
                "[{}] {step} did not work in the sandbox: {}",
                mode.name(),
                describe(&out)
            );
        }
        // What they wrote to the working directory is there, outside.
        let root = fx.env.root();
        assert!(root.join("written-inside").is_file());
        assert!(root.join("node_modules/netcage-demo/index.js").is_file());
        assert!(root.join("vendor/netcage_demo/__init__.py").is_file());
        if with_cargo {
            assert!(root.join("crate/target/debug/netcage-control").is_file());
        }
        let log = Command::new("git")
            .args(["-c", "safe.directory=*", "log", "--format=%s"])
            .current_dir(root)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", root)
            .output()
            .unwrap();
        assert_eq!(stdout_str(&log).trim(), "inside", "{}", describe(&log));
        assert!(!root.join(".git/hooks/pre-commit").exists());
        // The sealed token still works end to end.
        let rec = fx.up.wait_for_requests(1, WAIT).remove(0);
        assert_eq!(
            rec.header_str("authorization"),
            Some(format!("Bearer {SECRET}"))
        );
        // And nothing they wrote to $HOME (npm's cache, pip --user, cargo's lock files, an
        // appended ~/.bashrc) is there afterwards.
        assert_unchanged(
            &before,
            &snapshot(&home, &skip),
            &home.display().to_string(),
        );
    });
}

/// Runs `inner` (a command line, through bash) under a new pseudo-terminal, typing `keys`
/// after `ready` (a regex) appears; returns everything the terminal showed. The terminal
/// echoes what is typed: markers the command prints are written split in its source
/// (`"GOT-""SIGINT"`), so only its output matches.
const PTY: &str = r#"
import os, pty, re, select, signal, sys, time
ready, keys, cmd = sys.argv[1], sys.argv[2], sys.argv[3]
pid, fd = pty.fork()
if pid == 0:
    # A terminal's shell starts with the keyboard's signals at their defaults, whatever this
    # test was started under (`cmd &` in a script ignores SIGINT, and run keeps what is ignored).
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
out = b""
def read(secs, until=None):
    global out
    end = time.time() + secs
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:
                return
            if not data:
                return
            out += data
            if until and re.search(until.encode(), out):
                return
read(1.5)
os.write(fd, (cmd + "\n").encode())
read(20, ready)
for k in keys.split(","):
    if k.startswith("sleep"):
        time.sleep(float(k[5:]))
        continue
    os.write(fd, k.encode().decode("unicode_escape").encode())
    read(1.5)
os.write(fd, b"echo SHELL-SAYS-$?\n")
read(3, r"SHELL-SAYS-\d")
os.write(fd, b"exit\n")
read(2)
sys.stdout.write(out.decode(errors="replace"))
"#;

/// The command line `netcage run …` as a shell would type it.
fn typed(cmd: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?))))
        .collect();
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn under_a_terminal(fx: &Fx, child: &[&str], ready: &str, keys: &str) -> String {
    let inner = fx.run_cmd(&[], child);
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PTY)
        .arg(ready)
        .arg(keys)
        .arg(typed(&inner));
    // The outer shell keeps no history in anyone's $HOME.
    cmd.env("HISTFILE", "/dev/null").env("HOME", fx.env.root());
    if let Some(dir) = inner.get_current_dir() {
        cmd.current_dir(dir);
    }
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_interactive_command_gets_ctrl_c_and_job_control_works() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // Ctrl-C reaches the command (its process group has the terminal), and netcage exits
        // with what the command made of it.
        let text = under_a_terminal(
            &fx,
            &[
                "sh",
                "-c",
                "trap 'echo GOT-\"\"SIGINT; exit 7' INT; echo READY-\"\"FOR-KEYS; sleep 20; echo NOT-\"\"INTERRUPTED",
            ],
            "READY-FOR-KEYS",
            "sleep0.3,\\x03",
        );
        assert!(
            text.contains("GOT-SIGINT") && text.contains("SHELL-SAYS-7"),
            "[{}] Ctrl-C did not reach the command:\n{text}",
            mode.name()
        );
        assert!(!text.contains("NOT-INTERRUPTED"), "{text}");
        // Ctrl-Z stops the job (the shell says so), `fg` continues it, Ctrl-C then ends it.
        let text = under_a_terminal(
            &fx,
            &[
                "sh",
                "-c",
                "echo READY-\"\"FOR-KEYS; sleep 2; echo RESUMED-\"\"AND-DONE",
            ],
            "READY-FOR-KEYS",
            "sleep0.3,\\x1a,jobs\\n,fg\\n,sleep2.5",
        );
        assert!(
            text.contains("Stopped")
                && text.contains("RESUMED-AND-DONE")
                && text.contains("SHELL-SAYS-0"),
            "[{}] job control did not work:\n{text}",
            mode.name()
        );
    });
}
