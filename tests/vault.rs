//! The Starpod vault as a source: a `vault.db` made the way Starpod makes it (sqlx's
//! migrations table, its schema, WAL mode with the rows still in the write-ahead log), with
//! values encrypted by Python's `cryptography` (no code shared with netcage), handed to the
//! command as tokens bound to each entry's own hosts. Tier 1 (root and rootless) and Tier 0,
//! judged by what the upstream received.

mod common;
mod tier1_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::{Digest, Sha256};
use tier1_support::*;

const BOUND_VALUE: &str = "ghp_VaultBoundSecret0451aa";
const WILD_VALUE: &str = "wild_VaultWildcardSecret77";
const UNBOUND_VALUE: &str = "unb_VaultUnboundSecret9911";

/// Makes `path` as Starpod does (sqlx migrations, then the allowed_hosts column added by a
/// later one), in WAL mode, and leaves without a checkpoint: the rows live only in `-wal`, as
/// while Starpod runs. `entries`: (key, value, allowed_hosts JSON or None).
const MAKE_VAULT: &str = r#"
import json, os, sqlite3, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
path, key_hex, entries = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
aes = AESGCM(bytes.fromhex(key_hex))
db = sqlite3.connect(path, isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")
db.executescript("""
CREATE TABLE IF NOT EXISTS _sqlx_migrations (
    version BIGINT PRIMARY KEY, description TEXT NOT NULL,
    installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    success BOOLEAN NOT NULL, checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);
""")
db.execute("BEGIN")
db.execute("""CREATE TABLE vault_entries (
    key TEXT PRIMARY KEY, encrypted_value BLOB NOT NULL, nonce BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT (datetime('now')),
    updated_at TEXT NOT NULL DEFAULT (datetime('now')))""")
db.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (1, 'init', 1, x'00', 1)")
db.execute("COMMIT")
db.execute("BEGIN")
db.execute("ALTER TABLE vault_entries ADD COLUMN allowed_hosts TEXT")
db.execute("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (2, 'vault allowed hosts', 1, x'01', 1)")
db.execute("COMMIT")
for key, value, hosts in entries:
    nonce = os.urandom(12)
    db.execute("INSERT INTO vault_entries (key, encrypted_value, nonce, allowed_hosts) VALUES (?, ?, ?, ?)",
               (key, aes.encrypt(nonce, value.encode(), None), nonce, hosts))
sys.stdout.flush()
os._exit(0)  # no close: no checkpoint, the rows stay in vault.db-wal
"#;

fn hex32(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a vault at `path` under `key` with `entries`.
fn make_vault(path: &Path, key: &[u8; 32], entries: &[(&str, &str, Option<&str>)]) {
    let entries = serde_json::to_string(entries).unwrap();
    let out = Command::new("python3")
        .args(["-c", MAKE_VAULT])
        .arg(path)
        .arg(hex32(key))
        .arg(entries)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "making the vault (python3 needs the cryptography package: pip install cryptography): {}",
        describe(&out)
    );
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_len > 0, "the rows should still be in {}", wal.display());
}

