//! Routes of the admin's desk (users, their global roles and their tokens) and of each user's
//! personal tokens. Each handler parses and calls one operation of [`milkglass_service::users`],
//! which checks the role.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::extract::Path;
use crate::json::JsonBody;
use crate::{AppState, blocking};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch};
use axum::{Json, Router};
use milkglass_service::{IssuedToken, Role, UserInfo, users};
use serde::Deserialize;
use serde_json::{Value, json};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users", get(list_users).post(create_user))
        .route("/api/users/{user}", patch(update_user).delete(revoke_user))
        .route("/api/users/{user}/tokens", get(list_tokens).post(issue_token))
        .route("/api/users/{user}/tokens/{id}", delete(revoke_token))
        .route("/api/tokens", get(own_tokens).post(mint_own_token))
        .route("/api/tokens/{id}", delete(revoke_own_token))
}

async fn own_tokens(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let tokens = blocking(move || users::own_tokens(&state.services, &caller.0)).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewOwnToken {
    #[serde(default)]
    expires_in_days: Option<i64>,
    #[serde(default)]
    label: Option<String>,
}

/// 201 with the new personal token, which is never shown again.
async fn mint_own_token(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewOwnToken>,
) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    let issued =
        blocking(move || users::mint_own_token(&state.services, &caller.0, body.expires_in_days, body.label)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

async fn revoke_own_token(State(state): State<AppState>, caller: Caller, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    blocking(move || users::revoke_own_token(&state.services, &caller.0, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_users(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let users = blocking(move || users::list(&state.services, &caller.0)).await?;
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: Role,
}

/// 201 with the user and their first token, which is never shown again.
async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewUser>,
) -> ApiResult<Response> {
    let (user, token) = blocking(move || users::create(&state.services, &caller.0, &body.name, body.role)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "user": user, "token": token }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPatch {
    role: Role,
}

async fn update_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UserPatch>,
) -> ApiResult<Json<UserInfo>> {
    Ok(Json(blocking(move || users::set_role(&state.services, &caller.0, &name, body.role)).await?))
}

async fn revoke_user(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    blocking(move || users::revoke(&state.services, &caller.0, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let tokens = blocking(move || users::tokens(&state.services, &caller.0, &name)).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// 201 with the new token, which is never shown again.
async fn issue_token(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<IssuedToken>)> {
    let issued = blocking(move || users::issue_token(&state.services, &caller.0, &name)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    Path((name, id)): Path<(String, i64)>,
) -> ApiResult<StatusCode> {
    blocking(move || users::revoke_token(&state.services, &caller.0, &name, id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
