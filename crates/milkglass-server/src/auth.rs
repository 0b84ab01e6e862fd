//! Bearer-token authentication: the caller every handler gets.

use crate::error::ApiError;
use crate::{AppState, blocking};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use milkglass_service::{Attempt, User};
use std::net::SocketAddr;

/// The caller, authenticated by `Authorization: Bearer <token>`.
pub struct Caller(pub User);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization header; send Authorization: Bearer <token>")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .map(str::to_string);
        let attempt = http_attempt(parts);
        let services = state.services.clone();
        let Some(token) = token else {
            blocking(move || services.failed_sign_in(&attempt, "malformed Authorization header")).await?;
            return Err(ApiError::unauthorized("the Authorization header must be: Bearer <token>"));
        };
        Ok(Caller(blocking(move || services.authenticate(&token, &attempt)).await?))
    }
}

/// A sign-in over HTTP, as the audit log records it: the peer address and the route.
pub(crate) fn http_attempt(parts: &Parts) -> Attempt {
    let from = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    Attempt { from, target: format!("{} {}", parts.method, parts.uri.path()) }
}
