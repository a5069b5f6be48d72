//! The library API for programs that run many commands in one sandbox (an agent server).
//!
//! ```no_run
//! # async fn demo() -> Result<(), netcage::Error> {
//! let sb = netcage::Sandbox::builder()
//!     .data_dir("/var/lib/agent/.starpod/db")
//!     .key_file("/var/lib/agent/.starpod/db/.vault_key")
//!     .seal("GITHUB_TOKEN", "ghp_real_value", &["api.github.com", "github.com"])
//!     .start()
//!     .await?;
//! let out = sb
//!     .command("bash")
//!     .arg("-c")
//!     .arg("curl -sH \"Authorization: Bearer $GITHUB_TOKEN\" https://api.github.com/user")
//!     .stdout(netcage::Stdio::Piped)
//!     .spawn()
//!     .await?
//!     .wait_with_output()
//!     .await?;
//! println!("{}", String::from_utf8_lossy(&out.stdout));
//! sb.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! One [`Sandbox`] is one set of namespaces (network, mount, pid; user when not root), one
//! proxy and one resolver; every [`Command`] runs inside it, in a session of its own, and the
//! audit line of every request names the exec that made it. The sandbox side is the holder
//! process (`netcage __holder`), so the `netcage` binary must be installed: see
//! [`SandboxBuilder::netcage_binary`].

mod command;
mod view;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use zeroize::Zeroizing;

pub use command::{Child, Command, Output, Signaller, Stdio};

use crate::audit::{AuditLog, Event};
use crate::ca::{self, CA_BUNDLE, CA_CERT, Ca};
use crate::env::SealedVar;
use crate::policy::Policy;
use crate::proxy::dns::{self, SyntheticNames};
use crate::proxy::{Proxy, ProxyConfig, SealedValue, serve_transparent};
use crate::sandbox::execs::{ExecInfo, Execs};
use crate::sandbox::{detect, launch, plan};
use crate::token::{self, Key};

/// Why a sandbox could not start, or a command could not run. The message is one line that
/// says what happened and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Error(pub String);

impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e.0)
    }
}

/// Configures a [`Sandbox`]. Everything has a default except where the key comes from.
pub struct SandboxBuilder {
    data_dir: Option<PathBuf>,
    key: Option<Key>,
    key_file: Option<PathBuf>,
    policy: Policy,
    seal: Vec<(String, Zeroizing<String>, Vec<String>)>,
    tokens: Vec<(String, String)>,
    env: Option<Vec<(OsString, OsString)>>,
    pass_env: Vec<String>,
    audit: Option<Arc<AuditLog>>,
    hide: Vec<PathBuf>,
    resolve: HashMap<String, IpAddr>,
    upstream_cas: Vec<CertificateDer<'static>>,
    netcage: Option<PathBuf>,
    exec_prefix: String,
    write: Vec<PathBuf>,
    seal_files: Vec<String>,
}

/// A running sandbox: start commands in it with [`Sandbox::command`], end it with
/// [`Sandbox::shutdown`]. Dropping it ends it too (with no grace period).
pub struct Sandbox {
    proxy: Arc<Proxy>,
    execs: Arc<Execs>,
    holder: Mutex<Option<launch::Holder>>,
    env: Arc<Vec<(OsString, OsString)>>,
    removed_env: Vec<String>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The NFLOG reader thread and the pipe whose closing stops it.
    nflog: Mutex<Option<(std::os::fd::OwnedFd, std::thread::JoinHandle<()>)>>,
    next: AtomicU64,
    prefix: String,
    view: crate::sandbox::layout::Layout,
    /// The namespace the eBPF program records connections of, while it does.
    watched: Option<crate::sandbox::bpf::Watched>,
}

