//! Bearer-token authentication and the role checks handlers call.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use milkglass_core::{ProjectRole, Role};
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
        // Outside admins, a missing project and a forbidden one look the same, so
        // project names do not leak to users who cannot see them.
        let project = match state.store.project(name) {
            Err(milkglass_store::StoreError::NotFound { .. }) if self.0.role != milkglass_core::Role::Admin => {
                return Err(no_access(name));
            }
            other => other?,
        };
        match state.store.project_role(&self.0, &project)? {
            Some(role) if role >= needed => Ok(project),
            Some(_) => Err(ApiError::forbidden(format!("you can read project {name:?} but not change it"))),
            None => {
                Err(ApiError::forbidden(format!("you have no access to project {name:?}; ask its owner to add you")))
            }
        }
    }

    /// Creating projects is for admins and owners.
    pub fn require_creator(&self) -> ApiResult<()> {
        match self.0.role {
            Role::Admin | Role::Owner => Ok(()),
            role => {
                Err(ApiError::forbidden(format!("a {role} cannot create projects; ask an admin for the owner role")))
            }
        }
    }
}

fn no_access(project: &str) -> ApiError {
    ApiError::forbidden(format!("you have no access to a project {project:?}; ask its owner to add you"))
}
