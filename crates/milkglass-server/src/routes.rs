//! The router, and the routes of projects, datasets, frames, inference sets and uploads.
//! Each handler parses, calls one operation of [`milkglass_service::datasets`] (which
//! authorizes) or [`milkglass_service::ingest`], and answers.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::json::JsonBody;
use crate::{AppState, blocking};
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use futures::TryStreamExt;
use milkglass_service::ingest::{self, BodyTooLarge, Format, UploadSummary, UploadTarget};
use milkglass_service::raw::url_check::check_after_upload;
use milkglass_service::{
    DatasetInfo, DatasetPatch, DatasetSpec, FrameFilter, InferenceSetInfo, MAX_PAGE, MetaPredicate, ProjectPatch,
    ProjectRole, ProjectSpec, UploadKind, datasets,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{DefaultPredicate, Predicate};

pub fn router(state: AppState) -> Router {
    let datasets = "/api/projects/{project}/datasets/{dataset}";
    let api = Router::new()
        .route("/api/whoami", get(whoami))
        .route("/api/info", get(info))
        .route("/api/projects", get(list_projects).post(create_project))
        .route("/api/projects/{project}", get(get_project).patch(update_project).delete(delete_project))
        .route("/api/projects/{project}/members", get(list_members))
        .route("/api/projects/{project}/members/{user}", put(set_member).delete(remove_member))
        .route("/api/projects/{project}/datasets", get(list_datasets).post(create_dataset))
        .route(datasets, get(get_dataset).patch(update_dataset).delete(delete_dataset))
        .route(&format!("{datasets}/status"), get(dataset_status))
        .route(&format!("{datasets}/frames"), get(list_frames).post(upload_frames))
        .route(&format!("{datasets}/delete_frames"), post(delete_frames))
        .route(&format!("{datasets}/frames/{{frame}}"), get(get_frame).delete(delete_frame))
        .route(&format!("{datasets}/labels"), post(upload_labels))
        .route(&format!("{datasets}/embeddings"), post(upload_embeddings))
        .route(&format!("{datasets}/inference_sets"), get(list_inference_sets).post(create_inference_set))
        .route(
            &format!("{datasets}/inference_sets/{{set}}"),
            get(get_inference_set).patch(update_inference_set).delete(delete_inference_set),
        )
        .route(&format!("{datasets}/inference_sets/{{set}}/inferences"), post(upload_inferences))
        .route(&format!("{datasets}/inference_sets/{{set}}/embeddings"), post(upload_inference_embeddings))
        .merge(crate::tables::router())
        .merge(crate::users::router())
        .merge(crate::oidc::router())
        .merge(crate::insight::router())
        .merge(crate::aquarium::router())
        // Unknown API paths get the API's JSON 404; every other unknown path is the web app's.
        .route("/api", any(api_not_found))
        .route("/api/{*rest}", any(api_not_found))
        .layer(axum::extract::DefaultBodyLimit::max(
            usize::try_from(state.config.max_upload_bytes).unwrap_or(usize::MAX),
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/sample/{*path}", get(sample_file))
        .merge(api)
        .merge(crate::raw::router())
        .fallback(crate::web::serve)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CompressionLayer::new().compress_when(DefaultPredicate::new().and(whole_bodies)))
        .with_state(state)
}

/// JSON, the map's points and the app's files are compressed when the client asks; file
/// bodies served in byte ranges (hosted and mirrored files) never are, as a range of a
/// compressed body is not the range asked for.
fn whole_bodies(_: StatusCode, _: axum::http::Version, headers: &HeaderMap, _: &axum::http::Extensions) -> bool {
    !headers.contains_key(axum::http::header::ACCEPT_RANGES) && !headers.contains_key(axum::http::header::CONTENT_RANGE)
}

async fn api_not_found() -> ApiError {
    ApiError::not_found("no such route; see docs/API.md")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see docs/API.md",
    )
}

async fn whoami(Caller(user): Caller) -> Json<Value> {
    Json(json!({ "name": user.name, "role": user.role }))
}

/// What a client needs to find the rest of the server (the Python SDK reads the Flight address here).
async fn info(State(state): State<AppState>, Caller(_): Caller) -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION"), "flight_url": state.config.flight_url }))
}

