//! From raw arguments to a resolved configuration: reads the key, policy, CA files and pins,
//! and reports every bad value it finds in one line.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use netcage::audit::AuditLog;
use netcage::ca::Ca;
use netcage::env::{CommandEnv, SealedVar};
use netcage::policy::Policy;
use netcage::proxy::{ProxyConfig, ResolvePin, SealedValue, parse_resolve};
use netcage::token::{self, Key};
use netcage::{seal, token::KeyError};
use zeroize::Zeroizing;

use super::learn::Learning;
use super::{EnvArgs, KeyArgs, PolicyArgs, input_error};

/// `--key-file`, else `<data-dir>/.vault_key`.
pub fn key_path(args: &KeyArgs) -> PathBuf {
    args.key_file
        .clone()
        .unwrap_or_else(|| args.data_dir().join(".vault_key"))
}

/// Loads the key, printing a warning when the file is readable by others. A key file that a
/// sandboxed command may have planted is refused (`keytrust`).
pub fn load_key(args: &KeyArgs) -> anyhow::Result<Key> {
    let path = key_path(args);
    let loaded = Key::load(&path)?;
    if let Some(warning) = loaded.warning {
        eprintln!("netcage: warning: {warning}");
    }
    netcage::keytrust::Store::default_location()
        .vouch(&path, &loaded.key)
        .map_err(input_error)?;
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

/// A fully resolved proxy setup plus the variables `--seal` turns into tokens.
pub struct Resolved {
    pub proxy: ProxyConfig,
    /// The audit log file (None for stderr): the sandbox hides it from the command.
    pub audit_path: Option<PathBuf>,
    pub sealed_env: Vec<SealedVar>,
    /// `--learn`: fed by the audit writer; report it after the audit log is flushed.
    pub learn: Option<Learning>,
    /// `--write`: writable in the sandbox besides the working directory.
    pub write: Vec<PathBuf>,
    /// `--seal-file`: credential files shown sealed besides the built-in ones.
    pub seal_files: Vec<String>,
    /// Secret files besides the key file and audit log (a vault outside the data dir).
    pub hide: Vec<PathBuf>,
}

pub fn resolve(key_args: &KeyArgs, args: &PolicyArgs) -> anyhow::Result<Resolved> {
    resolve_for(key_args, args, None)
}

/// `sidecar_ca_dir`: a Kubernetes sidecar's (`netcage proxy --transparent`): the CA is made in
/// memory with its public files in that directory, the audit log goes to stderr unless given,
/// and there is no key-file trust record (no netcage sandbox shares the sidecar's files; its
/// root file system may be read-only).
pub fn resolve_for(
    key_args: &KeyArgs,
    args: &PolicyArgs,
    sidecar_ca_dir: Option<&Path>,
) -> anyhow::Result<Resolved> {
    let sidecar = sidecar_ca_dir.is_some();
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
    let mut resolve_ports = HashMap::new();
    for arg in &args.resolve {
        match parse_resolve(arg) {
            Ok(ResolvePin::Name(name, ip)) => {
                resolve.insert(name, ip);
            }
            Ok(ResolvePin::Port(name, port, addr)) => {
                resolve_ports.insert((name, port), addr);
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
    let aws = aws_keys(args, &policy).unwrap_or_else(|e| {
        problems.push(e);
        None
    });
    // Writable paths must exist: a typo must not quietly become a smaller sandbox (or, with
    // --tier auto, a fallback to Tier 0).
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let cwd = std::env::current_dir().unwrap_or_default();
    let wanted = args.write.iter().map(|p| ("--write", p.clone())).chain(
        policy.files.write.iter().filter_map(|e| {
            let p = netcage::sandbox::layout::expand(e, home.as_deref())?;
            Some(("files.write", p))
        }),
    );
    for (from, path) in wanted {
        let path = netcage::sandbox::layout::absolute(&path, &cwd);
        if let Err(e) = std::fs::metadata(&path) {
            problems.push(format!(
                "{from} {}: {e}; make it first, or leave it out",
                path.display()
            ));
        }
    }
    // Credential files to seal must exist and name (or be named as) a known format.
    let seal_files = args
        .seal_file
        .iter()
        .map(|s| ("--seal-file", s))
        .chain(policy.files.seal.iter().map(|s| ("files.seal", s)));
    for (from, spec) in seal_files {
        match netcage::credfiles::parse_spec(spec) {
            Ok((path, _)) => {
                let Some(path) = netcage::sandbox::layout::expand(&path, home.as_deref()) else {
                    continue;
                };
                let path = netcage::sandbox::layout::absolute(&path, &cwd);
                if !path.is_file() {
                    problems.push(format!(
                        "{from} {}: not a file; make it first, or leave it out",
                        path.display()
                    ));
                }
            }
            Err(e) => problems.push(format!("{from} {e}")),
        }
    }
    let vault_path = super::vault::chosen(key_args, args).unwrap_or_else(|e| {
        problems.push(e);
        None
    });
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
    let store = netcage::keytrust::Store::default_location();
    let data_dir = key_args.data_dir();
    let key = match (&key_args.key_file, sidecar) {
        (_, false) => {
            store
                .vouch_path(&data_dir, "data dir")
                .map_err(input_error)?;
            load_or_ephemeral_key(key_args)?
        }
        (Some(path), true) => {
            let loaded = Key::load(path)?;
            if let Some(warning) = loaded.warning {
                eprintln!("netcage: note: {warning}");
            }
            loaded.key
        }
        (None, true) => Key::generate(),
    };
    let mut sealed = Vec::new();
    let mut sealed_env: Vec<SealedVar> = specs
        .iter()
        .zip(values)
        .map(|(spec, value)| {
            let token = token::seal(&key, &value, &spec.hosts);
            // The leak guard's copy: the proxy refuses this value for other hosts.
            sealed.push(SealedValue::new(&value, &spec.hosts, &token));
            SealedVar {
                name: spec.name.clone(),
                token,
                value: Some(value),
            }
        })
        .collect();
    let mut hide = Vec::new();
    if let Some(path) = &vault_path {
        if !sidecar {
            store.vouch_path(path, "vault").map_err(input_error)?;
        }
        let taken: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let from = super::vault::load(path, key_args, &key, args, &taken)?;
        sealed_env.extend(from.vars);
        sealed.extend(from.guard);
        hide = from.hide;
    }
    let mut aws_credentials = Vec::new();
    if let Some((keys, hosts)) = aws {
        let secret = keys.secret_access_key.clone();
        let session = keys.session_token.clone();
        let aws = netcage::aws::seal(&key, keys, &hosts);
        // The leak guard's copies: the real key (which the command never gets) and the
        // session token may not go to other hosts.
        let secret_token = &aws.vars[1].token;
        sealed.push(SealedValue::new(&secret, &hosts, secret_token));
        if let (Some(value), Some(token)) = (session, &aws.session_token) {
            sealed.push(SealedValue::new(&value, &hosts, token));
        }
        eprintln!(
            "netcage: AWS key sealed for SigV4: the command gets the stand-in key id {} ({}), re-signed for {}",
            aws.credential.standin_id,
            aws.credential.fingerprint,
            hosts.join(", ")
        );
        sealed_env.extend(aws.vars);
        aws_credentials.push(aws.credential);
    }
    let audit_path = args
        .audit
        .clone()
        .or_else(|| policy.audit.path.clone())
        .or_else(|| sidecar.then(|| "-".to_owned()))
        .unwrap_or_else(|| {
            data_dir
                .join("netcage-audit.jsonl")
                .to_string_lossy()
                .into_owned()
        });
    if audit_path != "-" && !sidecar {
        store
            .vouch_path(Path::new(&audit_path), "audit log")
            .map_err(input_error)?;
    }
    // Before the audit log, which would make a missing data dir with the umask's mode (the CA
    // makes it 0700).
    let ca = match sidecar_ca_dir {
        Some(dir) => Ca::ephemeral(dir).with_context(|| {
            format!(
                "the CA directory {} (give a writable one with --ca-dir DIR)",
                dir.display()
            )
        })?,
        None => Ca::load_or_create(&data_dir).with_context(|| {
            format!(
                "the data dir {} (give another with --data-dir DIR)",
                data_dir.display()
            )
        })?,
    };
    if let Some(why) = ca.truststore_problem() {
        eprintln!(
            "netcage: warning: {why}; Java programs will not trust netcage's CA (make the data dir writable, or give another with --data-dir DIR)"
        );
    }
    let learner = learn.as_ref().map(|l| l.learner.clone());
    let audit =
        AuditLog::open_with(&audit_path, policy.audit.max_bytes, learner).with_context(|| {
            format!("cannot open the audit log {audit_path} (choose another with --audit FILE)")
        })?;
    Ok(Resolved {
        audit_path: (audit_path != "-").then(|| {
            let path = PathBuf::from(&audit_path);
            std::fs::canonicalize(&path).unwrap_or(path)
        }),
        proxy: ProxyConfig {
            key,
            policy,
            resolve,
            resolve_ports,
            upstream_cas,
            audit: Arc::new(audit),
            ca: Arc::new(ca),
            sealed,
            aws: aws_credentials,
        },
        sealed_env,
        learn,
        write: args.write.clone(),
        seal_files: args.seal_file.clone(),
        hide,
    })
}

/// `--seal-aws[=PROFILE]` / `[secrets] aws`: the real keys and the hosts they may sign for
/// (`*.amazonaws.com`, `amazonaws.com`, then `--seal-aws-host` and `secrets.aws_hosts`), or
/// `None` when no AWS key is sealed. The flag wins over the policy.
fn aws_keys(
    args: &PolicyArgs,
    policy: &Policy,
) -> Result<Option<(netcage::aws::AwsKeys, Vec<String>)>, String> {
    use netcage::aws::Source;
    use netcage::policy::AwsSeal;
    let source = match (&args.seal_aws, &policy.secrets.aws) {
        (Some(Some(profile)), _) => Some(Source::Profile(profile.clone())),
        (Some(None), _) | (None, Some(AwsSeal::On(true))) => Some(Source::Default),
        (None, Some(AwsSeal::Profile(profile))) => Some(Source::Profile(profile.clone())),
        (None, Some(AwsSeal::On(false)) | None) => None,
    };
    for host in &args.seal_aws_host {
        netcage::hosts::validate_pattern(host).map_err(|e| format!("--seal-aws-host {e}"))?;
    }
    let Some(source) = source else {
        if !args.seal_aws_host.is_empty() {
            return Err("--seal-aws-host: no AWS key is sealed; add --seal-aws (or [secrets] aws = true in the policy)".into());
        }
        return Ok(None);
    };
    let keys = netcage::aws::load(&source, &|name| std::env::var(name).ok())?;
    let mut hosts: Vec<String> = netcage::aws::DEFAULT_HOSTS
        .iter()
        .map(|h| h.to_string())
        .collect();
    for host in args.seal_aws_host.iter().chain(&policy.secrets.aws_hosts) {
        if !hosts.contains(host) {
            hosts.push(host.clone());
        }
    }
    Ok(Some((keys, hosts)))
}

/// What a Tier 1 sandbox needs from a resolved configuration: the data dir, key file and
/// audit log (and its rotated copy) hidden (plus `also_hide`, e.g. serve's socket), netcage's environment with the
/// sealed tokens (and the `--pass-env` names), this binary as the holder, exec ids `PREFIX-N`.
pub fn sandbox_config(
    key: &KeyArgs,
    resolved: Resolved,
    env: &EnvArgs,
    also_hide: Option<PathBuf>,
    prefix: &str,
) -> netcage::Started {
    // The rotated audit log too, when there is one (it exists from the start then).
    let rotated = resolved
        .audit_path
        .as_deref()
        .map(netcage::audit::rotated_path)
        .filter(|p| p.exists());
    let hide = [
        Some(key_path(key)),
        resolved.audit_path.clone(),
        rotated,
        also_hide,
    ]
    .into_iter()
    .flatten()
    .chain(resolved.hide)
    .collect();
    netcage::Started {
        cfg: resolved.proxy,
        data_dir: key.data_dir(),
        hide,
        base_env: std::env::vars_os().collect(),
        sealed: resolved.sealed_env,
        pass_env: env.pass_env.clone(),
        netcage: own_exe(),
        prefix: prefix.into(),
        write: resolved.write,
        process_attribution: false,
        seal_files: resolved.seal_files,
    }
}

/// This binary, which the sandbox's holder is an exec of (`/proc/self/exe` if its path is gone).
pub(super) fn own_exe() -> std::path::PathBuf {
    std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into())
}

/// After the eBPF program was asked for: one line when connections are attributed through
/// /proc instead, and why.
pub fn report_attribution() {
    if let Some(why) = netcage::sandbox::bpf::failure() {
        eprintln!(
            "netcage: audit lines name no process (pid, comm, uid): the eBPF program is not loaded ({why}); connections are attributed to execs through the sandbox's /proc"
        );
    }
}

/// One line naming what the sandbox hides, and one per note about its view.
pub fn report_view(view: &netcage::sandbox::layout::Layout) {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if !view.hidden.is_empty() {
        let names: Vec<String> = view
            .hidden
            .iter()
            .map(|p| netcage::sandbox::layout::tilde(p, home.as_deref()))
            .collect();
        eprintln!(
            "netcage: hidden from the command: {} (credential locations; [files] show opts one out)",
            names.join(", ")
        );
    }
    if !view.sealed.is_empty() {
        let names: Vec<String> = view
            .sealed
            .iter()
            .map(|p| netcage::sandbox::layout::tilde(p, home.as_deref()))
            .collect();
        eprintln!(
            "netcage: sealed for the command: {} (tokens in place of the secrets, each bound to its host; [files] show opts one out)",
            names.join(", ")
        );
    }
    for note in &view.notes {
        eprintln!("netcage: note: {note}");
    }
}

/// In Tier 0 nothing is hidden: the command reads the real credential files.
pub fn tier0_files_note(resolved: &Resolved) {
    if !resolved.seal_files.is_empty() || !resolved.proxy.policy.files.seal.is_empty() {
        eprintln!(
            "netcage: note: --seal-file and [files] seal work in Tier 1 only; in Tier 0 the command reads the real files"
        );
    }
}

/// The environment the Tier 0 child starts with: netcage's own, filtered by
/// [`netcage::env::command_env`] (sealed values become tokens, credential-named variables are
/// withheld unless `--pass-env`).
pub fn child_env(sealed: &[SealedVar], pass: &[String]) -> CommandEnv {
    let base: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    netcage::env::command_env(&base, sealed, pass)
}

/// Prints the one line naming the variables withheld from the command, if any were.
pub fn report_removed(removed: &[String]) {
    if let Some(line) = netcage::env::removal_notice(removed) {
        eprintln!("{line}");
    }
}