/// The three entries of the issue: bound, wildcard, unbound.
fn standard_vault(fx: &Fx) -> PathBuf {
    let path = fx.env.data_dir().join("vault.db");
    make_vault(
        &path,
        &fx.env.key(),
        &[
            ("GITHUB_TOKEN", BOUND_VALUE, Some(r#"["api.github.com"]"#)),
            ("WILD_TOKEN", WILD_VALUE, Some(r#"["*.github.com"]"#)),
            ("UNBOUND_TOKEN", UNBOUND_VALUE, None),
        ],
    );
    if fx.mode == Mode::Rootless {
        chown_tree(&fx.env.data_dir());
    }
    path
}

fn digest_files(paths: &[PathBuf]) -> Vec<(PathBuf, Option<[u8; 32]>)> {
    paths
        .iter()
        .map(|p| {
            let sum = std::fs::read(p).ok().map(|b| Sha256::digest(&b).into());
            (p.clone(), sum)
        })
        .collect()
}

/// The database and its write-ahead log (the `-shm` index changes whenever anyone reads: a
/// reader marks what it reads there).
fn vault_files(path: &Path) -> Vec<PathBuf> {
    let [wal, _shm] = netcage::vault::companions(path);
    vec![path.to_owned(), wal]
}

/// Each variable's token sent to `BOUND` and to `OTHER`: one line per attempt with the
/// status, and the variable's value as the command saw it.
const PROBE: &str = r#"
for name in GITHUB_TOKEN WILD_TOKEN UNBOUND_TOKEN; do
  eval "value=\${$name-unset}"
  echo "$name=$value"
  [ "$value" = unset ] && continue
  for url in "$1" "$2"; do
    code=$(curl -sS -o /dev/null --max-time 20 -w '%{http_code}' -H "Authorization: Bearer $value" "$url?var=$name")
    echo "$name $url $code"
  done
done
"#;

/// What the upstream received on `path` for variable `var`.
fn received(fx: &Fx, var: &str, host: &str) -> Vec<Recorded> {
    fx.up
        .requests()
        .into_iter()
        .filter(|r| r.sni.as_deref() == Some(host) && r.target.contains(var))
        .collect()
}

fn check_tier(fx: &Fx, tier: &str, unbound: bool) {
    let vault = standard_vault(fx);
    let before = digest_files(&vault_files(&vault));
    let mut opts = vec![];
    if unbound {
        opts.push("--vault-unbound");
    }
    let mut cmd = fx.netcage();
    let child = [
        "sh",
        "-c",
        PROBE,
        "sh",
        &fx.url(BOUND, "/v"),
        &fx.url(OTHER, "/v"),
    ];
    fx.run_args_in(tier, &mut cmd, &opts, &child);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    let text = stdout_str(succeeded(&out)).to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for value in [BOUND_VALUE, WILD_VALUE, UNBOUND_VALUE] {
        assert!(
            !text.contains(value) && !stderr.contains(value),
            "{text}\n{stderr}"
        );
    }
    // The bound and wildcard entries are tokens; the unbound one only when asked for.
    assert!(text.contains("GITHUB_TOKEN=starpod:v1:"), "{text}");
    assert!(text.contains("WILD_TOKEN=starpod:v1:"), "{text}");
    let line = stderr
        .lines()
        .find(|l| l.contains("netcage: vault "))
        .unwrap_or_else(|| panic!("no vault line: {stderr}"));
    if unbound {
        assert!(text.contains("UNBOUND_TOKEN=starpod:v1:"), "{text}");
        assert!(line.contains("3 entries"), "{line}");
    } else {
        assert!(text.contains("UNBOUND_TOKEN=unset"), "{text}");
        assert!(
            line.contains("skipped 1 entry that name no allowed hosts: UNBOUND_TOKEN"),
            "{line}"
        );
    }
    let codes: Vec<&str> = text.lines().filter(|l| l.contains(" https://")).collect();
    let code = |var: &str, host: &str| {
        codes
            .iter()
            .find(|l| l.starts_with(&format!("{var} ")) && l.contains(&format!("//{host}:")))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no attempt of {var} at {host}: {text}"))
            .to_owned()
    };
    // What crossed the wire: the real value where the vault binds it, nothing elsewhere.
    for (var, value) in [("GITHUB_TOKEN", BOUND_VALUE), ("WILD_TOKEN", WILD_VALUE)] {
        assert_eq!(code(var, BOUND), "200", "{text}");
        let got = received(fx, var, BOUND);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert_eq!(
            got[0].header_str("authorization"),
            Some(format!("Bearer {value}")),
            "{var}"
        );
        assert_eq!(code(var, OTHER), "403", "{text}");
        assert!(received(fx, var, OTHER).is_empty(), "{var} reached {OTHER}");
    }
    if unbound {
        for host in [BOUND, OTHER] {
            assert_eq!(code("UNBOUND_TOKEN", host), "200", "{text}");
            let got = received(fx, "UNBOUND_TOKEN", host);
            assert_eq!(
                got[0].header_str("authorization"),
                Some(format!("Bearer {UNBOUND_VALUE}"))
            );
        }
    }
    for value in [BOUND_VALUE, WILD_VALUE, UNBOUND_VALUE] {
        for r in fx.up.requests() {
            if r.sni.as_deref() == Some(OTHER) && !unbound {
                assert!(!r.contains(value.as_bytes()), "{r:#?}");
            }
        }
    }
    // Read, never written: the database and its WAL are as Starpod left them.
    assert_eq!(
        digest_files(&vault_files(&vault)),
        before,
        "netcage changed the vault"
    );
}

#[test]
fn vault_entries_reach_exactly_their_hosts_in_tier1() {
    for_each_mode(|mode| {
        check_tier(&Fx::new(mode), "netns", false);
        check_tier(&Fx::new(mode), "netns", true);
    });
}

#[test]
fn vault_entries_reach_exactly_their_hosts_in_tier0() {
    check_tier(&Fx::new(Mode::Root), "env", false);
}

/// The vault lies in the data dir, which the sandbox hides: the command cannot read the
/// encrypted rows (nor rebind an entry by rewriting its hosts).
#[test]
fn the_command_cannot_see_or_change_the_vault() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let vault = standard_vault(&fx);
        let before = digest_files(&vault_files(&vault));
        let db = fx.env.data_dir();
        let out = fx.sh(
            &[],
            r#"for f in vault.db vault.db-wal vault.db-shm; do
                 if cat "$1/$f" >/dev/null 2>&1; then echo "read $f"; fi
                 if echo x >> "$1/$f" 2>/dev/null; then echo "wrote $f"; fi
               done; echo done"#,
            &[db.to_str().unwrap()],
        );
        let text = stdout_str(succeeded(&out));
        assert_eq!(text.trim(), "done", "{text}");
        assert_eq!(digest_files(&vault_files(&vault)), before);
    });
}

/// A vault given with --vault outside the data dir is hidden as well.
#[test]
fn a_vault_outside_the_data_dir_is_hidden_too() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let dir = fx.env.path("elsewhere");
        std::fs::create_dir(&dir).unwrap();
        let vault = dir.join("vault.db");
        make_vault(
            &vault,
            &fx.env.key(),
            &[("GITHUB_TOKEN", BOUND_VALUE, Some(r#"["api.github.com"]"#))],
        );
        if mode == Mode::Rootless {
            chown_tree(&dir);
        }
        let out = fx.sh(
            &["--vault", vault.to_str().unwrap()],
            r#"wc -c < "$1"; wc -c < "$1-wal"; echo "$GITHUB_TOKEN""#,
            &[vault.to_str().unwrap()],
        );
        let text = stdout_str(succeeded(&out));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["0", "0"], "{text}");
        assert!(lines[2].starts_with("starpod:v1:"), "{text}");
    });
}

