//! The TLS-intercepting proxy (DESIGN §5).
//!
//! ```text
//! transparent.rs Tier 1 accept loop: original destination from the socket, synthetic names
//! dns.rs       the sandbox's resolver: synthetic addresses, NXDOMAIN for denied names
//! explicit.rs  accept loop for HTTP forward-proxy requests and CONNECT (Tier 0)
//! tunnel.rs    what arrives inside a tunnel: TLS (intercept), plain HTTP, or raw TCP (by policy)
//! rest.rs      HTTP/1.1 connections served by hyper, and put to rest (hyper's state freed) when idle
//! quota.rs     what one command may take: connections per exec, the DNS query rate
//! tls.rs       ClientHello peeking and the per-host leaf certificate resolver
//! service.rs   one HTTP request: the pipeline of the stages below, in order
//! stages/      host.rs (host decision, egress policy), head.rs (guard, tokens in headers and
//!              target), request_body.rs, reflect.rs (the connection's substituted values),
//!              send.rs (the upstream call), upgrade.rs (after a 101), websocket.rs (messages
//!              after a WebSocket 101), ws_memory.rs (messages being reassembled, charged to
//!              the body budget), response.rs (redaction)
//! sigv4/       SigV4 requests signed with a stand-in key (`--seal-aws`), re-signed with the real key
//! decide.rs    the per-token decision (substitute / block / strip / keep) and its record
//! guard.rs     the leak guard: real values in a request, refused for hosts not theirs
//! body.rs      streamed request/response bodies through the scanner and the redactor
//! grpc.rs      gRPC responses redacted message by message (length prefixes rewritten)
//! decode.rs    compressed responses decoded (streamed) for the redactor, or refused
//! budget.rs    the memory budget shared by every request body read whole (half at most per exec)
//! timeouts.rs  `[limits]` timeouts: request head, idle keep-alive, stalled bodies, raw relays
//! upstream.rs  the pooled, certificate-verifying client and `--resolve` pins
//! respond.rs   errors become HTTP responses here, in one place
//! io.rs        a stream with bytes already read put back in front
//! workers.rs   the proxy's threads: one single-threaded runtime per core, connections pinned
//! trim.rs      memory freed by connections returned to the system when the proxy goes quiet
//! ```

mod body;
mod budget;
mod decide;
mod decode;
pub mod dns;
mod explicit;
mod grpc;
mod guard;
mod io;
mod quota;
mod respond;
mod rest;
mod service;
mod sigv4;
mod stages;
pub(crate) mod timeouts;
mod tls;
mod transparent;
mod trim;
mod tunnel;
mod upstream;
mod workers;

#[cfg(test)]
mod props;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;

use crate::audit::{AuditLog, Event};
use crate::ca::Ca;
use crate::policy::Policy;
use crate::token::Key;

pub use explicit::serve_explicit;
pub use guard::SealedValue;
pub use transparent::serve_transparent;

/// Everything the proxy needs; built once, shared by every connection.
pub struct ProxyConfig {
    pub key: Key,
    pub policy: Policy,
    /// `--resolve NAME=IP`: normalized name → address.
    pub resolve: HashMap<String, IpAddr>,
    /// `--resolve NAME:PORT=IP:PORT`: connections to NAME at PORT go to that address and port
    /// (a client whose URL has no port, like an SDK's default base URL, reaches a test server).
    pub resolve_ports: HashMap<(String, u16), SocketAddr>,
    /// Extra roots for upstream servers (`--upstream-ca`).
    pub upstream_cas: Vec<CertificateDer<'static>>,
    pub audit: Arc<AuditLog>,
    pub ca: Arc<Ca>,
    /// The real values netcage sealed for this proxy (`--seal`, `SandboxBuilder::seal`), for
    /// the leak guard; values it opens from tokens while serving join them.
    pub sealed: Vec<SealedValue>,
    /// `--seal-aws`: the stand-in key ids the proxy re-signs for, with the real keys.
    pub aws: Vec<crate::aws::AwsCredential>,
}

