//! The one error type of the service layer. Each front end maps a [`ErrorKind`] to its
//! own shape in one place: HTTP to a status and the JSON error body, Flight SQL to a
//! gRPC code plus the structured error as metadata.

use milkglass_core::Invalid;
use milkglass_guard::GuardError;
use milkglass_store::StoreError;

/// What went wrong, as a front end needs to tell it; the detail is in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request is wrong; `field` names what to fix.
    Invalid,
    /// No caller, or a revoked one.
    Unauthenticated,
    /// The caller may not do this.
    Forbidden,
    /// No such thing, or one the caller may not see (the two read the same).
    NotFound,
    /// The thing exists, or is in a state that does not allow this.
    Conflict,
    /// Done once, and never again (a released review result).
    Gone,
    /// Over a size limit.
    TooLarge,
    /// A body in a format the operation does not read.
    Unsupported,
    /// The guard's decision: outside a table's safe zone. The message names the rule.
    Refused,
    /// The owner rejected a held query; `details.request_id` names it.
    Rejected,
    /// A query ran into its time or memory limit and was stopped.
    Stopped,
    /// Too many queries running; nothing was queued.
    Busy,
    /// Something the server needs is missing (a model, a store), not the caller's fault.
    Unavailable,
    /// A failure that is not the caller's; logged in full, answered without detail.
    Internal,
}

/// An error of a service operation.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub kind: ErrorKind,
    /// A stable, more specific code within the kind (`invalid_query`, `not_savable`...),
    /// which clients may match on.
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, for [`ErrorKind::Invalid`].
    pub field: Option<String>,
    /// Extra facts (a request id, how much of an upload was committed).
    pub details: Option<serde_json::Value>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

pub type ServiceResult<T> = Result<T, ServiceError>;

impl ServiceError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ServiceError { kind, code, message: message.into(), field: None, details: None, source: None }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ServiceError { field: Some(field.into()), ..ServiceError::new(ErrorKind::Invalid, "invalid", message) }
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorKind::Unauthenticated, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorKind::Forbidden, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorKind::NotFound, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        ServiceError::new(ErrorKind::Conflict, "conflict", message)
    }

    pub fn too_large(limit: u64) -> Self {
        ServiceError::new(
            ErrorKind::TooLarge,
            "too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// Logs `cause` in full and answers without it.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {cause}");
        ServiceError::new(ErrorKind::Internal, "internal", "internal error; see the server log")
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// The review request this error is about, when there is one.
    pub fn request_id(&self) -> Option<i64> {
        self.details.as_ref().and_then(|d| d.get("request_id")).and_then(serde_json::Value::as_i64)
    }
}

impl From<Invalid> for ServiceError {
    fn from(e: Invalid) -> Self {
        ServiceError::invalid(e.field, e.message)
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(invalid) => invalid.into(),
            StoreError::NotFound { what } => ServiceError::not_found(format!("{what} not found")),
            StoreError::Conflict(message) => ServiceError::conflict(message),
            other => {
                tracing::error!("store error: {other}");
                ServiceError {
                    source: Some(Box::new(other)),
                    ..ServiceError::new(ErrorKind::Internal, "internal", "internal error; see the server log")
                }
            }
        }
    }
}

impl From<GuardError> for ServiceError {
    fn from(e: GuardError) -> Self {
        match e {
            GuardError::NotAQuery(m) => ServiceError::new(ErrorKind::Invalid, "not_a_query", m).with_field("sql"),
            GuardError::Invalid(m) => ServiceError::new(ErrorKind::Invalid, "invalid_query", m).with_field("sql"),
            // The detail may quote data: it goes to the audit log, never to the caller.
            e @ GuardError::Execution(_) => ServiceError::new(ErrorKind::Invalid, "query_failed", e.to_string()),
            GuardError::Stopped(m) => ServiceError::new(ErrorKind::Stopped, "query_stopped", m),
            GuardError::Refused(m) => ServiceError::new(ErrorKind::Refused, "refused", m),
        }
    }
}
