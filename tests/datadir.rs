//! The default data dir (no `--data-dir`): `./.starpod/db` when it exists (a Starpod project),
//! else the user's own (`$XDG_DATA_HOME/netcage` here, with `HOME` and `XDG_DATA_HOME`
//! pointed at scratch directories) — and nothing is created in the working directory: real
//! runs of `netcage run` (Tier 0, Tier 1 root and rootless), `netcage demo`, `ca path` and
//! `doctor` in an empty directory leave it empty. In Tier 1 the default data dir is hidden
//! from the command like any other: only the public CA files show.

mod common;
mod tier1_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use tier1_support::{Fx, Mode, RUN_TIMEOUT, chown_tree, for_each_mode};

/// A working directory, a `$HOME` and an `$XDG_DATA_HOME`, each its own directory under the
/// scratch root of `fx` (owned by the rootless user in that mode).
struct Dirs {
    cwd: PathBuf,
    home: PathBuf,
    xdg: PathBuf,
}

impl Dirs {
    fn new(fx: &Fx) -> Dirs {
        let dirs = Dirs {
            cwd: fx.env.path("cwd"),
            home: fx.env.path("home"),
            xdg: fx.env.path("xdg"),
        };
        for d in [&dirs.cwd, &dirs.home, &dirs.xdg] {
            std::fs::create_dir(d).unwrap();
            if fx.mode == Mode::Rootless {
                chown_tree(d);
            }
        }
        dirs
    }

    /// The user's data dir these runs must use.
    fn user_data(&self) -> PathBuf {
        self.xdg.join("netcage")
    }

    /// `netcage ARGS` as `fx`'s user, in the working directory, with this `$HOME` and
    /// `$XDG_DATA_HOME`.
    fn netcage(&self, fx: &Fx, args: &[&str]) -> Command {
        let mut cmd = fx.netcage();
        cmd.current_dir(&self.cwd)
            .env("HOME", &self.home)
            .env("XDG_DATA_HOME", &self.xdg)
            .args(args);
        cmd
    }

