//! The upstream side: a pooled HTTP client (HTTP/1.1 and HTTP/2 by ALPN) that verifies server
//! certificates against the system roots plus `--upstream-ca`, and resolves `--resolve` pins.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};

use rustls::pki_types::CertificateDer;

use super::body::{BoxError, ProxyBody};
use super::{ProxyConfig, ProxyError};
use crate::policy::{canonical_ip, is_metadata_ip};

pub type HttpClient = Client<HttpsConnector<Pinned>, ProxyBody>;

/// Two pools per proxy thread: one that may speak HTTP/2, and an HTTP/1.1-only one for
/// `Upgrade` requests. Each thread has its own, so an upstream connection is only ever used by
/// the thread that drives it (see `workers.rs`); the TLS configuration, and with it the session
/// cache, is shared. Built on first use: reading the system roots is the slowest part of
/// starting up, and a command that makes no request should not wait for it.
pub struct Upstream {
    extra_roots: Vec<CertificateDer<'static>>,
    tls: OnceLock<rustls::ClientConfig>,
    /// One per worker, and a last one for callers on no worker.
    clients: Vec<OnceLock<Clients>>,
    pub resolver: Resolver,
    /// `--resolve NAME:PORT=IP:PORT` pins, for the connector ([`Pinned`]).
    port_pins: Arc<HashMap<(String, u16), SocketAddr>>,
    /// Each pool's share of [`IDLE_PER_HOST`].
    idle_per_pool: usize,
}

/// Idle upstream connections kept per host, for the whole proxy: split between the workers'
/// pools, so that more cores do not mean more idle connections held.
const IDLE_PER_HOST: usize = 64;

/// One worker pool's share of [`IDLE_PER_HOST`] (at least 4, so many cores still reuse).
fn idle_per_pool(workers: usize) -> usize {
    IDLE_PER_HOST.div_ceil(workers.max(1)).max(4)
}

struct Clients {
    any: HttpClient,
    http1: HttpClient,
}

impl Upstream {
    pub fn new(cfg: &ProxyConfig, workers: usize) -> Result<Upstream, ProxyError> {
        let mut check = rustls::RootCertStore::empty();
        for ca in &cfg.upstream_cas {
            check
                .add(ca.clone())
                .map_err(|e| ProxyError::Tls(format!("--upstream-ca certificate rejected: {e}")))?;
        }
        Ok(Upstream {
            extra_roots: cfg.upstream_cas.clone(),
            tls: OnceLock::new(),
            clients: (0..=workers).map(|_| OnceLock::new()).collect(),
            resolver: Resolver::new(&cfg.resolve, &cfg.policy.egress.allow),
            port_pins: Arc::new(cfg.resolve_ports.clone()),
            idle_per_pool: idle_per_pool(workers),
        })
    }

    /// The pool that may speak HTTP/2.
    pub fn any(&self) -> &HttpClient {
        &self.clients().any
    }

    /// The HTTP/1.1-only pool.
    pub fn http1(&self) -> &HttpClient {
        &self.clients().http1
    }

    fn clients(&self) -> &Clients {
        let last = self.clients.len() - 1;
        let slot = super::workers::current().map_or(last, |i| i.min(last));
        self.clients[slot].get_or_init(|| self.build())
    }

    fn build(&self) -> Clients {
        let tls = self
            .tls
            .get_or_init(|| client_config(&self.extra_roots))
            .clone();
        let resolver = self.resolver.clone();
        let port_pins = self.port_pins.clone();
        let connector = |h2: bool| {
            let mut http = HttpConnector::new_with_resolver(resolver.clone());
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(10)));
            let http = Pinned {
                http,
                pins: port_pins.clone(),
            };
            let builder = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_http1();
            if h2 {
                builder.enable_http2().wrap_connector(http)
            } else {
                builder.wrap_connector(http)
            }
        };
        let client = |h2: bool| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(self.idle_per_pool)
                .build(connector(h2))
        };
        Clients {
            any: client(true),
            http1: client(false),
        }
    }
}

