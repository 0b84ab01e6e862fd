//! Routes of the raw-data boundary (`milkglass_service::raw`): the signed file routes, URL
//! signing and resolving, fetch settings, mirroring, URL checks and embedding generation.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::json::JsonBody;
use crate::{AppState, blocking};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::StreamExt;
use milkglass_files::{Blob, FileRoot, blob_response, error_response, file_response, preflight, with_cors};
use milkglass_service::embedding::{self, EmbedRequest};
use milkglass_service::raw::hosted::{BucketObject, HostedFile};
use milkglass_service::raw::signer::{self, ResolveRequest, SignRequest, SignedMethod};
use milkglass_service::raw::{self, FetchSettingsBody, FetchSettingsView, mirror, url_check};
use serde_json::{Value, json};

pub(crate) fn router() -> Router<AppState> {
    let project = "/api/projects/{project}";
    let dataset = "/api/projects/{project}/datasets/{dataset}";
    Router::new()
        .route("/assets/{*path}", any(asset))
        .route(&format!("{project}/assets/sign"), post(sign_urls))
        .route(&format!("{project}/assets/resolve"), post(resolve_urls))
        .route(&format!("{project}/fetch"), get(get_fetch_settings).put(put_fetch_settings))
        .route(&format!("{dataset}/mirror"), post(mirror))
        .route(&format!("{dataset}/embed"), post(embed))
        .route(&format!("{dataset}/url_check"), post(url_check))
        .route(&format!("{dataset}/url_report"), get(url_report))
}

/// The scheme and host the caller reached this server by, for absolute URLs it can hand on.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}")
}

// ---------------------------------------------------------------------------------------------
// The signed file routes (no bearer token: an <img> tag cannot send one; the signature is the
// credential)

async fn asset(State(state): State<AppState>, request: Request) -> Response {
    match serve_asset(&state, request).await {
        Ok(response) => response,
        Err(e) => error_response(e.status, e.code, &e.message),
    }
}

async fn serve_asset(state: &AppState, request: Request) -> ApiResult<Response> {
    let method = request.method().clone();
    if method == Method::OPTIONS {
        return Ok(preflight(request.headers(), "GET, HEAD, PUT, OPTIONS"));
    }
    let signed_method = match method {
        Method::GET | Method::HEAD => SignedMethod::Get,
        Method::PUT => SignedMethod::Put,
        _ => return Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET, HEAD or PUT")),
    };
    let services = &state.services;
    let (path, query) = (request.uri().path().to_string(), request.uri().query().unwrap_or_default().to_string());
    let asset = signer::authorize(services, signed_method, &path, &query).await?;
    if signed_method == SignedMethod::Put {
        let body = request.into_body().into_data_stream();
        let stored = signer::store(services, &asset, body).await?;
        return Ok(with_cors((StatusCode::CREATED, Json(stored)).into_response()));
    }
    // The browser may keep the bytes as long as the URL is valid, and no shared cache may.
    let cache = HeaderValue::from_str(&format!("private, max-age={}", asset.seconds_left())).expect("ascii");
    let headers = request.headers();
    match signer::locate(services, &asset).await? {
        HostedFile::InDir(dir) => {
            let not_found = || ApiError::not_found("no such file");
            let root = FileRoot::new(dir).map_err(|_| not_found())?;
            let file = root.resolve(&asset.raw_key).await.map_err(|_| not_found())?;
            Ok(file_response(&file, &method, headers, cache).await)
        }
        HostedFile::Object(object) => {
            let blob = BucketBlob { object, name: asset.key.clone() };
            Ok(blob_response(blob, &method, headers, cache).await)
        }
    }
}

/// An object of a bucket-backed hosted store, served like a local file.
struct BucketBlob {
    object: BucketObject,
    name: std::path::PathBuf,
}

impl Blob for BucketBlob {
    fn size(&self) -> u64 {
        self.object.size()
    }

    fn modified(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        Some(self.object.modified())
    }

    fn etag(&self) -> String {
        self.object.etag()
    }

    fn name(&self) -> &std::path::Path {
        &self.name
    }

    async fn body(self, start: u64, len: u64) -> Option<Body> {
        Some(Body::from_stream(self.object.read(start, len).await?.boxed()))
    }
}

// ---------------------------------------------------------------------------------------------
// API routes

async fn sign_urls(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SignRequest>,
) -> ApiResult<Json<Value>> {
    let base = base_url(&headers);
    let urls = blocking(move || signer::sign(&state.services, &caller.0, &project, &base, &body)).await?;
    Ok(Json(json!({ "urls": urls })))
}

/// Turns the data URLs of frames into URLs the browser can load, per the project's mode. Never
/// fetches anything.
async fn resolve_urls(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ResolveRequest>,
) -> ApiResult<Json<Value>> {
    let urls = signer::resolve(&state.services, &caller.0, &project, &base_url(&headers), &body).await?;
    Ok(Json(json!({ "urls": urls })))
}

async fn get_fetch_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<FetchSettingsView>> {
    Ok(Json(blocking(move || raw::fetch_settings(&state.services, &caller.0, &project)).await?))
}

async fn put_fetch_settings(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(body): JsonBody<FetchSettingsBody>,
) -> ApiResult<Json<FetchSettingsView>> {
    Ok(Json(blocking(move || raw::set_fetch_settings(&state.services, &caller.0, &project, body)).await?))
}

async fn mirror(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<mirror::MirrorReport>> {
    Ok(Json(mirror::mirror(&state.services, &caller.0, &project, &dataset).await?))
}

/// `POST {dataset}/embed`: starts embedding generation; 202 with the job.
async fn embed(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    JsonBody(request): JsonBody<EmbedRequest>,
) -> ApiResult<Response> {
    let job = embedding::start(&state.services, &caller.0, &project, &dataset, request).await?;
    Ok((StatusCode::ACCEPTED, Json(job)).into_response())
}

async fn url_check(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(url_check::url_check(&state.services, &caller.0, &project, &dataset).await?))
}

async fn url_report(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(blocking(move || url_check::url_report(&state.services, &caller.0, &project, &dataset)).await?))
}