/// The running proxy's shared state.
pub struct Proxy {
    pub(crate) cfg: ProxyConfig,
    pub(crate) upstream: upstream::Upstream,
    pub(crate) tls: tls::Interceptor,
    pub(crate) guard: guard::Guard,
    /// Request bodies read whole share this (`limits.body_memory_mib`).
    pub(crate) bodies: Arc<budget::Budget>,
    attribution: OnceLock<Attribution>,
    /// Open connections per exec (`[limits] connections_per_exec`).
    pub(crate) connections: Arc<quota::Connections>,
    workers: workers::Workers,
}

/// Names the exec a connection (or, for `Proto::Udp`, a DNS query) came from, by the peer
/// address the proxy saw and, when the eBPF program saw the connect, the connecting
/// process. The answer may take a look into the sandbox's /proc, so it comes as a future.
pub type Attribution = Arc<
    dyn Fn(SocketAddr, Proto, Option<Arc<crate::sandbox::bpf::Process>>) -> ExecLookup
        + Send
        + Sync,
>;

/// The exec an [`Attribution`] names, once known.
pub type ExecLookup = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

pub use crate::sandbox::owner::Proto;

/// The threads [`prestart_threads`] started, for the next [`Proxy::new`].
static PRESTARTED: std::sync::Mutex<Option<workers::Workers>> = std::sync::Mutex::new(None);

/// Starts the proxy's threads now, for the next [`Proxy::new`] to take (0.1–0.25 ms): for a
/// caller that waits for something else before it can build the proxy (`netcage run`, while
/// the holder builds the sandbox). A failure is left for `Proxy::new` to report.
pub fn prestart_threads() {
    let mut slot = PRESTARTED.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = workers::Workers::start().ok();
    }
}

impl Proxy {
    /// The audit log every part of the proxy writes to.
    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.cfg.audit
    }

    /// Builds the proxy and starts its threads (one per core; see `workers.rs`). The accept
    /// loops ([`serve_explicit`], [`serve_transparent`]) run on the caller's tokio runtime
    /// and hand each connection to those threads.
    pub fn new(mut cfg: ProxyConfig) -> Result<Arc<Proxy>, ProxyError> {
        let guard = guard::Guard::new(std::mem::take(&mut cfg.sealed));
        let prestarted = PRESTARTED.lock().unwrap_or_else(|p| p.into_inner()).take();
        let workers = match prestarted {
            Some(workers) => workers,
            None => workers::Workers::start().map_err(|e| {
                ProxyError::Threads(format!("cannot start the proxy's threads: {e}"))
            })?,
        };
        let upstream = upstream::Upstream::new(&cfg, workers.len())?;
        let tls = tls::Interceptor::new(cfg.ca.clone());
        let bodies = Arc::new(budget::Budget::new(cfg.policy.limits.body_memory_mib));
        let connections = quota::Connections::new(cfg.policy.limits.connections_per_exec);
        let proxy = Arc::new(Proxy {
            cfg,
            upstream,
            tls,
            guard,
            bodies,
            attribution: OnceLock::new(),
            connections,
            workers,
        });
        let weak = Arc::downgrade(&proxy);
        let given = move || {
            let proxy = weak.upgrade()?;
            Some((proxy.bodies.returned(), proxy.workers.ended()))
        };
        let trim = crate::sandbox::process::trim_heap;
        budget::trim_when_quiet(budget::TRIM_CHECK, given, trim)
            .map_err(|e| ProxyError::Threads(format!("cannot start the proxy's threads: {e}")))?;
        Ok(proxy)
    }

    /// Ends every connection (each writes its audit line) and stops the proxy's threads;
    /// waits for them unless called from one. Accept loops still running hand new
    /// connections to nobody (they are closed at once).
    pub fn shutdown(&self) {
        self.workers.shutdown();
    }

    /// Hands an accepted connection to the least busy proxy thread; `serve` runs there.
    pub(crate) fn hand_off<F, Fut>(&self, stream: tokio::net::TcpStream, serve: F)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let _ = stream.set_nodelay(true);
        // Leaves this runtime's reactor; the worker registers it with its own.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        self.workers.spawn(move || async move {
            if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
                serve(stream).await;
            }
        });
    }

    /// Sets how connections are attributed to execs (once; later calls are ignored).
    pub fn set_attribution(&self, attribution: Attribution) {
        let _ = self.attribution.set(attribution);
    }

    /// The exec a peer belongs to, if attribution is set up.
    pub(crate) fn exec_of(
        &self,
        peer: SocketAddr,
        proto: Proto,
        process: Option<Arc<crate::sandbox::bpf::Process>>,
    ) -> ExecLookup {
        match self.attribution.get() {
            Some(f) => f(peer, proto, process),
            None => Box::pin(std::future::ready(None)),
        }
    }

    /// Whether connections are attributed to execs (and so capped per exec).
    pub(crate) fn attributes(&self) -> bool {
        self.attribution.get().is_some()
    }
}