impl Sandbox {
    /// A builder with the defaults: the data dir `./.starpod/db` if it exists, else the
    /// user's own ([`crate::datadir::default_dir`]), its key (or a fresh one), no
    /// policy restrictions, no audit log, this process's environment for the commands.
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder {
            data_dir: None,
            key: None,
            key_file: None,
            policy: Policy::default(),
            seal: Vec::new(),
            tokens: Vec::new(),
            env: None,
            pass_env: Vec::new(),
            audit: None,
            hide: Vec::new(),
            resolve: HashMap::new(),
            upstream_cas: Vec::new(),
            netcage: None,
            exec_prefix: random_tag(),
            write: Vec::new(),
            seal_files: Vec::new(),
        }
    }

    /// A command to run in the sandbox, like `tokio::process::Command::new(program)`. Its
    /// environment starts as the sandbox's (see [`SandboxBuilder::env_clear`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command<'_> {
        Command::new(self, program.as_ref())
    }

    /// The commands running now.
    pub fn running(&self) -> Vec<ExecInfo> {
        self.execs.running()
    }

    /// The proxy (its audit log, for example).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Credential locations the commands do not see (hidden behind empty ones).
    pub fn hidden(&self) -> &[PathBuf] {
        &self.view.hidden
    }

    /// Credential files the commands see sealed (tokens in place of their secrets).
    pub fn sealed_files(&self) -> &[PathBuf] {
        &self.view.sealed
    }

    /// Directories the commands may change for real (the working directory, `write`).
    pub fn writable(&self) -> &[PathBuf] {
        &self.view.writable
    }

    /// What a user should know about the sandbox's filesystem view (a directory left
    /// read-only, a fallback taken).
    pub fn notes(&self) -> &[String] {
        &self.view.notes
    }

    /// The environment every command starts with (sealed variables hold tokens).
    pub fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// The variables withheld from the commands because their names say they hold
    /// credentials or reach a key agent (see [`crate::env::WITHHELD`]; keep one with
    /// [`SandboxBuilder::pass_env`]). Names only, never values.
    pub fn removed_env(&self) -> &[String] {
        &self.removed_env
    }

    fn next_exec_id(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }

    /// Resolves when the sandbox is gone (shut down, or its processes were killed).
    pub async fn closed(&self) {
        self.execs.closed().await
    }

    /// SIGTERM to every process in the sandbox, SIGKILL to what is left after `grace`, then
    /// the namespaces go away and the proxy stops.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop(grace, true).await
    }

    /// [`shutdown`](Self::shutdown) for a process that exits next (`netcage run`): returns
    /// once every process of the sandbox has exited and the proxy has stopped, without
    /// waiting for the holder's own exit (the namespaces going away, 0.3–0.7 ms); it has no
    /// process left and ends on its own, reaped by whoever adopts it.
    pub async fn shutdown_before_exit(&self, grace: Duration) {
        self.stop(grace, false).await
    }

    async fn stop(&self, grace: Duration, reap_holder: bool) {
        self.execs.shutdown(grace);
        // The holder exits after init, and its exit (the namespaces going away) takes most of
        // a millisecond: it is reaped while the proxy stops.
        let holder = lock(&self.holder).take().filter(|_| reap_holder);
        let holder = holder.map(|mut holder| tokio::task::spawn_blocking(move || holder.wait()));
        // init has exited (its end of the control socket closed with it) once nothing of the
        // sandbox runs: from here no connection, query or packet can come.
        self.execs.closed().await;
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
        let proxy = self.proxy.clone();
        let _ = tokio::task::spawn_blocking(move || proxy.shutdown()).await;
        crate::timing::mark("proxy stopped");
        // Its last read picks up packets dropped just before the end.
        let nflog = lock(&self.nflog).take();
        if let Some((stop, thread)) = nflog {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        if let Some(holder) = holder {
            let _ = holder.await;
        }
        crate::timing::mark("holder reaped");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for task in lock(&self.tasks).iter() {
            task.abort();
        }
        // Connections still open end now (each queues its audit line).
        self.proxy.shutdown();
        // Closing the stop pipe ends the NFLOG reader.
        lock(&self.nflog).take();
        if let (Some(watched), Some(tracker)) = (self.watched, crate::sandbox::bpf::loaded()) {
            tracker.unwatch(watched);
        }
        // init kills everything on a shutdown with no grace; reap the holder on a thread of
        // its own (it exits right after init).
        if let Some(mut holder) = lock(&self.holder).take() {
            self.execs.shutdown(Duration::ZERO);
            std::thread::spawn(move || holder.wait());
        }
    }
}

