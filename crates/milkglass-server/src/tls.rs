//! TLS for the HTTP API and Flight SQL: rustls on the ring provider (aws-lc-rs takes minutes to build
//! on two cores, and ring is already in the build through the S3 client).
//!
//! The certificate and key are PEM files read at start and again on [`TlsCerts::reload`] (the
//! binary calls it on SIGHUP): a renewed certificate is served to new connections without a restart,
//! and a reload that fails keeps the certificate that works. Handshakes run in tasks of their own with
//! a deadline, so a client that opens a connection and says nothing holds up no one else.

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client has to finish its handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to take them.
const ACCEPT_QUEUE: usize = 128;

/// The certificate chain and key a server presents, reloadable.
#[derive(Debug)]
pub struct TlsCerts {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl TlsCerts {
    /// Reads the PEM files; the error says which file and what is wrong with it.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<TlsCerts>, String> {
        let key = read_certified_key(cert_path, key_path)?;
        Ok(Arc::new(TlsCerts {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again; on an error the certificate served so far stays.
    pub fn reload(&self) -> Result<(), String> {
        let key = read_certified_key(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        Ok(())
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A rustls server configuration offering `alpn` (HTTP/1.1 for the API, h2 for gRPC).
    fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("--tls-cert {}: {}", cert_path.display(), pem_problem(e)))?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {}: holds no CERTIFICATE block", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("--tls-key {}: {}", key_path.display(), pem_problem(e)))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("--tls-key {}: not a usable private key ({e})", key_path.display()))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| {
        format!("--tls-key {} does not belong to --tls-cert {} ({e})", key_path.display(), cert_path.display())
    })?;
    Ok(certified)
}

fn pem_problem(e: rustls_pki_types::pem::Error) -> String {
    match e {
        rustls_pki_types::pem::Error::Io(e) => format!("cannot read it ({e})"),
        rustls_pki_types::pem::Error::NoItemsFound => "holds no PEM block of the expected kind".into(),
        other => format!("is not valid PEM ({other:?})"),
    }
}

#[derive(Debug)]
struct Resolver(Arc<TlsCerts>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// Accepts TCP connections and finishes their handshakes in tasks of their own; what
/// [`TlsIncoming::next`] hands out is ready to serve.
pub struct TlsIncoming {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// Starts accepting on `listener` (runs until the returned value is dropped).
    pub fn start(listener: TcpListener, certs: &Arc<TlsCerts>, alpn: &[&[u8]]) -> Result<TlsIncoming, String> {
        let acceptor = TlsAcceptor::from(certs.server_config(alpn)?);
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let (send, ready) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, ready) = (acceptor.clone(), send.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
                    }
                });
                if send.is_closed() {
                    break;
                }
            }
        });
        Ok(TlsIncoming { ready, local })
    }

    /// The next connection whose handshake is done; `None` once accepting has stopped.
    pub async fn next(&mut self) -> Option<(TlsStream<TcpStream>, SocketAddr)> {
        self.ready.recv().await
    }

    /// Connections for tonic, which wants a stream of IO that knows its peer.
    pub fn into_stream(self) -> impl futures::Stream<Item = std::io::Result<FlightTlsIo>> {
        futures::stream::unfold(self, |mut incoming| async move {
            let (stream, _) = incoming.next().await?;
            Some((Ok(FlightTlsIo(stream)), incoming))
        })
    }
}

/// The HTTP API's listener: `axum::serve` takes it like a `TcpListener`.
impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(accepted) => accepted,
            // The accepting task only stops when this listener is dropped, so this is never reached;
            // waiting forever is what a listener that accepts nothing more does.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A TLS connection to the Flight SQL service, with its peer's address for tonic.
pub struct FlightTlsIo(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for FlightTlsIo {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        let tcp = self.0.get_ref().0;
        tonic::transport::server::TcpConnectInfo {
            local_addr: tcp.local_addr().ok(),
            remote_addr: tcp.peer_addr().ok(),
        }
    }
}

impl tokio::io::AsyncRead for FlightTlsIo {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for FlightTlsIo {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// A self-signed certificate for `names` (host names or IP addresses), as PEM: (certificate, key).
/// For a first try only: clients must be told to trust this very certificate.
pub fn self_signed(names: &[String]) -> Result<(String, String), String> {
    let generated =
        rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| format!("generating a certificate: {e}"))?;
    Ok((generated.cert.pem(), generated.signing_key.serialize_pem()))
}