/// Puts the process that opened a connection into its audit line.
pub(crate) fn name_process(event: &mut Event, process: Option<&crate::sandbox::bpf::Process>) {
    if let Some(p) = process {
        event.pid = Some(p.pid);
        event.comm = Some(p.comm.clone());
        event.uid = Some(p.uid);
        event.exe = p.exe.clone();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot set up upstream TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Threads(String),
}

/// Where a connection came from and where it was going, for one connection's requests.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub client: SocketAddr,
    /// The exec that opened the connection (audit lines carry it).
    pub exec: Option<String>,
    /// The process that opened it, when the eBPF program saw the connect.
    pub process: Option<Arc<crate::sandbox::bpf::Process>>,
    /// The host the client asked for at the connection level (CONNECT authority or the
    /// original destination's name), if any.
    pub target_host: Option<String>,
    pub port: u16,
    /// SNI of the intercepted TLS session.
    pub sni: Option<String>,
    pub tls: bool,
}

/// One `--resolve` pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvePin {
    /// `NAME=IP`: NAME at any port, at IP.
    Name(String, IpAddr),
    /// `NAME:PORT=IP:PORT`: NAME at that port only, at that address and port.
    Port(String, u16, SocketAddr),
}

/// Parses `NAME=IP` or `NAME:PORT=IP:PORT` (IPv6 as `[::1]:PORT`) as given to `--resolve`.
pub fn parse_resolve(arg: &str) -> Result<ResolvePin, String> {
    let usage = || {
        format!(
            "--resolve {arg:?}: use NAME=IP or NAME:PORT=IP:PORT, e.g. api.github.com=127.0.0.1 or api.openai.com:443=127.0.0.1:8443"
        )
    };
    let (name, to) = arg.split_once('=').ok_or_else(usage)?;
    if let Some((host, port)) = name.rsplit_once(':') {
        let port: u16 = port.parse().map_err(|_| usage())?;
        crate::hosts::validate_pattern(host).map_err(|e| format!("--resolve {arg:?}: {e}"))?;
        let addr: SocketAddr = to.parse().map_err(|_| {
            format!("--resolve {arg:?}: {to:?} is not IP:PORT (with a port pin the address needs one too)")
        })?;
        return Ok(ResolvePin::Port(crate::hosts::normalize(host), port, addr));
    }
    crate::hosts::validate_pattern(name).map_err(|e| format!("--resolve {arg:?}: {e}"))?;
    let ip: IpAddr = crate::hosts::normalize(to)
        .parse()
        .map_err(|_| format!("--resolve {arg:?}: {to:?} is not an IP address"))?;
    Ok(ResolvePin::Name(crate::hosts::normalize(name), ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_pins_parse_with_and_without_a_port() {
        assert_eq!(
            parse_resolve("API.github.com=127.0.0.1"),
            Ok(ResolvePin::Name(
                "api.github.com".into(),
                "127.0.0.1".parse().unwrap()
            ))
        );
        assert_eq!(
            parse_resolve("api.openai.com:443=127.0.0.1:8443"),
            Ok(ResolvePin::Port(
                "api.openai.com".into(),
                443,
                "127.0.0.1:8443".parse().unwrap()
            ))
        );
        assert!(parse_resolve("x.test:443=[::1]:9").is_ok());
        for bad in [
            "x.test",
            "x.test:443=127.0.0.1",
            "x.test:http=127.0.0.1:1",
            "x.test=nope",
        ] {
            let e = parse_resolve(bad).unwrap_err();
            assert!(e.starts_with("--resolve"), "{e}");
        }
    }
}