impl SandboxBuilder {
    /// Where the CA lives (and the key, unless given otherwise): Starpod's layout. Default
    /// `./.starpod/db` when it exists (a Starpod project), else the user's own data dir
    /// ([`crate::datadir::default_dir`]). It is hidden from the commands; only the public CA
    /// files stay visible.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// The vault key. It stays in this process; commands never see it.
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Read the key from this file at start (32 raw bytes, 64 hex characters or base64); the
    /// file is hidden from the commands. Default: `<data_dir>/.vault_key`, or a fresh key
    /// for this sandbox only when that file does not exist.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// The egress policy (`netcage.toml`, DESIGN §6); default: allow every host.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Commands get a token for `value` in variable `name`, usable only towards `hosts`
    /// (`"*"` for any host). The value is zeroed when the builder is dropped.
    pub fn seal(mut self, name: &str, value: &str, hosts: &[&str]) -> Self {
        self.seal.push((
            name.to_owned(),
            Zeroizing::new(value.to_owned()),
            hosts.iter().map(|h| (*h).to_owned()).collect(),
        ));
        self
    }

    /// Commands get this already sealed token in variable `name`.
    pub fn token(mut self, name: &str, token: &str) -> Self {
        self.tokens.push((name.to_owned(), token.to_owned()));
        self
    }

    /// Commands start with an empty environment (plus the sealed variables and the CA trust
    /// variables) instead of this process's.
    ///
    /// Whichever environment the commands start with, a sealed value found in any other
    /// variable is replaced by its token, and variables whose names say they hold credentials
    /// ([`crate::env::WITHHELD`], also ones set with [`SandboxBuilder::env`]) are withheld
    /// unless they hold a token: see [`SandboxBuilder::pass_env`], [`Sandbox::removed_env`].
    pub fn env_clear(mut self) -> Self {
        self.env = Some(Vec::new());
        self
    }

    /// Sets a variable every command starts with.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let env = self
            .env
            .get_or_insert_with(|| std::env::vars_os().collect());
        env.retain(|(k, _)| k != key.as_ref());
        env.push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Passes variable `name` on to the commands as it is, although its name says it holds a
    /// credential (`FOO_TOKEN`, `SSH_AUTH_SOCK`, …), like `--pass-env NAME`.
    pub fn pass_env(mut self, name: &str) -> Self {
        self.pass_env.push(name.to_owned());
        self
    }

    /// Where audit lines go (default: nowhere).
    pub fn audit(mut self, audit: Arc<AuditLog>) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Makes `path` writable for the commands besides the sandbox's working directory and
    /// `/tmp` (the policy's `[files] write` adds more). Changes there persist.
    pub fn write(mut self, path: impl Into<PathBuf>) -> Self {
        self.write.push(path.into());
        self
    }

    /// Shows this credential file sealed: every secret in it replaced by a token bound to the
    /// host the file gives it (`PATH` or `PATH=FORMAT`, see [`crate::credfiles`]), like
    /// `--seal-file`. The built-in credential files are sealed without asking.
    pub fn seal_file(mut self, spec: &str) -> Self {
        self.seal_files.push(spec.to_owned());
        self
    }

    /// Covers this file with an empty one inside the sandbox (an audit log, a secret file).
    pub fn hide(mut self, path: impl Into<PathBuf>) -> Self {
        self.hide.push(path.into());
        self
    }

