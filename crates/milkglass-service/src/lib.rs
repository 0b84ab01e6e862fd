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
    pub fn new(store: Store, limits: &QueryLimits, review_wait: Duration) -> Self {
        Services { store, query_gate: query::QueryGate::new(limits), review_wait, reviews_decided: Notify::new() }
    }
}