/// System roots plus `--upstream-ca` (already checked in [`Upstream::new`]).
fn client_config(extra: &[CertificateDer<'static>]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(crate::ca::system_roots());
    roots.add_parsable_certificates(extra.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// DNS for upstream connections: `--resolve` pins first, then the system resolver.
#[derive(Clone)]
pub struct Resolver {
    pins: Arc<HashMap<String, IpAddr>>,
    /// What the policy allows by exact address or name although it is this machine or a
    /// metadata service (`allow = ["169.254.169.254"]`): trusted like a pin.
    trusted: Arc<Trusted>,
}

#[derive(Default)]
struct Trusted {
    ips: Vec<IpAddr>,
    names: Vec<String>,
}

impl Resolver {
    fn new(pins: &HashMap<String, IpAddr>, allow: &[String]) -> Self {
        let mut trusted = Trusted::default();
        for entry in allow {
            let name = crate::hosts::normalize(entry);
            match crate::hosts::ip_literal(&name) {
                Some(ip) => trusted.ips.push(canonical_ip(ip)),
                None if name == "localhost" || crate::policy::is_metadata(&name) => {
                    trusted.names.push(name)
                }
                None => {}
            }
        }
        Resolver {
            pins: Arc::new(pins.clone()),
            trusted: Arc::new(trusted),
        }
    }

    /// May the proxy connect to `ip` for `name`? Not to this machine or a cloud metadata
    /// address (any of 169.254.0.0/16, fe80::/10, … in `policy::METADATA_HOSTS`, in any IPv6
    /// form), whatever name led there, unless the policy allows that address or name exactly.
    fn reachable(&self, name: &str, ip: IpAddr) -> bool {
        !(is_this_machine(ip) || is_metadata_ip(ip))
            || self.trusted.ips.contains(&canonical_ip(ip))
            || self.trusted.names.iter().any(|n| n == name)
    }

    /// For an IP-literal host (which the HTTP connector does not resolve): why the proxy must
    /// not connect to it, if it must not.
    pub fn refuse_literal(&self, host: &str) -> Option<String> {
        let name = crate::hosts::normalize(host);
        let ip = crate::hosts::ip_literal(&name)?;
        if self.pins.contains_key(&name) || self.reachable(&name, ip) {
            return None;
        }
        Some(format!(
            "{name} is an address of this machine or a cloud metadata address; netcage does not connect there unless the policy allows it by exact address"
        ))
    }

    /// Addresses for `host`. Unless pinned with `--resolve`, a name (or IP literal) that leads
    /// only to this machine — loopback, unspecified, or an address of one of its interfaces —
    /// is refused: the proxy runs on the host, so it would reach the host's own services (DNS
    /// rebinding included). Such addresses are dropped from mixed answers.
    pub async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let name = crate::hosts::normalize(host);
        if let Some(ip) = self.pins.get(&name) {
            return Ok(vec![SocketAddr::new(*ip, port)]);
        }
        let found: Vec<SocketAddr> = match name.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((name.as_str(), port))
                .await?
                .collect(),
        };
        let outside: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|a| self.reachable(&name, a.ip()))
            .collect();
        if outside.is_empty() && !found.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{name} leads to this machine or a cloud metadata address ({}); pin it with --resolve {name}=IP or allow it by exact address in the policy if that is meant",
                    found[0].ip()
                ),
            ));
        }
        Ok(outside)
    }
}