    /// Connect to `ip` for `name` (like curl's `--resolve`).
    pub fn resolve(mut self, name: &str, ip: IpAddr) -> Self {
        self.resolve.insert(crate::hosts::normalize(name), ip);
        self
    }

    /// Also trust this CA certificate (DER) for upstream servers.
    pub fn upstream_ca(mut self, der: CertificateDer<'static>) -> Self {
        self.upstream_cas.push(der);
        self
    }

    /// The `netcage` binary that runs the sandbox side (`netcage __holder`). Default: the
    /// `NETCAGE` environment variable, else this program if it is netcage, else `netcage`
    /// on the PATH.
    pub fn netcage_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.netcage = Some(path.into());
        self
    }

    /// Exec ids become `PREFIX-1`, `PREFIX-2`, … (default: random hex).
    pub fn exec_prefix(mut self, prefix: &str) -> Self {
        self.exec_prefix = prefix.to_owned();
        self
    }

    /// Builds the sandbox and starts the proxy on the current tokio runtime.
    pub async fn start(self) -> Result<Sandbox, Error> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| crate::datadir::default_dir().path);
        let key_file = self
            .key_file
            .clone()
            .unwrap_or_else(|| data_dir.join(".vault_key"));
        crate::keytrust::Store::default_location()
            .vouch_path(&data_dir, "data dir")
            .map_err(Error)?;
        let key = match self.key {
            Some(key) => key,
            None => match Key::load(&key_file) {
                Ok(loaded) => {
                    crate::keytrust::Store::default_location()
                        .vouch(&key_file, &loaded.key)
                        .map_err(Error)?;
                    loaded.key
                }
                Err(token::KeyError::Missing(_)) if self.key_file.is_none() => Key::generate(),
                Err(e) => return Err(Error(e.to_string())),
            },
        };
        let ca = Ca::load_or_create(&data_dir).map_err(|e| Error(e.to_string()))?;
        // A token's value, when this key opens it, is replaced by the token elsewhere too,
        // and guarded by the leak guard.
        let mut values: Vec<SealedValue> = Vec::new();
        let mut sealed: Vec<SealedVar> = self
            .tokens
            .iter()
            .map(|(name, tok)| {
                let opened = token::open(&key, tok).ok();
                if let Some(secret) = &opened {
                    values.push(SealedValue::new(&secret.value, &secret.hosts, tok));
                }
                SealedVar {
                    name: name.clone(),
                    token: tok.clone(),
                    value: opened.map(|s| s.value),
                }
            })
            .collect();
        for (name, value, hosts) in &self.seal {
            if hosts.is_empty() {
                return Err(Error(format!(
                    "seal {name}: name the hosts the value may go to (\"*\" for any)"
                )));
            }
            let token = token::seal(&key, value, hosts);
            values.push(SealedValue::new(value, hosts, &token));
            sealed.push(SealedVar {
                name: name.clone(),
                token,
                value: Some(value.clone()),
            });
        }
        let cfg = ProxyConfig {
            key,
            policy: self.policy,
            resolve: self.resolve,
            resolve_ports: HashMap::new(),
            upstream_cas: self.upstream_cas,
            audit: self.audit.unwrap_or_else(|| Arc::new(AuditLog::disabled())),
            ca: Arc::new(ca),
            sealed: values,
            aws: Vec::new(),
        };
        let base = self.env.unwrap_or_else(|| std::env::vars_os().collect());
        let mut hide = self.hide;
        hide.push(key_file);
        let netcage = match self.netcage {
            Some(path) => path,
            None => default_netcage()?,
        };
        let started = Started {
            cfg,
            data_dir,
            hide,
            base_env: base,
            sealed,
            pass_env: self.pass_env,
            netcage,
            prefix: self.exec_prefix,
            write: self.write,
            process_attribution: true,
            seal_files: self.seal_files,
        };
        let (started, launched) = tokio::task::spawn_blocking(move || {
            let launched = started.launch();
            (started, launched)
        })
        .await
        .map_err(|e| Error(format!("starting the sandbox: {e}")))?;
        started.into_sandbox(launched?)
    }
}

