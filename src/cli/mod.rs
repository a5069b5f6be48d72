//! Command-line structs (plain data) and one handler per subcommand.

pub mod ca;
pub mod config;
pub mod demo;
pub mod doctor;
pub mod exec;
pub mod k8s;
pub mod k8s_check;
pub mod key;
pub mod learn;
pub mod proxy;
pub mod run;
pub mod serve;
pub mod token;
pub mod vault;
pub mod wire;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A user mistake: bad flag value, unreadable or malformed key file, invalid token. Exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The multi-threaded runtime of `run`, `serve`, `proxy` and the sidecar.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn input_error(msg: impl Into<String>) -> anyhow::Error {
    InputError(msg.into()).into()
}

#[derive(Parser, Debug)]
#[command(
    name = "netcage",
    version,
    about = "Run commands that use credentials without holding them",
    long_about = "netcage runs a command whose only way out is a TLS-intercepting proxy. The command \
                  sees opaque starpod:v1 tokens; the proxy swaps in the real secret only on the way \
                  to the hosts each token is bound to."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run CMD behind the proxy; exit with CMD's status
    Run(RunArgs),
    /// One long-lived sandbox with a control socket for `netcage exec`
    Serve(ServeArgs),
    /// Run CMD in the sandbox of a `netcage serve`; exit with CMD's status
    Exec(ExecArgs),
    /// Counters and running commands of a `netcage serve` (JSON)
    Status(StatusArgs),
    /// Run the explicit proxy alone, for other programs (HTTPS_PROXY=http://ADDR)
    Proxy(ProxyCmdArgs),
    /// Make and examine tokens
    #[command(subcommand)]
    Token(TokenCmd),
    /// Where the CA bundle is; print the CA certificate
    #[command(subcommand)]
    Ca(CaCmd),
    /// Key files: trust one netcage refused as possibly planted by a sandboxed command
    #[command(subcommand)]
    Key(KeyCmd),
    /// Kubernetes init container: load the pod's nft rules (needs only NET_ADMIN)
    #[command(name = "k8s-init")]
    K8sInit(K8sInitArgs),
    /// Kubernetes: lint manifests for what the pod's egress guarantee needs
    #[command(name = "k8s-check")]
    K8sCheck(K8sCheckArgs),
    /// Kubernetes startupProbe: exit 0 once `netcage proxy --transparent --ready-file FILE`
    /// is serving
    #[command(name = "k8s-ready")]
    K8sReady(K8sReadyArgs),
    /// Which tier this machine allows, and why
    Doctor,
    /// A self-contained demonstration on a local HTTPS server
    Demo(DemoArgs),
    /// The sandbox side, started by netcage itself (control socket on fd 3)
    #[command(name = "__holder", hide = true)]
    Holder,
}

#[derive(Args, Debug, Clone)]
pub struct KeyArgs {
    /// Data directory: key file .vault_key, CA files (Starpod's layout) [default:
    /// ./.starpod/db if it exists, else $XDG_DATA_HOME/netcage, ~/.local/share/netcage, or
    /// /var/lib/netcage for root; `netcage doctor` says which]
    #[arg(long = "data-dir", value_name = "DIR")]
    pub data_dir_arg: Option<PathBuf>,
    /// Key file: 32 raw bytes, 64 hex characters, or base64 of 32 bytes
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

impl KeyArgs {
    /// `--data-dir`, else the default ([`netcage::datadir::default_dir`]).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir_arg
            .clone()
            .unwrap_or_else(|| netcage::datadir::default_dir().path)
    }
}

