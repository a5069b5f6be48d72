//! The upstream side: a pooled HTTP client (HTTP/1.1 and HTTP/2 by ALPN) that verifies server
//! certificates against the system roots plus `--upstream-ca`, and resolves `--resolve` pins.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;

use super::body::ProxyBody;
use super::{ProxyConfig, ProxyError};

pub type HttpClient = Client<HttpsConnector<HttpConnector<Resolver>>, ProxyBody>;

/// Two pools: one that may speak HTTP/2, and an HTTP/1.1-only one for `Upgrade` requests.
pub struct Upstream {
    pub any: HttpClient,
    pub http1: HttpClient,
    pub resolver: Resolver,
}

impl Upstream {
    pub fn new(cfg: &ProxyConfig) -> Result<Upstream, ProxyError> {
        let tls = client_config(cfg)?;
        let resolver = Resolver {
            pins: Arc::new(cfg.resolve.clone()),
        };
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
        Ok(Upstream {
            any: client(true),
            http1: client(false),
            resolver,
        })
    }
}

fn client_config(cfg: &ProxyConfig) -> Result<rustls::ClientConfig, ProxyError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for ca in &cfg.upstream_cas {
        roots
            .add(ca.clone())
            .map_err(|e| ProxyError::Tls(format!("--upstream-ca certificate rejected: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
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
