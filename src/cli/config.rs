//! From raw arguments to a resolved configuration: reads the key, policy, CA files and pins,
//! and reports every bad value it finds in one line.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use netcage::audit::AuditLog;
use netcage::ca::Ca;
use netcage::policy::Policy;
use netcage::proxy::{ProxyConfig, SealedValue, parse_resolve};
use netcage::token::{self, Key};
use netcage::{seal, token::KeyError};
use zeroize::Zeroizing;

use super::learn::Learning;
use super::{KeyArgs, PolicyArgs, input_error};

/// `--key-file`, else `<data-dir>/.vault_key`.
pub fn key_path(args: &KeyArgs) -> PathBuf {
    args.key_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join(".vault_key"))
}

/// Loads the key, printing a warning when the file is readable by others.
pub fn load_key(args: &KeyArgs) -> anyhow::Result<Key> {
    let loaded = Key::load(&key_path(args))?;
    if let Some(warning) = loaded.warning {
        eprintln!("netcage: warning: {warning}");
    }
    Ok(loaded.key)
}

/// Like [`load_key`], but a missing default key file means a fresh key for this run only
/// (nothing sealed before can exist without a key). An explicit `--key-file` must exist.
pub fn load_or_ephemeral_key(args: &KeyArgs) -> anyhow::Result<Key> {
    match load_key(args) {
        Err(e)
            if args.key_file.is_none()
                && matches!(e.downcast_ref::<KeyError>(), Some(KeyError::Missing(_))) =>
        {
            Ok(Key::generate())
        }
        other => other,
    }
}

/// A fully resolved proxy setup plus the environment the child gets for `--seal`.
pub struct Resolved {
    pub proxy: ProxyConfig,
    /// The audit log file (None for stderr): the sandbox hides it from the command.
    pub audit_path: Option<PathBuf>,
    pub sealed_env: Vec<(String, String)>,
    /// `--learn`: fed by the audit writer; report it after the audit log is flushed.
    pub learn: Option<Learning>,
}

pub fn resolve(key_args: &KeyArgs, args: &PolicyArgs) -> anyhow::Result<Resolved> {
    let mut problems = Vec::new();
    let mut policy = match &args.policy {
        Some(path) => Policy::load(path).unwrap_or_else(|e| {
            problems.push(e);
            Policy::default()
        }),
        None => Policy::default(),
    };
    if let Err(e) = policy.add_cli(&args.allow, &args.deny) {
        problems.push(e);
    }
    let mut resolve = HashMap::new();
    for arg in &args.resolve {
        match parse_resolve(arg) {
            Ok((name, ip)) => {
                resolve.insert(name, ip);
            }
            Err(e) => problems.push(e),
        }
    }
    let mut upstream_cas = Vec::new();
    for path in &args.upstream_ca {
        match std::fs::read(path) {
            Ok(pem) => {
                let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
                    .filter_map(Result::ok)
                    .collect();
                if certs.is_empty() {
                    problems.push(format!(
                        "--upstream-ca {}: no PEM certificate in the file",
                        path.display()
                    ));
                }
                upstream_cas.extend(certs);
            }
            Err(e) => problems.push(format!("--upstream-ca {}: {e}", path.display())),
        }
    }
    let mut specs = Vec::new();
    for arg in &args.seal {
        match seal::parse_spec(arg) {
            Ok(spec) => specs.push(spec),
            Err(e) => problems.push(e),
        }
    }
    let mut values = Vec::new();
    for spec in &specs {
        match std::env::var(&spec.name) {
            Ok(v) => values.push(Zeroizing::new(v)),
            Err(_) => problems.push(format!(
                "--seal {}: the variable is not set in netcage's environment; export it first",
                spec.name
            )),
        }
    }
    let learn = match args.learn.clone().map(Learning::new).transpose() {
        Ok(learn) => learn,
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    if !problems.is_empty() {
        return Err(input_error(problems.join("; ")));
    }
    let key = load_or_ephemeral_key(key_args)?;
    let mut sealed = Vec::new();
    let sealed_env = specs
        .iter()
        .zip(&values)
        .map(|(spec, value)| {
            let token = token::seal(&key, value, &spec.hosts);
            // The leak guard's copy: the proxy refuses this value for other hosts.
            sealed.push(SealedValue::new(value, &spec.hosts, &token));
            (spec.name.clone(), token)
        })
        .collect();
    let audit_path = args
        .audit
        .clone()
        .or_else(|| policy.audit.path.clone())
        .unwrap_or_else(|| {
            key_args
                .data_dir
                .join("netcage-audit.jsonl")
                .to_string_lossy()
                .into_owned()
        });
    let learner = learn.as_ref().map(|l| l.learner.clone());
    let audit = AuditLog::open_with(&audit_path, learner).with_context(|| {
        format!("cannot open the audit log {audit_path} (choose another with --audit FILE)")
    })?;
    let ca = Ca::load_or_create(&key_args.data_dir)?;
    Ok(Resolved {
        audit_path: (audit_path != "-").then(|| {
            let path = PathBuf::from(&audit_path);
            std::fs::canonicalize(&path).unwrap_or(path)
        }),
        proxy: ProxyConfig {
            key,
            policy,
            resolve,
            upstream_cas,
            audit: Arc::new(audit),
            ca: Arc::new(ca),
            sealed,
        },
        sealed_env,
        learn,
    })
}

/// What a Tier 1 sandbox needs from a resolved configuration: the data dir, key file and
/// audit log hidden (plus `also_hide`, e.g. serve's socket), netcage's environment with the
/// sealed tokens, this binary as the holder, exec ids `PREFIX-N`.
pub fn sandbox_config(
    key: &KeyArgs,
    resolved: Resolved,
    also_hide: Option<PathBuf>,
    prefix: &str,
) -> netcage::Started {
    let hide = [Some(key_path(key)), resolved.audit_path.clone(), also_hide]
        .into_iter()
        .flatten()
        .collect();
    netcage::Started {
        cfg: resolved.proxy,
        data_dir: key.data_dir.clone(),
        hide,
        base_env: std::env::vars_os().collect(),
        sealed: resolved.sealed_env,
        netcage: std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into()),
        prefix: prefix.into(),
    }
}

/// The environment the child starts with: netcage's own, sealed names replaced by tokens.
pub fn child_env(sealed: &[(String, String)]) -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(k, _)| !sealed.iter().any(|(name, _)| k == name.as_str()))
        .chain(sealed.iter().map(|(k, v)| (k.into(), v.into())))
        .collect()
}
