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
mod raw;
mod routes;
mod tables;
mod users;
mod web;

pub use error::ApiError;
pub use milkglass_service::{QueryLimits, Store, check_fetch_allow};

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
        };
        let services = Arc::new(Services::new(store, service_config)?);
        Ok(AppState { config: Arc::new(config), services, aquarium: Arc::default() })
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
pub async fn serve_all(
    http: TcpListener,
    flight: Option<TcpListener>,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let flight_task = flight.map(|listener| {
        let service = flight::service(state.clone());
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs add ~40 ms to each small answer.
            let incoming =
                futures::TryStreamExt::map_ok(tokio_stream::wrappers::TcpListenerStream::new(listener), |stream| {
                    let _ = stream.set_nodelay(true);
                    stream
                });
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        })
    });
    let app = routes::router(state);
    let result = axum::serve(http, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop.send(true);
        })
        .await;
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