async fn list_projects(State(state): State<AppState>, Caller(user): Caller) -> ApiResult<Json<Value>> {
    let projects = blocking(move || datasets::list_projects(&state.services, &user)).await?;
    Ok(Json(json!({ "projects": projects })))
}

async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(spec): JsonBody<ProjectSpec>,
) -> ApiResult<Response> {
    let project = blocking(move || datasets::create_project(&state.services, &caller.0, &spec)).await?;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let project = blocking(move || datasets::project(&state.services, &caller.0, &project)).await?;
    Ok(Json(serde_json::to_value(project).expect("serializable")))
}

async fn update_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(patch): JsonBody<ProjectPatch>,
) -> ApiResult<Json<Value>> {
    let project = blocking(move || datasets::update_project(&state.services, &caller.0, &project, &patch)).await?;
    Ok(Json(serde_json::to_value(project).expect("serializable")))
}

async fn delete_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    datasets::delete_project(&state.services, &caller.0, &project).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let members = blocking(move || datasets::members(&state.services, &caller.0, &project)).await?;
    let members: Vec<Value> = members.into_iter().map(|(name, role)| json!({ "user": name, "role": role })).collect();
    Ok(Json(json!({ "members": members })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    role: ProjectRole,
}

async fn set_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user)): Path<(String, String)>,
    JsonBody(body): JsonBody<MemberBody>,
) -> ApiResult<Json<Value>> {
    let member = user.clone();
    blocking(move || datasets::set_member(&state.services, &caller.0, &project, &member, body.role)).await?;
    Ok(Json(json!({ "user": user, "role": body.role })))
}

async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || datasets::remove_member(&state.services, &caller.0, &project, &user)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_datasets(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let datasets = blocking(move || datasets::list_datasets(&state.services, &caller.0, &project)).await?;
    Ok(Json(json!({ "datasets": datasets })))
}

async fn create_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(spec): JsonBody<DatasetSpec>,
) -> ApiResult<Response> {
    let dataset = blocking(move || datasets::create_dataset(&state.services, &caller.0, &project, &spec)).await?;
    Ok((StatusCode::CREATED, Json(dataset)).into_response())
}

async fn get_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<DatasetInfo>> {
    Ok(Json(blocking(move || datasets::dataset(&state.services, &caller.0, &project, &name)).await?))
}

async fn update_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
    JsonBody(patch): JsonBody<DatasetPatch>,
) -> ApiResult<Json<DatasetInfo>> {
    Ok(Json(blocking(move || datasets::update_dataset(&state.services, &caller.0, &project, &name, &patch)).await?))
}

async fn delete_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || datasets::delete_dataset(&state.services, &caller.0, &project, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn dataset_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let status = blocking(move || datasets::status(&state.services, &caller.0, &project, &name)).await?;
    Ok(Json(serde_json::to_value(status).expect("serializable")))
}

/// A boolean query parameter: `true`/`false` (or `1`/`0`).
fn flag(key: &str, value: &str) -> ApiResult<bool> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::invalid(key, format!("{value:?} is not true or false"))),
    }
}