/// A sandbox being built ([`Started::begin`]).
pub struct Launching {
    building: launch::Building,
    view: crate::sandbox::layout::Layout,
    secrets: view::Secrets,
}

impl Launching {
    /// Waits (blocking) until the sandbox is ready or has failed.
    pub fn wait(self) -> Result<launch::Launched, Error> {
        let mut launched = self.building.wait().map_err(Error)?;
        launched.view = self.view;
        launched.sealed_values = self.secrets.values;
        launched.sealed_aws = self.secrets.aws;
        let notes = std::mem::take(&mut launched.notes);
        launched.view.notes.extend(notes);
        Ok(launched)
    }
}

/// What `start` has resolved; also how the CLI starts a sandbox from its own configuration.
pub struct Started {
    /// The proxy's configuration (key, policy, pins, CAs, audit log).
    pub cfg: ProxyConfig,
    /// The data dir: hidden from the commands but for the public CA files.
    pub data_dir: PathBuf,
    /// Files covered inside the sandbox (key file, audit log, control socket).
    pub hide: Vec<PathBuf>,
    /// The environment commands start with, before sealing.
    pub base_env: Vec<(OsString, OsString)>,
    /// Variables that hold tokens (with the real values, to replace them elsewhere too).
    pub sealed: Vec<SealedVar>,
    /// Credential-named variables to pass on as they are (`--pass-env`).
    pub pass_env: Vec<String>,
    /// The netcage binary that runs the sandbox side.
    pub netcage: PathBuf,
    /// Exec ids are `PREFIX-N`.
    pub prefix: String,
    /// Writable besides the working directory (`--write`; `[files] write` comes from the
    /// policy).
    pub write: Vec<PathBuf>,
    /// Name the process of each connection with the eBPF program (root only; loading it costs
    /// tens of milliseconds once per netcage process). Without it, or when it cannot be
    /// loaded, connections are attributed through the sandbox's /proc.
    pub process_attribution: bool,
    /// Credential files to show sealed besides the built-in ones (`--seal-file PATH[=FORMAT]`;
    /// `[files] seal` comes from the policy).
    pub seal_files: Vec<String>,
}

impl Started {
    /// Builds the namespaces (blocking, a few milliseconds). On failure `self` is intact, so
    /// the caller can fall back to Tier 0 with the same configuration.
    pub fn launch(&self) -> Result<launch::Launched, Error> {
        self.begin(None)?.wait()
    }

    /// [`launch`](Self::launch) in two halves: this one hands the holder (`pending`, started
    /// beforehand, or a new one) its spec and returns while it builds the sandbox; the caller
    /// can do other work before [`Launching::wait`].
    pub fn begin(&self, pending: Option<launch::Pending>) -> Result<Launching, Error> {
        let data_dir = std::fs::canonicalize(&self.data_dir).map_err(|e| {
            Error(format!(
                "cannot resolve the data dir {}: {e}",
                self.data_dir.display()
            ))
        })?;
        let pending = match pending {
            Some(p) => p,
            None => launch::Pending::spawn(&self.netcage).map_err(Error)?,
        };
        let (view, secrets) = view::filesystem_view(self, &data_dir)?;
        let building = pending.start(&view.ops).map_err(Error)?;
        Ok(Launching {
            building,
            view,
            secrets,
        })
    }