    fn run(&self, fx: &Fx, args: &[&str]) -> Output {
        run_with_timeout(&mut self.netcage(fx, args), RUN_TIMEOUT)
    }
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn assert_empty(dir: &Path, after: &str) {
    assert_eq!(
        entries(dir),
        Vec::<String>::new(),
        "{after} left files in the working directory {}",
        dir.display()
    );
}

/// `netcage run -- true` in both tiers, and `ca path`: the CA is made in the user's data dir,
/// nothing appears in the working directory.
fn an_empty_directory_stays_empty(fx: &Fx) {
    let dirs = Dirs::new(fx);
    for tier in ["env", "netns"] {
        let out = dirs.run(fx, &["run", "--tier", tier, "--", "true"]);
        assert!(out.status.success(), "[{tier}] {}", describe(&out));
        assert_empty(&dirs.cwd, &format!("netcage run --tier {tier} -- true"));
    }
    for file in ["proxy-ca.pem", "proxy-ca-key.pem", "proxy-ca-bundle.pem"] {
        assert!(
            dirs.user_data().join(file).is_file(),
            "{file} is not in the user's data dir {}: {:?}",
            dirs.user_data().display(),
            entries(&dirs.user_data())
        );
    }
    let out = dirs.run(fx, &["ca", "path"]);
    assert_eq!(
        stdout_str(&out).trim(),
        dirs.user_data()
            .join("proxy-ca-bundle.pem")
            .to_string_lossy(),
        "{}",
        describe(&out)
    );
    let out = dirs.run(fx, &["doctor"]);
    let data = dirs.user_data().to_string_lossy().into_owned();
    assert!(
        stdout_str(&out)
            .lines()
            .any(|l| l.starts_with("data dir") && l.contains(&data)),
        "doctor must name the data dir {data}: {}",
        describe(&out)
    );
    assert_empty(&dirs.cwd, "netcage ca path and doctor");
}

#[test]
fn run_in_an_empty_directory_leaves_it_empty_tier0() {
    let fx = Fx::new(Mode::Root);
    let dirs = Dirs::new(&fx);
    let out = dirs.run(&fx, &["run", "--tier", "env", "--", "true"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_empty(&dirs.cwd, "netcage run --tier env -- true");
    assert!(dirs.user_data().join("proxy-ca.pem").is_file());
}

#[test]
fn run_in_an_empty_directory_leaves_it_empty_tier1() {
    for_each_mode(|mode| an_empty_directory_stays_empty(&Fx::new(mode)));
}

#[test]
fn the_demo_leaves_the_working_directory_empty() {
    let fx = Fx::new(Mode::Root);
    let dirs = Dirs::new(&fx);
    let mut cmd = dirs.netcage(&fx, &["demo"]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        stdout_str(&out).contains("OK: the child held only a token"),
        "{}",
        describe(&out)
    );
    assert_empty(&dirs.cwd, "netcage demo");
}

/// With `./.starpod/db` in the working directory, that is the data dir: the CA goes there and
/// the user's data dir gets none; `ca path` and `doctor` say so.
#[test]
fn an_existing_starpod_data_dir_is_used() {
    let fx = Fx::new(Mode::Root);
    let dirs = Dirs::new(&fx);
    let project = dirs.cwd.join(".starpod/db");
    std::fs::create_dir_all(&project).unwrap();
    let out = dirs.run(&fx, &["run", "--tier", "env", "--", "true"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        project.join("proxy-ca.pem").is_file(),
        "{:?}",
        entries(&project)
    );
    assert!(
        !dirs.user_data().join("proxy-ca.pem").exists(),
        "the user's data dir was used although ./.starpod/db exists"
    );
    let out = dirs.run(&fx, &["ca", "path"]);
    assert_eq!(
        stdout_str(&out).trim(),
        ".starpod/db/proxy-ca-bundle.pem",
        "{}",
        describe(&out)
    );
    let out = dirs.run(&fx, &["doctor"]);
    assert!(
        stdout_str(&out)
            .lines()
            .any(|l| l.starts_with("data dir") && l.contains(".starpod/db exists")),
        "{}",
        describe(&out)
    );
}

/// In Tier 1 the user's data dir is hidden wherever it is: a key there (and netcage's state
/// beside it) cannot be read; only the two public CA files show.
#[test]
fn the_users_data_dir_is_hidden_in_tier1() {
    for_each_mode(|mode| {
        let fx = Fx::new(mode);
        let dirs = Dirs::new(&fx);
        let data = dirs.user_data();
        std::fs::create_dir(&data).unwrap();
        let key: [u8; 32] = rand::random();
        std::fs::write(data.join(".vault_key"), key).unwrap();
        std::fs::set_permissions(
            data.join(".vault_key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        if mode == Mode::Rootless {
            chown_tree(&data);
        }
        let script = "ls -A \"$1\" | LC_ALL=C sort; cat \"$1/.vault_key\" \"$1/proxy-ca-key.pem\" \"$1/trust.json\" 2>&1; \
                      head -c 27 \"$SSL_CERT_FILE\"; echo; echo \"$SSL_CERT_FILE\"";
        let out = dirs.run(
            &fx,
            &[
                "run",
                "--tier",
                "netns",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                &data.to_string_lossy(),
            ],
        );
        assert!(out.status.success(), "[{}] {}", mode.name(), describe(&out));
        let stdout = stdout_str(&out);
        let mut lines = stdout.lines();
        let shown: Vec<&str> = lines.by_ref().take(3).collect();
        assert_eq!(
            shown,
            [
                "proxy-ca-bundle.pem",
                "proxy-ca-truststore.p12",
                "proxy-ca.pem"
            ],
            "only the public CA files show: {stdout}"
        );
        assert!(
            !lines.next().unwrap_or_default().starts_with("proxy-ca"),
            "{stdout}"
        );
        assert!(stdout.contains("-----BEGIN CERTIFICATE-----"), "{stdout}");
        assert!(
            stdout.contains(&*data.join("proxy-ca-bundle.pem").to_string_lossy()),
            "{stdout}"
        );
        assert!(!stdout.contains("PRIVATE KEY"), "{stdout}");
        assert!(
            !stdout.contains("writable"),
            "trust.json was read: {stdout}"
        );
        tier1_support::assert_no_secret_material(&out.stdout, &key, "the command's output");
        // Outside, the key file is there as before and the state beside it.
        assert_eq!(std::fs::read(data.join(".vault_key")).unwrap(), key);
        assert!(data.join("trust.json").is_file(), "{:?}", entries(&data));
        assert_empty(&dirs.cwd, "netcage run");
    });
}
