//! The milkglass adapters: the HTTP API (axum) and Flight SQL (tonic) over
//! `milkglass-service`.
//!
//! Handlers parse, call one service operation and answer; the service authorizes,
//! validates and does the work. Blocking operations run through [`blocking`] on tokio's
//! blocking pool, so the async workers stay free.

mod aquarium;
mod auth;
mod error;
mod extract;
pub mod flight;
mod insight;
mod json;
mod oidc;
mod raw;
mod routes;
mod tables;
mod tls;
mod users;
mod web;

pub use error::ApiError;
pub use milkglass_service::{QueryLimits, SignInLimits, Store, check_fetch_allow};
pub use oidc::{Oidc, OidcSettings};
pub use tls::{TlsCerts, TlsIncoming, self_signed};

use axum::Router;
use milkglass_service::{ServiceConfig, ServiceError, ServiceResult, Services};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Limits and switches of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted upload body, in bytes.
    pub max_upload_bytes: u64,
    /// Largest accepted JSON body for everything that is not an upload.
    pub max_json_bytes: usize,
    /// Records per atomic batch in uploads.
    pub batch_size: usize,
    /// Directory served under `/sample/` (the demo's images), if any.
    pub sample_dir: Option<PathBuf>,
    /// How long a held query waits for the owner before answering with its request id.
    pub review_wait: std::time::Duration,
    /// Where the Flight SQL service listens, as clients should dial it (for discovery).
    pub flight_url: Option<String>,
    /// Private addresses and hosts the fetcher may reach anyway (CIDRs, addresses, host names).
    pub fetch_allow: Vec<String>,
    /// Where hosted and mirrored files live: `s3://bucket[/prefix]` (credentials from the `AWS_*`
    /// variables), or `None` for `DATA_DIR/assets`.
    pub asset_store: Option<String>,
    /// What one guarded query may use (memory, time), and how many run at once.
    pub queries: QueryLimits,
    /// Failed sign-ins an address may make before it is refused for a while.
    pub sign_ins: SignInLimits,
    /// Threads that prepare new dataset versions in the background, below requests' priority.
    pub preparation_workers: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_upload_bytes: 16 << 30,
            max_json_bytes: 1 << 20,
            batch_size: 5000,
            sample_dir: None,
            review_wait: std::time::Duration::from_secs(60),
            flight_url: None,
            fetch_allow: Vec::new(),
            asset_store: None,
            queries: QueryLimits::default(),
            sign_ins: SignInLimits::default(),
            preparation_workers: 1,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<ServerConfig>,
    /// The operations, shared by the HTTP routes and Flight SQL.
    pub services: Arc<Services>,
    /// The Aquarium adapter's uploads in progress and download links.
    pub(crate) aquarium: Arc<aquarium::AquariumState>,
    /// Single sign-on, when configured.
    pub(crate) oidc: Option<Arc<Oidc>>,
}

impl AppState {
    /// Fails when the fetch allow-list, the asset signing key or the hosted store is unusable.
    pub fn new(store: Store, config: ServerConfig) -> std::io::Result<AppState> {
        let service_config = ServiceConfig {
            queries: config.queries.clone(),
            review_wait: config.review_wait,
            fetch_allow: config.fetch_allow.clone(),
            asset_store: config.asset_store.clone(),
            batch_size: config.batch_size,
            max_upload_bytes: config.max_upload_bytes,
            sign_ins: config.sign_ins.clone(),
            preparation_workers: config.preparation_workers,
        };
        let services = Arc::new(Services::new(store, service_config)?);
        Ok(AppState { config: Arc::new(config), services, aquarium: Arc::default(), oidc: None })
    }

    /// Turns single sign-on on, with a provider already discovered ([`Oidc::discover`]).
    pub fn with_oidc(mut self, oidc: Oidc) -> AppState {
        self.oidc = Some(Arc::new(oidc));
        self
    }
}

/// Runs a blocking operation (SQLite, files, CPU-heavy work) on tokio's blocking pool, so
/// that the async workers stay free; the one way adapters do it.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ServiceResult<T> + Send + 'static,
) -> ServiceResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ServiceError::internal(format!("task failed: {e}")))?
}

/// The whole HTTP application.
pub fn app(store: Store, config: ServerConfig) -> std::io::Result<Router> {
    Ok(routes::router(AppState::new(store, config)?))
}

/// Serves the HTTP API and, when given a second listener, Flight SQL, until `shutdown` completes.
/// With `tls`, both speak only TLS (HTTP/1.1 and h2 by ALPN) and HTTP answers carry HSTS.
pub async fn serve_all(
    http: TcpListener,
    flight: Option<TcpListener>,
    state: AppState,
    tls: Option<Arc<TlsCerts>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let flight_task = match flight {
        None => None,
        Some(listener) => {
            let service = flight::service(state.clone());
            let mut stopped = stopped.clone();
            let server = tonic::transport::Server::builder().add_service(service);
            let until_stopped = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            Some(match &tls {
                Some(certs) => {
                    let incoming = TlsIncoming::start(listener, certs, &[b"h2"]).map_err(std::io::Error::other)?;
                    tokio::spawn(async move {
                        server.serve_with_incoming_shutdown(incoming.into_stream(), until_stopped).await
                    })
                }
                None => tokio::spawn(async move {
                    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to each small answer.
                    let incoming = futures::TryStreamExt::map_ok(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        |stream| {
                            let _ = stream.set_nodelay(true);
                            stream
                        },
                    );
                    server.serve_with_incoming_shutdown(incoming, until_stopped).await
                }),
            })
        }
    };
    let until_shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let result = match &tls {
        Some(certs) => {
            // Browsers that once reached the server over TLS refuse plain HTTP to it for a year.
            let app = routes::router(state).layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                axum::http::header::STRICT_TRANSPORT_SECURITY,
                axum::http::HeaderValue::from_static("max-age=31536000"),
            ));
            let incoming = TlsIncoming::start(http, certs, &[b"http/1.1"]).map_err(std::io::Error::other)?;
            // `tap_io` gives the listener the `ConnectInfo<SocketAddr>` a plain TCP listener has.
            let listener = axum::serve::ListenerExt::tap_io(incoming, |_| {});
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(until_shutdown)
                .await
        }
        None => {
            let app = routes::router(state);
            axum::serve(http, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(until_shutdown)
                .await
        }
    };
    if let Some(task) = flight_task {
        let _ = task.await;
    }
    result
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(store, config)?;
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}
