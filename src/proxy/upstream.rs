//! The upstream side: a pooled HTTP client (HTTP/1.1 and HTTP/2 by ALPN) that verifies server
//! certificates against the system roots plus `--upstream-ca`, and resolves `--resolve` pins.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

use rustls::pki_types::CertificateDer;

use super::body::ProxyBody;
use super::{ProxyConfig, ProxyError};

pub type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, ProxyBody>;

/// Two pools: one that may speak HTTP/2, and an HTTP/1.1-only one for `Upgrade` requests.
/// Built on first use: reading the system roots is the slowest part of starting up, and a
/// command that makes no request should not wait for it.
pub struct Upstream {
    extra_roots: Vec<CertificateDer<'static>>,
    clients: OnceLock<Clients>,
    pub resolver: Resolver,
}

struct Clients {
    any: HttpClient,
    http1: HttpClient,
}

impl Upstream {
    pub fn new(cfg: &ProxyConfig) -> Result<Upstream, ProxyError> {
        let mut check = rustls::RootCertStore::empty();
        for ca in &cfg.upstream_cas {
            check
                .add(ca.clone())
                .map_err(|e| ProxyError::Tls(format!("--upstream-ca certificate rejected: {e}")))?;
        }
        Ok(Upstream {
            extra_roots: cfg.upstream_cas.clone(),
            clients: OnceLock::new(),
            resolver: Resolver {
                pins: Arc::new(cfg.resolve.clone()),
            },
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
        self.clients.get_or_init(|| self.build())
    }

    fn build(&self) -> Clients {
        let tls = client_config(&self.extra_roots);
        let resolver = self.resolver.clone();
        let connector = |h2: bool| {
            let mut http = HttpConnector::new_with_resolver(resolver.clone());
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(10)));
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
                .pool_max_idle_per_host(64)
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
}

impl Resolver {
    pub async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let name = crate::hosts::normalize(host);
        if let Some(ip) = self.pins.get(&name) {
            return Ok(vec![SocketAddr::new(*ip, port)]);
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        Ok(tokio::net::lookup_host((name.as_str(), port))
            .await?
            .collect())
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
