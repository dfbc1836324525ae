//! TLS: certificates for `semflow serve`'s HTTP and Postgres listeners (`--tls-cert`,
//! `--tls-key`). Outbound HTTPS clients (remote inference endpoints, the generator, the
//! schema registry) and their extra trusted roots (`--ca-cert`) live in the inference crate,
//! [`semflow_inference::outbound`], re-exported here.
//!
//! rustls with the *ring* provider throughout (the one the Postgres front end's pgwire is
//! built with), named explicitly because the build also links aws-lc-rs, and rustls refuses
//! to guess between two.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by the server.
const ACCEPTED_BACKLOG: usize = 64;

/// A server certificate chain and its private key, loaded from PEM files.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    /// The PEM text of the chain (SCRAM channel binding hashes the leaf certificate).
    cert_pem: Arc<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

impl ServerTls {
    /// Reads `cert` (a PEM chain, leaf first) and `key` (a PEM private key).
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let cert_pem = std::fs::read(cert).map_err(|e| Error::io(cert, e))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| tls_error("--tls-cert", cert, e))?;
        if chain.is_empty() {
            return Err(tls_error("--tls-cert", cert, "no CERTIFICATE block"));
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| tls_error("--tls-key", key, e))?;
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_error("--tls-cert", cert, e))?
                .with_no_client_auth()
                .with_single_cert(chain, key_der)
                .map_err(|e| {
                    tls_error(
                        "--tls-key",
                        key,
                        format!("does not match the certificate: {e}"),
                    )
                })?;
        Ok(Self {
            config: Arc::new(config),
            cert_pem: Arc::new(cert_pem),
        })
    }

    /// The rustls acceptor, offering `alpn` protocols (none: the client's choice is moot).
    pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }

    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }
}

fn tls_error(option: &str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{option} {}: {e}", path.display()))
}

/// An [`axum::serve::Listener`] that hands over connections once their TLS handshake is done.
/// Handshakes run in tasks of their own, so a slow or silent client holds up nobody.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, accepted) = mpsc::channel(ACCEPTED_BACKLOG);
        tokio::spawn(accept_loop(tcp, acceptor, tx));
        Ok(Self { accepted, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (socket, peer) = match tcp.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake with {peer}: {e}"),
                Err(_) => tracing::debug!("TLS handshake with {peer}: timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

pub use semflow_inference::outbound::{http_client, trust_ca_file};

/// `--tls-cert`/`--tls-key` as given: both or neither.
pub fn server_tls(cert: Option<&PathBuf>, key: Option<&PathBuf>) -> Result<Option<ServerTls>> {
    match (cert, key) {
        (Some(cert), Some(key)) => ServerTls::load(cert, key).map(Some),
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::InvalidArgument(
            "--tls-cert needs --tls-key (the certificate's private key, PEM)".into(),
        )),
        (None, Some(_)) => Err(Error::InvalidArgument(
            "--tls-key needs --tls-cert (the certificate chain, PEM)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_name_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = ServerTls::load(&cert, &key).unwrap_err().to_string();
        assert!(err.starts_with("--tls-cert"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(ServerTls::load(&missing, &key).is_err());
        let err = server_tls(Some(&cert), None).unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");
    }
}
