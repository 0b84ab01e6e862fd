//! Bearer-token authentication and the role checks handlers call.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use milkglass_core::ProjectRole;
use milkglass_service::access;
use milkglass_store::{ProjectInfo, User};

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
            .ok_or_else(|| ApiError::unauthorized("the Authorization header must be: Bearer <token>"))?
            .to_string();
        let store = state.store.clone();
        let user = tokio::task::spawn_blocking(move || store.authenticate(&token))
            .await
            .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
        user.map(Caller).ok_or_else(|| ApiError::unauthorized("invalid or revoked token"))
    }
}

impl Caller {
    /// Loads a project the caller may use with at least `needed` rights.
    pub fn project(&self, state: &AppState, name: &str, needed: ProjectRole) -> ApiResult<ProjectInfo> {
        Ok(access::project(&state.store, &self.0, name, needed)?)
    }

    /// Creating projects is for admins and owners.
    pub fn require_creator(&self) -> ApiResult<()> {
        Ok(access::require_project_creator(&self.0)?)
    }
}