/// Query string of a frame listing. `meta` repeats: `meta=weather:eq:sunny&meta=speed:gt:3`.
fn frame_filter(params: Vec<(String, String)>) -> ApiResult<FrameFilter> {
    let mut filter = FrameFilter { limit: 100, ..FrameFilter::default() };
    let int = |key: &str, value: &str| {
        value.parse::<i64>().map_err(|_| ApiError::invalid(key, format!("{value:?} is not an integer")))
    };
    for (key, value) in params {
        match key.as_str() {
            "limit" => filter.limit = int(&key, &value)?.clamp(1, MAX_PAGE as i64) as usize,
            "offset" => {
                filter.offset =
                    usize::try_from(int(&key, &value)?).map_err(|_| ApiError::invalid("offset", "must be 0 or more"))?
            }
            "count" => filter.count = flag(&key, &value)?,
            "labels" => filter.labels = flag(&key, &value)?,
            "inference_set" => filter.inference_set = Some(value),
            "segment" => filter.segment = Some(value),
            "id" => filter.ids.push(value),
            "after" => filter.after = Some(value),
            "class" => filter.class = Some(value),
            "min_labels" => filter.min_labels = Some(int(&key, &value)?),
            "max_labels" => filter.max_labels = Some(int(&key, &value)?),
            "version" => filter.version = Some(int(&key, &value)?),
            "sensor_kind" => filter.sensor_kind = Some(value.parse().map_err(|e: String| ApiError::invalid(&key, e))?),
            "meta" => {
                let mut parts = value.splitn(3, ':');
                let (Some(k), Some(op)) = (parts.next(), parts.next()) else {
                    return Err(ApiError::invalid("meta", "use meta=KEY:OP:VALUE, e.g. meta=weather:eq:sunny"));
                };
                let op = op.parse().map_err(|e: String| ApiError::invalid("meta", e))?;
                let raw = parts.next().unwrap_or("");
                // Numbers and booleans compare as such; anything else is a string.
                let operand = serde_json::from_str::<Value>(raw)
                    .ok()
                    .filter(|v| v.is_number() || v.is_boolean())
                    .unwrap_or_else(|| Value::String(raw.to_string()));
                filter.metadata.push(MetaPredicate { key: k.to_string(), op, value: operand });
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown query parameter; use limit, after, offset, class, min_labels, max_labels, sensor_kind, \
                     meta, version, count, labels, inference_set, segment or id",
                ));
            }
        }
    }
    Ok(filter)
}

async fn list_frames(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let filter = frame_filter(params)?;
    let page = blocking(move || datasets::list_frames(&state.services, &caller.0, &project, &name, &filter)).await?;
    Ok(Json(serde_json::to_value(page).expect("serializable")))
}

/// `?version=N`, the only query parameter of single-frame routes.
fn version_param(params: Vec<(String, String)>) -> ApiResult<Option<i64>> {
    let mut version = None;
    for (key, value) in params {
        match key.as_str() {
            "version" => {
                version = Some(
                    value.parse().map_err(|_| ApiError::invalid("version", format!("{value:?} is not an integer")))?,
                )
            }
            other => return Err(ApiError::invalid(other, "unknown query parameter; only version is accepted")),
        }
    }
    Ok(version)
}

async fn get_frame(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, frame)): Path<(String, String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let version = version_param(params)?;
    let frame = blocking(move || datasets::frame(&state.services, &caller.0, &project, &name, &frame, version)).await?;
    Ok(Json(serde_json::to_value(frame).expect("serializable")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteFrames {
    frame_ids: Vec<String>,
}

async fn delete_frames(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
    JsonBody(body): JsonBody<DeleteFrames>,
) -> ApiResult<Json<Value>> {
    let report =
        blocking(move || datasets::delete_frames(&state.services, &caller.0, &project, &name, &body.frame_ids, false))
            .await?;
    Ok(Json(json!({ "deleted": report.records, "version": report.version })))
}

async fn delete_frame(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, frame)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let report =
        blocking(move || datasets::delete_frames(&state.services, &caller.0, &project, &name, &[frame], true)).await?;
    Ok(Json(json!({ "deleted": report.records, "version": report.version })))
}

async fn list_inference_sets(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let sets = blocking(move || datasets::list_inference_sets(&state.services, &caller.0, &project, &name)).await?;
    Ok(Json(json!({ "inference_sets": sets })))
}

async fn create_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
    JsonBody(spec): JsonBody<DatasetSpec>,
) -> ApiResult<Response> {
    let set =
        blocking(move || datasets::create_inference_set(&state.services, &caller.0, &project, &name, &spec)).await?;
    Ok((StatusCode::CREATED, Json(set)).into_response())
}

async fn get_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
) -> ApiResult<Json<InferenceSetInfo>> {
    Ok(Json(blocking(move || datasets::inference_set(&state.services, &caller.0, &project, &name, &set)).await?))
}