/// Loopback, unspecified, or an address of one of this machine's interfaces.
fn is_this_machine(ip: IpAddr) -> bool {
    static LOCAL: OnceLock<Vec<IpAddr>> = OnceLock::new();
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_canonical(),
        v4 => v4,
    };
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    LOCAL
        .get_or_init(|| {
            nix::ifaddrs::getifaddrs()
                .map(|addrs| {
                    addrs
                        .filter_map(|a| a.address)
                        .filter_map(|a| {
                            a.as_sockaddr_in()
                                .map(|v4| IpAddr::V4(v4.ip()))
                                .or_else(|| a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .contains(&ip)
}

/// The TCP connector with `--resolve NAME:PORT=IP:PORT` pins: a connection for NAME at PORT
/// goes to the pinned address. Below TLS, so the certificate is still checked for NAME.
#[derive(Clone)]
pub struct Pinned {
    http: HttpConnector<Resolver>,
    pins: Arc<HashMap<(String, u16), SocketAddr>>,
}

type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio::net::TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Pinned {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Most proxies have no port pins: then nothing is looked up per connection.
        let pinned = uri
            .host()
            .filter(|_| !self.pins.is_empty())
            .and_then(|host| {
                let default = if uri.scheme_str() == Some("http") {
                    80
                } else {
                    443
                };
                let key = (
                    crate::hosts::normalize(host),
                    uri.port_u16().unwrap_or(default),
                );
                self.pins.get(&key).copied()
            });
        let uri = match pinned.map(|addr| format!("http://{addr}").parse::<Uri>()) {
            Some(Ok(to)) => to,
            _ => uri,
        };
        let connecting = self.http.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // The connector sets the port on each address it is given.
            Ok(this.lookup(name.as_str(), 0).await?.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machine_and_metadata_need_a_pin_or_an_exact_allow() {
        let plain = Resolver::new(&HashMap::new(), &[]);
        for host in ["127.0.0.1", "[::1]", "169.254.169.254", "fd00:ec2::254"] {
            assert!(plain.refuse_literal(host).is_some(), "{host}");
        }
        assert!(plain.refuse_literal("203.0.113.7").is_none());
        assert!(plain.refuse_literal("api.github.com").is_none());

        let allow = ["169.254.169.254".to_owned(), "*.example.com".to_owned()];
        let allowing = Resolver::new(&HashMap::new(), &allow);
        assert!(allowing.refuse_literal("169.254.169.254").is_none());
        assert!(allowing.refuse_literal("127.0.0.1").is_some());

        let pins = HashMap::from([("127.0.0.1".to_owned(), "127.0.0.1".parse().unwrap())]);
        assert!(
            Resolver::new(&pins, &[])
                .refuse_literal("127.0.0.1")
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_port_pin_moves_that_port_only() {
        use tower_service::Service;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = listener.local_addr().unwrap();
        let pins = HashMap::from([(("localhost".to_owned(), 443), to)]);
        let mut http = HttpConnector::new_with_resolver(Resolver::new(&HashMap::new(), &[]));
        http.enforce_http(false);
        let mut pinned = Pinned {
            http,
            pins: Arc::new(pins),
        };
        let uri: Uri = "https://LOCALHOST/".parse().unwrap();
        let (connected, accepted) = tokio::join!(pinned.call(uri), listener.accept());
        assert!(connected.is_ok() && accepted.is_ok());
        // Another port of the name is not pinned: it resolves as usual, and loopback is refused.
        let uri: Uri = "https://localhost:8443/".parse().unwrap();
        assert!(pinned.call(uri).await.is_err());
    }

    #[tokio::test]
    async fn numeric_names_for_metadata_addresses_are_refused_after_resolving() {
        let plain = Resolver::new(&HashMap::new(), &[]);
        // getaddrinfo reads each of these as 169.254.169.254 (inet_aton forms); no DNS query.
        for name in [
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "169.254.169.254",
            "::ffff:169.254.170.2",
            "100.100.100.200",
            "fe80::1",
        ] {
            let err = plain.lookup(name, 80).await.unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{name}");
            assert!(err.to_string().contains("metadata"), "{name}: {err}");
        }
        for host in ["[::ffff:169.254.170.2]", "169.254.170.23", "192.0.0.192"] {
            assert!(plain.refuse_literal(host).is_some(), "{host}");
        }
        // An exact allow of the address lets every form of it through.
        let allowing = Resolver::new(&HashMap::new(), &["169.254.169.254".to_owned()]);
        for name in ["2852039166", "::ffff:169.254.169.254"] {
            let found = allowing.lookup(name, 80).await.unwrap();
            assert_eq!(
                canonical_ip(found[0].ip()),
                "169.254.169.254".parse::<IpAddr>().unwrap()
            );
        }
        assert!(allowing.lookup("169.254.170.2", 80).await.is_err());
    }

    #[tokio::test]
    async fn a_name_leading_to_loopback_is_refused_unless_allowed_exactly() {
        let plain = Resolver::new(&HashMap::new(), &[]);
        let err = plain.lookup("localhost", 80).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let allowing = Resolver::new(&HashMap::new(), &["localhost".to_owned()]);
        assert!(!allowing.lookup("localhost", 80).await.unwrap().is_empty());
    }

    #[test]
    fn the_idle_cap_is_for_the_whole_proxy_not_each_worker() {
        // 64 idle connections per host in all, however many worker pools share them.
        for (workers, each) in [(0, 64), (1, 64), (2, 32), (3, 22), (8, 8), (16, 4), (64, 4)] {
            assert_eq!(idle_per_pool(workers), each, "{workers} workers");
        }
    }
}