fn run_expecting_error(fx: &Fx, opts: &[&str]) -> String {
    let out = fx.run(opts, &["true"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn bad_vaults_are_clear_errors() {
    let fx = Fx::new(Mode::Root);
    // Missing: an error, and nothing created.
    let missing = fx.env.path("nope/vault.db");
    let err = run_expecting_error(&fx, &["--vault", missing.to_str().unwrap()]);
    assert!(err.contains("--vault") && err.contains("vault.db"), "{err}");
    assert!(!missing.exists() && !fx.env.path("nope").exists());

    // A SQLite file that is not a vault.
    let other = fx.env.path("other.db");
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; db=sqlite3.connect(sys.argv[1]); db.execute('create table t(x)'); db.commit()",
        ])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let err = run_expecting_error(&fx, &["--vault", other.to_str().unwrap()]);
    assert!(err.contains("is not a Starpod vault"), "{err}");

    // Not SQLite at all.
    let junk = fx.write(
        "junk.db",
        "this is not a database at all, not even close........",
    );
    let err = run_expecting_error(&fx, &["--vault", junk.to_str().unwrap()]);
    assert!(err.contains("junk.db"), "{err}");

    // Written with another key: names the entry, never a value.
    let foreign = fx.env.path("foreign.db");
    make_vault(
        &foreign,
        &[9u8; 32],
        &[("GITHUB_TOKEN", BOUND_VALUE, Some(r#"["api.github.com"]"#))],
    );
    let err = run_expecting_error(&fx, &["--vault", foreign.to_str().unwrap()]);
    assert!(
        err.contains("\"GITHUB_TOKEN\"") && err.contains("another key"),
        "{err}"
    );
    assert!(!err.contains(BOUND_VALUE));

    // Malformed host list.
    let hosts = fx.env.path("hosts.db");
    make_vault(
        &hosts,
        &fx.env.key(),
        &[("GITHUB_TOKEN", BOUND_VALUE, Some("api.github.com"))],
    );
    let err = run_expecting_error(&fx, &["--vault", hosts.to_str().unwrap()]);
    assert!(err.contains("allowed_hosts"), "{err}");

    // Writable by everyone: anyone could rebind an entry.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hosts, std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = run_expecting_error(&fx, &["--vault", hosts.to_str().unwrap()]);
    assert!(err.contains("every user may write it"), "{err}");

    // --no-vault leaves the data dir's vault out.
    let vault = standard_vault(&fx);
    assert!(vault.exists());
    let out = fx.sh(&["--no-vault"], "echo ${GITHUB_TOKEN-unset}", &[]);
    assert_eq!(stdout_str(succeeded(&out)).trim(), "unset");
}

/// `--seal NAME` wins over the vault's entry of the same name (and the line says so).
#[test]
fn seal_wins_over_the_vault() {
    let fx = Fx::new(Mode::Root);
    standard_vault(&fx);
    let mut cmd = fx.run_cmd(
        &["--seal", "GITHUB_TOKEN=other.example"],
        &[
            "sh",
            "-c",
            r#"curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $GITHUB_TOKEN" "$1""#,
            "sh",
            &fx.url(OTHER, "/sealed"),
        ],
    );
    cmd.env("GITHUB_TOKEN", SECRET);
    let out = run_with_timeout(&mut cmd, RUN_TIMEOUT);
    assert_eq!(stdout_str(succeeded(&out)), "200");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--seal gives GITHUB_TOKEN"), "{stderr}");
    let got = fx.up.wait_for_requests(1, WAIT);
    assert_eq!(
        got[0].header_str("authorization"),
        Some(format!("Bearer {SECRET}"))
    );
}