#[derive(Args, Debug, Clone)]
pub struct PolicyArgs {
    /// Policy file (netcage.toml)
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Only allow egress to HOST (repeatable; implies default deny)
    #[arg(long, value_name = "HOST")]
    pub allow: Vec<String>,
    /// Deny egress to HOST (repeatable; wins over allow)
    #[arg(long, value_name = "HOST")]
    pub deny: Vec<String>,
    /// Extra CA certificate (PEM) to trust for upstream servers (repeatable)
    #[arg(long, value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Pin the upstream address of NAME (NAME=IP, like curl's --resolve), or of NAME at one
    /// port (NAME:PORT=IP:PORT) (repeatable)
    #[arg(long, value_name = "NAME=IP")]
    pub resolve: Vec<String>,
    /// Audit log (JSONL); '-' for stderr [default: <data-dir>/netcage-audit.jsonl]
    #[arg(long, value_name = "FILE")]
    pub audit: Option<String>,
    /// Let the command write PATH (a directory or file) besides the working directory and
    /// /tmp; changes there persist (repeatable; Tier 1)
    #[arg(long, value_name = "PATH")]
    pub write: Vec<PathBuf>,
    /// Hand the child a token for variable NAME instead of its value, bound to HOSTs
    #[arg(long, value_name = "NAME[=HOST,..]")]
    pub seal: Vec<String>,
    /// Show the credential file PATH sealed: each secret in it replaced by a token bound to
    /// the host the file gives it (FORMAT: git-credentials, netrc, npmrc, docker, gh, pypirc,
    /// cargo; default: from the name). The built-in credential files are sealed unasked
    /// (repeatable; Tier 1)
    #[arg(long, value_name = "PATH[=FORMAT]")]
    pub seal_file: Vec<String>,
    /// Hand the command every entry of this Starpod vault as a token bound to the entry's
    /// allowed hosts [default: vault.db in the data dir, when it exists]
    #[arg(long, value_name = "FILE", conflicts_with = "no_vault")]
    pub vault: Option<PathBuf>,
    /// Do not read the data dir's vault.db
    #[arg(long)]
    pub no_vault: bool,
    /// Also hand out vault entries that name no allowed hosts, unrestricted (skipped otherwise)
    #[arg(long)]
    pub vault_unbound: bool,
    /// Seal an AWS key for SigV4: the command gets a stand-in key id and tokens, the proxy
    /// re-signs its requests to AWS with the real key. Keys from AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else (or with =PROFILE) a profile of
    /// ~/.aws/credentials or ~/.aws/config
    #[arg(long, value_name = "PROFILE", num_args = 0..=1, require_equals = true)]
    pub seal_aws: Option<Option<String>>,
    /// A host the sealed AWS key may also sign for, besides *.amazonaws.com and amazonaws.com
    /// (an S3-compatible endpoint) (repeatable)
    #[arg(long, value_name = "HOST")]
    pub seal_aws_host: Vec<String>,
    /// Record every host reached; at the end write a default-deny netcage.toml allowing
    /// exactly those to FILE (without FILE: print it on stderr)
    #[arg(long, value_name = "FILE", num_args = 0..=1)]
    pub learn: Option<Option<PathBuf>>,
}

/// What of netcage's environment the command gets besides the sealed tokens (`run`, `serve`).
#[derive(Args, Debug, Clone, Default)]
pub struct EnvArgs {
    /// Pass variable NAME on as it is although its name says it holds a credential
    /// (FOO_TOKEN, *_PASSWORD, SSH_AUTH_SOCK, ...; those are withheld otherwise) (repeatable)
    #[arg(long, value_name = "NAME")]
    pub pass_env: Vec<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The strongest tier this machine allows
    Auto,
    /// Tier 1: network namespace; refuse to run without it
    Netns,
    /// Tier 0: proxy environment variables only
    Env,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "auto")]
    pub tier: Tier,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub env: EnvArgs,
    /// Name the process (pid, comm, uid, exe) of each connection in the audit log with
    /// netcage's eBPF program (Tier 1, root; loading it adds tens of milliseconds to the start)
    #[arg(long)]
    pub attribute: bool,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Control socket to create (mode 0600; hidden inside the sandbox)
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Seconds running commands get between SIGTERM and SIGKILL when serve stops
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_grace)]
    pub grace: f64,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub env: EnvArgs,
}

fn parse_grace(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err("give a number of seconds from 0 to 3600".into()),
    }
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Control socket of a running `netcage serve`
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// Working directory inside the sandbox [default: the current directory]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Set a variable for CMD on top of the sandbox's environment (repeatable)
    #[arg(long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Control socket of a running `netcage serve`
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct ProxyCmdArgs {
    /// Address to listen on (the explicit proxy)
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// A Kubernetes pod's sidecar, after `netcage k8s-init`: take the connections and DNS
    /// queries the pod's nft rules redirect, on 127.0.0.1 and ::1 (DNS answered as in Tier 1)
    #[arg(long)]
    pub transparent: bool,
    /// --transparent: the port of the transparent listener (k8s-init's --port)
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_POD_PORT)]
    pub port: u16,
    /// --transparent: the resolver's port, UDP and TCP (k8s-init's --dns-port)
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_POD_DNS_PORT)]
    pub dns_port: u16,
    /// --transparent: make the CA in memory and write only its public files (the bundle for
    /// SSL_CERT_FILE, the certificate, the Java truststore) to DIR, the volume the app mounts
    #[arg(long, value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// --transparent: write the --seal tokens to FILE as NAME=TOKEN lines (mode 0644)
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// --transparent: create FILE once listening (removed first; the startupProbe is
    /// `netcage k8s-ready FILE`)
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