async fn update_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
    JsonBody(patch): JsonBody<DatasetPatch>,
) -> ApiResult<Json<InferenceSetInfo>> {
    let services = state.services;
    Ok(Json(
        blocking(move || datasets::update_inference_set(&services, &caller.0, &project, &name, &set, &patch)).await?,
    ))
}

async fn delete_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || datasets::delete_inference_set(&state.services, &caller.0, &project, &name, &set)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn upload_frames(
    state: State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadSummary>> {
    let target = (project.clone(), dataset.clone(), None);
    let answer = upload(&state, caller, target, UploadKind::Frames, headers, body).await?;
    check_after_upload(&state.services, &project, &dataset);
    Ok(answer)
}

async fn upload_labels(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadSummary>> {
    upload(&state, caller, (project, dataset, None), UploadKind::Labels, headers, body).await
}

async fn upload_embeddings(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadSummary>> {
    upload(&state, caller, (project, dataset, None), UploadKind::Embeddings, headers, body).await
}

async fn upload_inferences(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, set)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadSummary>> {
    upload(&state, caller, (project, dataset, Some(set)), UploadKind::Inferences, headers, body).await
}

async fn upload_inference_embeddings(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, set)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadSummary>> {
    upload(&state, caller, (project, dataset, Some(set)), UploadKind::Embeddings, headers, body).await
}

/// Streams an upload body into the store, batch by batch, read on a blocking thread.
async fn upload(
    state: &AppState,
    caller: Caller,
    (project, dataset, inference_set): (String, String, Option<String>),
    kind: UploadKind,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<UploadSummary>> {
    let (services, user) = (state.services.clone(), caller.0.clone());
    let target = (project.clone(), dataset.clone(), inference_set.clone());
    blocking(move || {
        let (project, dataset, inference_set) = target;
        let target =
            UploadTarget { project: &project, dataset: &dataset, inference_set: inference_set.as_deref(), kind };
        ingest::check_target(&services, &user, &target).map(drop)
    })
    .await?;
    let format = Format::from_content_type(headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()))?;
    let limit = state.config.max_upload_bytes;
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    // Over the limit, the service answers "too large" rather than "could not read".
    let stream = http_body_util::BodyDataStream::new(limited).map_err(|e| {
        if e.is::<http_body_util::LengthLimitError>() {
            std::io::Error::other(BodyTooLarge)
        } else {
            std::io::Error::other(e)
        }
    });
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let services = state.services.clone();
    let summary = blocking(move || {
        let target =
            UploadTarget { project: &project, dataset: &dataset, inference_set: inference_set.as_deref(), kind };
        ingest::upload(&services, &caller.0, target, format, reader)
    })
    .await?;
    Ok(Json(summary))
}

/// Serves the demo's sample images. Public on purpose: browsers load them with
/// `<img src>`, which cannot send a bearer token, and they hold no user data.
async fn sample_file(State(state): State<AppState>, Path(path): Path<String>) -> ApiResult<Response> {
    let root = state.config.sample_dir.clone().ok_or_else(|| ApiError::not_found("this server has no sample files"))?;
    let safe = path.split('/').all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'));
    if !safe {
        return Err(ApiError::not_found("no such sample file"));
    }
    let bytes = tokio::fs::read(root.join(&path)).await.map_err(|_| ApiError::not_found("no such sample file"))?;
    let content_type = match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("csv") => "text/csv",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    };
    let mut response = bytes.into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
    response.headers_mut().insert("access-control-allow-origin", HeaderValue::from_static("*"));
    Ok(response)
}