    /// Takes over a launched sandbox: starts the proxy, the resolver and the NFLOG reader on
    /// the current tokio runtime.
    pub fn into_sandbox(self, launched: launch::Launched) -> Result<Sandbox, Error> {
        let data_dir = std::fs::canonicalize(&self.data_dir).unwrap_or(self.data_dir.clone());
        let java = self.cfg.ca.truststore_path().is_some();
        let env = command_env(
            &self.base_env,
            &self.sealed,
            &self.pass_env,
            &data_dir,
            java,
        );
        let execs = Execs::new(launched.control, launched.proc_dir)
            .map_err(|e| Error(format!("cannot start the control thread: {e}")))?;
        let mut cfg = self.cfg;
        // The real values of the sealed credential files: guarded like `seal`'s.
        cfg.sealed.extend(launched.sealed_values);
        // The AWS keys of a sealed ~/.aws: re-signed like --seal-aws's.
        cfg.aws.extend(launched.sealed_aws);
        let proxy = Proxy::new(cfg).map_err(|e| Error(e.to_string()))?;
        let attribution = execs.clone();
        proxy.set_attribution(Arc::new(move |peer, proto, process| {
            Box::pin(attribution.exec_of(peer, proto, process.as_deref()))
        }));
        let mut tasks = Vec::new();
        let names = Arc::new(SyntheticNames::default());
        let resolver = Arc::new(dns::Resolver::new(
            names.clone(),
            proxy.cfg.policy.limits.dns_queries_per_sec,
        ));
        let sockets = launched.sockets;
        let watched = match (self.process_attribution, sockets.tcp.first()) {
            (true, Some(listener)) => crate::sandbox::bpf::tracker()
                .ok()
                .and_then(|t| t.watch(std::os::fd::AsFd::as_fd(listener), 0).ok()),
            _ => None,
        };
        // Each exec in a cgroup of its own, which the program records at each connect.
        if let Some(tracker) = watched.and(crate::sandbox::bpf::loaded())
            && let Ok(cgroups) = crate::sandbox::cgroups::ExecCgroups::new(&tracker.cgroup)
        {
            execs.use_cgroups(cgroups);
        }
        let io = |e: std::io::Error| Error(format!("sandbox socket: {e}"));
        for l in sockets.tcp {
            deepen_backlog(&l);
            l.set_nonblocking(true).map_err(io)?;
            let l = tokio::net::TcpListener::from_std(l).map_err(io)?;
            tasks.push(tokio::spawn(serve_transparent(
                proxy.clone(),
                names.clone(),
                l,
            )));
        }
        for s in sockets.dns_udp {
            s.set_nonblocking(true).map_err(io)?;
            let s = tokio::net::UdpSocket::from_std(s).map_err(io)?;
            tasks.push(tokio::spawn(dns::serve_udp(
                proxy.clone(),
                resolver.clone(),
                s,
            )));
        }
        for l in sockets.dns_tcp {
            deepen_backlog(&l);
            l.set_nonblocking(true).map_err(io)?;
            let l = tokio::net::TcpListener::from_std(l).map_err(io)?;
            tasks.push(tokio::spawn(dns::serve_tcp(
                proxy.clone(),
                resolver.clone(),
                l,
            )));
        }
        let nflog = match sockets.nflog {
            Some(fd) => {
                let audit = proxy.audit().clone();
                let execs = Arc::downgrade(&execs);
                // Closing the write end tells the reader to finish.
                let (stopped, stop) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error(format!("pipe: {e}")))?;
                let thread = std::thread::Builder::new()
                    .name("netcage-nflog".into())
                    .spawn(move || log_dropped_packets(fd, &audit, &execs, stopped))
                    .map_err(|e| Error(format!("cannot start the NFLOG reader: {e}")))?;
                Some((stop, thread))
            }
            None => None,
        };
        Ok(Sandbox {
            proxy,
            execs,
            holder: Mutex::new(Some(launched.holder)),
            env: Arc::new(env.env),
            removed_env: env.removed,
            tasks: Mutex::new(tasks),
            nflog: Mutex::new(nflog),
            next: AtomicU64::new(1),
            prefix: self.prefix,
            view: launched.view,
            watched,
        })
    }
}

