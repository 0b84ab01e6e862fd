//! The operations every milkglass front end calls, transport-neutral.
//!
//! HTTP (`milkglass-server`'s axum routes), Flight SQL and the web app are adapters:
//! they authenticate, parse, call one function here and turn its answer or its
//! [`ServiceError`] into their own shape. Nothing here knows about HTTP or gRPC.
//!
//! One [`Services`] value is built when the server starts and handed to every adapter;
//! it owns the state the operations share (the store, the query gate, the review
//! notifications), so that two servers in one process never share any.

pub mod access;
pub mod dataset_tables;
pub mod datasets;
pub mod dp;
pub mod embedding;
mod error;
mod frame_filters;
pub mod ingest;
pub mod insights;
mod preparation;
pub mod query;
pub mod raw;
pub mod reviews;
mod saved;
mod sign_ins;
pub mod sso;
pub mod tables;
pub mod users;

pub use error::{ErrorKind, ServiceError, ServiceResult};
pub use preparation::Warming;
pub use query::{Answer, MAX_REVIEW_WAIT};
pub use raw::check_fetch_allow;
pub use sign_ins::{Attempt, SignInLimits, UNKNOWN_CALLER};

// The vocabulary of the operations' arguments and answers, so that adapters need no
// dependency on the crates below the service.
pub use milkglass_core::{AccessMode, DatasetSpec, Policy, ProjectRole, ProjectSpec, Role};
pub use milkglass_guard::Limits as QueryResourceLimits;
pub use milkglass_store::{
    AuditEntry, DatasetInfo, DatasetPatch, DatasetStatus, FrameFilter, FramePage, FrameRow, GuardedTableInfo,
    InferenceSetInfo, IssuedToken, LabelRow, MAX_PAGE, MetaPredicate, ProjectInfo, ProjectPatch, Reveals,
    ReviewRequest, Segment, SegmentSpec, Space, Store, StoredFrame, TableFormat, TokenInfo, UploadKind, User, UserInfo,
    decode_untrusted,
};

use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// What one server's operations may use, set at start.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// What one guarded query may use, and how many run at once.
    pub queries: QueryLimits,
    /// How long a held query waits for the owner by default.
    pub review_wait: Duration,
    /// Private addresses and hosts the fetcher may reach anyway (CIDRs, addresses, host names).
    pub fetch_allow: Vec<String>,
    /// Where hosted and mirrored files live: `s3://bucket[/prefix]`, or `None` for `DATA_DIR/assets`.
    pub asset_store: Option<String>,
    /// Records per atomic batch in uploads.
    pub batch_size: usize,
    /// Largest accepted upload (dataset records, hosted files), in bytes.
    pub max_upload_bytes: u64,
    /// Failed sign-ins an address may make before it is refused for a while.
    pub sign_ins: SignInLimits,
    /// Threads that prepare new dataset versions in the background, below requests' priority.
    pub preparation_workers: usize,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            queries: QueryLimits::default(),
            review_wait: Duration::from_secs(60),
            fetch_allow: Vec::new(),
            asset_store: None,
            batch_size: 5000,
            max_upload_bytes: 16 << 30,
            sign_ins: SignInLimits::default(),
            preparation_workers: 1,
        }
    }
}

/// Bounds on guarded queries, so that one query cannot take the server down.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Memory and time for each query.
    pub each: milkglass_guard::Limits,
    /// Queries one user may have running at once.
    pub per_user: usize,
    /// Queries running at once, all users together.
    pub total: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits { each: milkglass_guard::Limits::default(), per_user: 4, total: 16 }
    }
}

