//! TLS interception: read the ClientHello, pick the leaf certificate for its SNI from netcage's
//! CA, and complete the handshake offering the client's choice among `h2` and `http/1.1`.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{Acceptor, ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::ca::Ca;

/// Serves leaf certificates by SNI. Shared by every connection, so session resumption works.
pub struct Interceptor {
    ca: Arc<Ca>,
    config: Arc<ServerConfig>,
}

#[derive(Debug)]
struct SniResolver(Arc<Ca>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.leaf(hello.server_name()?).ok()
    }
}

#[derive(Debug)]
struct FixedResolver(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Ok(ticketer) = rustls::crypto::ring::Ticketer::new() {
        config.ticketer = ticketer;
    }
    config
}

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("TLS handshake with the client failed: {0}")]
    Handshake(std::io::Error),
    #[error("the client sent no server name (SNI) and the destination has no name")]
    NoName,
    #[error("{0}")]
    Leaf(#[from] crate::ca::CaError),
}

impl Interceptor {
    pub fn new(ca: Arc<Ca>) -> Self {
        let config = Arc::new(server_config(Arc::new(SniResolver(ca.clone()))));
        Interceptor { ca, config }
    }

    /// Terminates the client's TLS. `fallback` names the certificate when there is no SNI
    /// (clients send none for IP literals). Returns the stream and the SNI.
    pub async fn accept<IO>(
        &self,
        io: IO,
        fallback: Option<&str>,
    ) -> Result<(TlsStream<IO>, Option<String>), InterceptError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(Acceptor::default(), io)
            .await
            .map_err(InterceptError::Handshake)?;
        let sni = start
            .client_hello()
            .server_name()
            .map(crate::hosts::normalize);
        let config = match (&sni, fallback) {
            (Some(name), _) => {
                // Issue now so a bad name is reported as such, not as a handshake failure.
                self.ca.leaf(name)?;
                self.config.clone()
            }
            (None, Some(name)) => {
                Arc::new(server_config(Arc::new(FixedResolver(self.ca.leaf(name)?))))
            }
            (None, None) => return Err(InterceptError::NoName),
        };
        let stream = start
            .into_stream(config)
            .await
            .map_err(InterceptError::Handshake)?;
        Ok((stream, sni))
    }
}