/// The commands' environment: the base one without proxy variables, filtered by
/// [`crate::env::command_env`] (sealed values become tokens, credential-named variables are
/// withheld), plus the CA trust variables pointing at the public copies inside the sandbox.
fn command_env(
    base: &[(OsString, OsString)],
    sealed: &[SealedVar],
    pass: &[String],
    data_dir: &Path,
    java: bool,
) -> crate::env::CommandEnv {
    let base: Vec<(OsString, OsString)> = base
        .iter()
        .filter(|(k, _)| !plan::PROXY_VARS.iter().any(|p| k == p))
        .cloned()
        .collect();
    let mut out = crate::env::command_env(&base, sealed, pass);
    for (var, path) in ca::trust_env(&data_dir.join(CA_BUNDLE), &data_dir.join(CA_CERT)) {
        out.env.retain(|(k, _)| k != var);
        out.env.push((var.into(), path.into()));
    }
    if !java {
        return out;
    }
    // Java: the truststore, after the user's own options (so that it wins).
    let java = OsStr::new("JAVA_TOOL_OPTIONS");
    let existing = out
        .env
        .iter()
        .position(|(k, _)| k == java)
        .map(|i| out.env.remove(i).1);
    let options =
        ca::java_tool_options(existing.as_deref(), &data_dir.join(ca::CA_TRUSTSTORE), None);
    out.env.push((java.into(), options));
    out
}

fn default_netcage() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("NETCAGE") {
        return Ok(PathBuf::from(path));
    }
    if let Ok(me) = std::env::current_exe()
        && me.file_name() == Some(OsStr::new("netcage"))
    {
        return Ok(me);
    }
    detect::find_in_path("netcage").ok_or_else(|| {
        Error(
            "cannot find the netcage binary that runs the sandbox: install it on the PATH, set NETCAGE=/path/to/netcage, or call netcage_binary()".into(),
        )
    })
}

/// Connections the kernel holds for a listener until the proxy accepts them (the kernel caps
/// it at the namespace's `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// A listener made with std's backlog of 128 gets [`LISTEN_BACKLOG`]: under a burst of
/// connections (a flood, refused at once past its exec's cap) a full queue drops the SYNs of
/// every exec, and their clients retry only a second later.
fn deepen_backlog(listener: &std::net::TcpListener) {
    let _ = socket2::SockRef::from(listener).listen(LISTEN_BACKLOG);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_tag() -> String {
    let mut bytes = [0u8; 3];
    rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the namespace's NFLOG socket: one audit line per packet the sandbox dropped, until
/// `stop` (then what is queued still).
fn log_dropped_packets(
    fd: std::os::fd::OwnedFd,
    audit: &AuditLog,
    execs: &std::sync::Weak<Execs>,
    stop: std::os::fd::OwnedFd,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut buf = vec![0u8; 64 * 1024];
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let mut file = std::fs::File::from(fd);
    let mut stopping = false;
    loop {
        let n = match std::io::Read::read(&mut file, &mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if stopping {
                    return;
                }
                let mut fds = [
                    PollFd::new(file.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                ];
                if poll(&mut fds, PollTimeout::NONE).is_ok()
                    && fds[1].revents().is_some_and(|r| !r.is_empty())
                {
                    // One more read: packets dropped just before the end.
                    stopping = true;
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // ENOBUFS: the kernel dropped log messages; keep reading.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOBUFS) => continue,
            Err(_) => return,
        };
        for dropped in crate::sandbox::nflog::parse(&buf[..n]) {
            let mut event = Event::new("packet", "block");
            event.exec = execs.upgrade().and_then(|e| e.only_running());
            event.dst = Some(dropped.dst);
            event.method = Some(dropped.protocol.to_owned());
            event.reason = Some(match dropped.uid {
                Some(uid) => {
                    format!("only TCP through the proxy and DNS may leave the sandbox (uid {uid})")
                }
                None => "only TCP through the proxy and DNS may leave the sandbox".to_owned(),
            });
            audit.log(event);
        }
    }
}