/// What the operations share, for one server.
pub struct Services {
    pub store: Store,
    pub config: ServiceConfig,
    /// Admission for guarded queries.
    query_gate: query::QueryGate,
    /// Where guarded queries run.
    query_runtime: QueryRuntime,
    /// Woken whenever a review request is decided, so waiting queries look again.
    reviews_decided: Notify,
    /// Similarity indexes built for this server's datasets.
    indexes: Arc<insights::IndexCache>,
    /// Frame filter indexes of the datasets' current versions.
    frame_indexes: Arc<frame_filters::FrameIndexes>,
    /// The embedding model, loaded on first use.
    embedder: embedding::ModelSlot,
    /// The raw-data boundary: the fetcher, the hosted store, URL signatures.
    raw: Arc<raw::RawData>,
    /// Failed sign-ins by address.
    sign_ins: sign_ins::SignInGuard,
    /// New versions waiting to be prepared, coalesced per dataset.
    preparer: preparation::Preparer,
}

/// Runs store work on tokio's blocking pool, so that SQLite never holds up an async
/// worker; the one way async operations reach the store.
pub(crate) async fn on_store<T: Send + 'static>(
    services: &Services,
    f: impl FnOnce(&Store) -> ServiceResult<T> + Send + 'static,
) -> ServiceResult<T> {
    let store = services.store.clone();
    tokio::task::spawn_blocking(move || f(&store)).await.map_err(ServiceError::internal)?
}

impl Services {
    /// Fails when the threads for running queries cannot be started, or the fetch allow-list,
    /// the asset signing key or the hosted store is unusable.
    pub fn new(store: Store, config: ServiceConfig) -> std::io::Result<Self> {
        let raw = raw::RawData::new(&store, &config.fetch_allow, config.asset_store.as_deref())?;
        let indexes = Arc::new(insights::IndexCache::new());
        let frame_indexes = Arc::<frame_filters::FrameIndexes>::default();
        let preparer = {
            let (store, indexes, frame_indexes) = (store.clone(), indexes.clone(), frame_indexes.clone());
            let job = move |dataset: &preparation::DatasetKey| {
                ingest::prepare_newest(&store, &indexes, &frame_indexes, dataset)
            };
            preparation::Preparer::start(config.preparation_workers, Arc::new(job))?
        };
        Ok(Services {
            query_gate: query::QueryGate::new(&config.queries),
            query_runtime: QueryRuntime::new()?,
            reviews_decided: Notify::new(),
            indexes,
            frame_indexes,
            preparer,
            embedder: embedding::ModelSlot::default(),
            raw: Arc::new(raw),
            sign_ins: sign_ins::SignInGuard::new(config.sign_ins.clone()),
            store,
            config,
        })
    }
}

/// Parses a JSON body, naming the failing field path in the error (`classes[1].id`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ServiceResult<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        // serde_path_to_error writes "." for the root and "?" for a position it could
        // not name (such as the end of input); neither helps a user find the field.
        let path = e.path().to_string();
        let field = path.trim_end_matches('?').trim_end_matches('.');
        ServiceError::invalid(field, e.inner().to_string())
    })?;
    de.end().map_err(|e| ServiceError::invalid("", format!("trailing data after the JSON value: {e}")))?;
    Ok(value)
}

/// A tokio runtime of its own for guarded queries: DataFusion's operators keep their
/// threads busy for as long as a plan has work, so on the threads that answer requests one
/// heavy query would hold up every other caller. The operating system shares the cores
/// between the two pools instead.
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl QueryRuntime {
    fn new() -> std::io::Result<Self> {
        // A new query waits in the runtime's shared queue, which busy workers look at only
        // every `global_queue_interval` tasks (61 by default, seconds when each task is a
        // heavy batch): looking often lets another caller's query start at once.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("milkglass-query")
            .global_queue_interval(2)
            .enable_all()
            .build()?;
        Ok(QueryRuntime(Some(runtime)))
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> ServiceResult<T> {
        let runtime = self.0.as_ref().expect("the query runtime lives as long as the services");
        runtime.spawn(work).await.map_err(ServiceError::internal)
    }
}

impl Drop for QueryRuntime {
    /// Dropped from async code too (a test's end, a server's shutdown): never block there.
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
