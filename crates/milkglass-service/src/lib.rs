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
mod error;
pub mod query;
pub mod reviews;
pub mod tables;

pub use error::{ErrorKind, ServiceError, ServiceResult};
pub use query::{Answer, MAX_REVIEW_WAIT};

use milkglass_store::Store;
use std::time::Duration;
use tokio::sync::Notify;

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
    /// Admission for guarded queries.
    query_gate: query::QueryGate,
    /// Where guarded queries run.
    query_runtime: QueryRuntime,
    /// How long a held query waits for the owner by default.
    pub review_wait: Duration,
    /// Woken whenever a review request is decided, so waiting queries look again.
    reviews_decided: Notify,
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
    /// Fails when the threads for running queries cannot be started.
    pub fn new(store: Store, limits: &QueryLimits, review_wait: Duration) -> std::io::Result<Self> {
        Ok(Services {
            store,
            query_gate: query::QueryGate::new(limits),
            query_runtime: QueryRuntime::new()?,
            review_wait,
            reviews_decided: Notify::new(),
        })
    }
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
