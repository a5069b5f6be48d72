//! `--vault FILE` (default: the data dir's `vault.db` when it exists): every entry of a
//! Starpod vault handed to the command as a token bound to the entry's own allowed hosts.

use std::path::{Path, PathBuf};

use netcage::env::SealedVar;
use netcage::proxy::SealedValue;
use netcage::token::{self, Key};
use netcage::vault;

use super::config::key_path;
use super::{KeyArgs, PolicyArgs, input_error};

/// The vault to read: `--vault`, else `vault.db` in the data dir when it is there (unless
/// `--no-vault`). An explicit file that does not exist is an error.
pub fn chosen(key: &KeyArgs, args: &PolicyArgs) -> Result<Option<PathBuf>, String> {
    if args.no_vault {
        return Ok(None);
    }
    if let Some(path) = &args.vault {
        return match std::fs::metadata(path) {
            Ok(_) => Ok(Some(path.clone())),
            Err(e) => Err(format!(
                "--vault {}: {e}; give the path of Starpod's vault.db",
                path.display()
            )),
        };
    }
    let default = key.data_dir().join(vault::FILE_NAME);
    Ok(default.exists().then_some(default))
}

/// The vault's entries as the command's variables, and the leak guard's copies.
pub struct FromVault {
    pub vars: Vec<SealedVar>,
    pub guard: Vec<SealedValue>,
    /// The vault's files when they lie outside the data dir (which is hidden anyway).
    pub hide: Vec<PathBuf>,
}

/// Reads the vault at `path` with `key`; `taken` are the names `--seal` already gives the
/// command (those win). Prints one line saying what was handed out and what was skipped.
pub fn load(
    path: &Path,
    key_args: &KeyArgs,
    key: &Key,
    args: &PolicyArgs,
    taken: &[&str],
) -> anyhow::Result<FromVault> {
    let key_file = key_path(key_args);
    if !key_file.exists() {
        return Err(input_error(format!(
            "the vault {} needs the key it was written with, and the key file {} does not exist; give it with --key-file FILE (or leave the vault out with --no-vault)",
            path.display(),
            key_file.display()
        )));
    }
    let entries = vault::read(path, key).map_err(|e| input_error(format!("the vault {e}")))?;
    let mut out = FromVault {
        vars: Vec::new(),
        guard: Vec::new(),
        hide: Vec::new(),
    };
    let (mut given, mut unbound, mut not_names, mut overridden) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for entry in entries {
        if !netcage::seal::is_env_name(&entry.key) {
            not_names.push(entry.key);
            continue;
        }
        if taken.contains(&entry.key.as_str()) {
            overridden.push(entry.key);
            continue;
        }
        let hosts = match entry.hosts {
            Some(hosts) => hosts,
            None if args.vault_unbound => Vec::new(),
            None => {
                unbound.push(entry.key);
                continue;
            }
        };
        let token = token::seal(key, &entry.value, &hosts);
        out.guard
            .push(SealedValue::new(&entry.value, &hosts, &token));
        given.push(entry.key.clone());
        out.vars.push(SealedVar {
            name: entry.key,
            token,
            value: Some(entry.value),
        });
    }
    let mut line = format!(
        "netcage: vault {}: {} as tokens bound to their hosts",
        path.display(),
        count(&given, "entry", "entries")
    );
    if !given.is_empty() {
        line.push_str(&format!(" ({})", given.join(", ")));
    }
    if !unbound.is_empty() {
        line.push_str(&format!(
            "; skipped {} that name no allowed hosts: {} (--vault-unbound hands them out unrestricted)",
            count(&unbound, "entry", "entries"),
            unbound.join(", ")
        ));
    }
    if !overridden.is_empty() {
        line.push_str(&format!("; --seal gives {}", overridden.join(", ")));
    }
    if !not_names.is_empty() {
        line.push_str(&format!(
            "; skipped {} not named like environment variables",
            not_names.len()
        ));
    }
    eprintln!("{line}");
    let data_dir = key_args.data_dir();
    let inside = |p: &Path| {
        let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
        canon(p).starts_with(canon(&data_dir))
    };
    if !inside(path) {
        let [wal, shm] = vault::companions(path);
        out.hide = [path.to_owned(), wal, shm]
            .into_iter()
            .filter(|p| p.exists())
            .collect();
    }
    Ok(out)
}

fn count(names: &[String], one: &str, many: &str) -> String {
    match names.len() {
        1 => format!("1 {one}"),
        n => format!("{n} {many}"),
    }
}