pub const DEFAULT_POD_PORT: u16 = 15001;
pub const DEFAULT_POD_DNS_PORT: u16 = 15053;

#[derive(Args, Debug)]
pub struct K8sInitArgs {
    /// The sidecar's uid (`netcage proxy --transparent` runs as it): its traffic is let out
    #[arg(long, value_name = "UID")]
    pub proxy_uid: u32,
    /// The sidecar's transparent port (its --port)
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_POD_PORT)]
    pub port: u16,
    /// The sidecar's resolver port (its --dns-port)
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_POD_DNS_PORT)]
    pub dns_port: u16,
    /// Print the rules (nft syntax) instead of loading them
    #[arg(long)]
    pub print: bool,
}

#[derive(Args, Debug)]
pub struct K8sCheckArgs {
    /// Manifests (YAML, several documents each allowed); '-' for stdin
    #[arg(required = true, value_name = "FILE.yaml")]
    pub files: Vec<PathBuf>,
    /// The sidecar's uid when no `k8s-init --proxy-uid` in the manifest says it
    #[arg(long, value_name = "UID", default_value_t = 1337)]
    pub proxy_uid: u32,
}

#[derive(Args, Debug)]
pub struct K8sReadyArgs {
    /// The sidecar's --ready-file
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Print a token for a value (from --from-env NAME, or stdin)
    Seal {
        /// Host the token may be sent to (repeatable); '*' for any host
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// Take the value from this environment variable
        #[arg(long, value_name = "NAME", conflicts_with = "stdin")]
        from_env: Option<String>,
        /// Read the value from stdin (the default)
        #[arg(value_name = "-", value_parser = clap::builder::PossibleValuesParser::new(["-"]))]
        stdin: Option<String>,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Show whether a token is valid, its hosts and fingerprint (JSON)
    Inspect {
        /// Also print the secret value
        #[arg(long)]
        reveal: bool,
        token: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Exit 0 if TOKEN may be sent to HOST, 1 if not, 2 if the token is invalid
    Check {
        #[arg(long)]
        host: String,
        token: String,
        #[command(flatten)]
        key: KeyArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Print the path of the CA bundle (system roots + netcage's CA)
    Path {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Print netcage's CA certificate (PEM)
    Export {
        #[command(flatten)]
        key: KeyArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Use FILE from now on, although it appeared where sandboxed commands can write
    Trust {
        /// The key file
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Tier to demonstrate in
    #[arg(long, value_enum, default_value = "auto")]
    pub tier: Tier,
}

/// Runs one subcommand; returns the process exit code.
pub fn dispatch(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Exec(args) => exec::exec(args),
        Command::Status(args) => exec::status(args),
        Command::Proxy(args) => proxy::proxy(args),
        Command::Token(cmd) => token::token(cmd),
        Command::Ca(cmd) => ca::ca(cmd),
        Command::Key(cmd) => key::key(cmd),
        Command::K8sInit(args) => k8s::init(args),
        Command::K8sCheck(args) => k8s::check(args),
        Command::K8sReady(args) => k8s::ready(args),
        Command::Doctor => doctor::doctor(),
        Command::Demo(args) => demo::demo(args),
        Command::Holder => Ok(netcage::sandbox::holder::holder_main(None).clamp(0, 255) as u8),
    }
}

/// The proxy's descriptors: the soft limit up to the hard one (a warning if that fails).
fn raise_nofile_limit() {
    if let Err(e) = netcage::sandbox::process::raise_nofile_limit() {
        eprintln!("netcage: warning: cannot raise the descriptor limit (RLIMIT_NOFILE): {e}");
    }
}

/// 2 for input errors, 1 for everything else.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let input = err.chain().any(|e| {
        e.is::<InputError>()
            || e.is::<netcage::token::KeyError>()
            || e.is::<netcage::token::TokenError>()
    });
    if input { 2 } else { 1 }
}
