//! Routes and their handlers. Each handler authorizes, then calls one store method.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::ingest::{Format, run_upload};
use crate::json::JsonBody;
use crate::{AppState, blocking};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures::TryStreamExt;
use milkglass_core::{DatasetSpec, ProjectRole, ProjectSpec};
use milkglass_store::{
    DatasetInfo, DatasetPatch, FrameFilter, InferenceSetInfo, MetaPredicate, ProjectPatch, Store, UploadKind,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::{StreamReader, SyncIoBridge};

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
        .merge(crate::insight::router())
        .layer(axum::extract::DefaultBodyLimit::max(
            usize::try_from(state.config.max_upload_bytes).unwrap_or(usize::MAX),
        ))
        .fallback(api_not_found);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/sample/{*path}", get(sample_file))
        .merge(api)
        .merge(crate::assets::router())
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError::not_found("no such route; see docs/API.md")
}

/// Runs a blocking store call off the async workers.
async fn whoami(Caller(user): Caller) -> Json<Value> {
    Json(json!({ "name": user.name, "role": user.role }))
}

/// What a client needs to find the rest of the server (the Python SDK reads the Flight address here).
async fn info(State(state): State<AppState>, Caller(_): Caller) -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION"), "flight_url": state.config.flight_url }))
}

async fn list_projects(State(state): State<AppState>, Caller(user): Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "projects": state.store.list_projects(&user)? })))
}

async fn create_project(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(spec): JsonBody<ProjectSpec>,
) -> ApiResult<Response> {
    caller.require_creator()?;
    let project = state.store.create_project(&spec, &caller.0)?;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

async fn get_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let project = caller.project(&state, &project, ProjectRole::Viewer)?;
    Ok(Json(serde_json::to_value(project).expect("serializable")))
}

async fn update_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(patch): JsonBody<ProjectPatch>,
) -> ApiResult<Json<Value>> {
    caller.project(&state, &project, ProjectRole::Owner)?;
    Ok(Json(serde_json::to_value(state.store.update_project(&project, &patch)?).expect("serializable")))
}

async fn delete_project(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<StatusCode> {
    let info = caller.project(&state, &project, ProjectRole::Owner)?;
    let store = state.store.clone();
    blocking(move || Ok(store.delete_project(&project)?)).await?;
    crate::assets::remove_project_files(&state, &info).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    let members: Vec<Value> =
        state.store.members(&project)?.into_iter().map(|(name, role)| json!({ "user": name, "role": role })).collect();
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
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    state.store.set_member(&project, &user, body.role)?;
    Ok(Json(json!({ "user": user, "role": body.role })))
}

async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let project = caller.project(&state, &project, ProjectRole::Owner)?;
    state.store.remove_member(&project, &user)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_datasets(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
) -> ApiResult<Json<Value>> {
    caller.project(&state, &project, ProjectRole::Viewer)?;
    Ok(Json(json!({ "datasets": state.store.list_datasets(&project)? })))
}

async fn create_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path(project): Path<String>,
    JsonBody(spec): JsonBody<DatasetSpec>,
) -> ApiResult<Response> {
    caller.project(&state, &project, ProjectRole::Owner)?;
    Ok((StatusCode::CREATED, Json(state.store.create_dataset(&project, &spec)?)).into_response())
}

/// The dataset named in the path, once the caller has `needed` rights on its project.
fn dataset(
    state: &AppState,
    caller: &Caller,
    project: &str,
    dataset: &str,
    needed: ProjectRole,
) -> ApiResult<DatasetInfo> {
    caller.project(state, project, needed)?;
    Ok(state.store.dataset(project, dataset)?)
}

async fn get_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<DatasetInfo>> {
    Ok(Json(dataset(&state, &caller, &project, &name, ProjectRole::Viewer)?))
}

async fn update_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
    JsonBody(patch): JsonBody<DatasetPatch>,
) -> ApiResult<Json<DatasetInfo>> {
    caller.project(&state, &project, ProjectRole::Owner)?;
    Ok(Json(state.store.update_dataset(&project, &name, &patch)?))
}

async fn delete_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    caller.project(&state, &project, ProjectRole::Owner)?;
    let store = state.store.clone();
    blocking(move || Ok(store.delete_dataset(&project, &name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn dataset_status(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    caller.project(&state, &project, ProjectRole::Viewer)?;
    let store = state.store.clone();
    let status = blocking(move || Ok(store.dataset_status(&project, &name)?)).await?;
    Ok(Json(serde_json::to_value(status).expect("serializable")))
}

/// Query string of a frame listing. `meta` repeats: `meta=weather:eq:sunny&meta=speed:gt:3`.
fn frame_filter(params: Vec<(String, String)>) -> ApiResult<FrameFilter> {
    let mut filter = FrameFilter { limit: 100, ..FrameFilter::default() };
    let int = |key: &str, value: &str| {
        value.parse::<i64>().map_err(|_| ApiError::invalid(key, format!("{value:?} is not an integer")))
    };
    for (key, value) in params {
        match key.as_str() {
            "limit" => filter.limit = int(&key, &value)?.clamp(1, milkglass_store::MAX_PAGE as i64) as usize,
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
                    "unknown query parameter; use limit, after, class, min_labels, max_labels, sensor_kind, meta or version",
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
    caller.project(&state, &project, ProjectRole::Viewer)?;
    let filter = frame_filter(params)?;
    let store = state.store.clone();
    let page = blocking(move || Ok(store.list_frames(&project, &name, &filter)?)).await?;
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
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Viewer)?;
    let frame = state.store.frame(&dataset, &frame, version_param(params)?)?;
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
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Owner)?;
    let store = state.store.clone();
    let report = blocking(move || Ok(store.delete_frames(&dataset, &body.frame_ids)?)).await?;
    Ok(Json(json!({ "deleted": report.records, "version": report.version })))
}

async fn delete_frame(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, frame)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Owner)?;
    let store = state.store.clone();
    let report = blocking(move || {
        store.delete_frames(&dataset, std::slice::from_ref(&frame)).map_err(|e| match e {
            milkglass_store::StoreError::Invalid(_) => ApiError::not_found(format!("frame {frame:?} not found")),
            other => other.into(),
        })
    })
    .await?;
    Ok(Json(json!({ "deleted": report.records, "version": report.version })))
}

async fn list_inference_sets(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Viewer)?;
    Ok(Json(json!({ "inference_sets": state.store.list_inference_sets(&dataset)? })))
}

async fn create_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name)): Path<(String, String)>,
    JsonBody(spec): JsonBody<DatasetSpec>,
) -> ApiResult<Response> {
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Owner)?;
    Ok((StatusCode::CREATED, Json(state.store.create_inference_set(&dataset, &spec)?)).into_response())
}

async fn get_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
) -> ApiResult<Json<InferenceSetInfo>> {
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Viewer)?;
    Ok(Json(state.store.inference_set(&dataset, &set)?))
}

async fn update_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
    JsonBody(patch): JsonBody<DatasetPatch>,
) -> ApiResult<Json<InferenceSetInfo>> {
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Owner)?;
    Ok(Json(state.store.update_inference_set(&dataset, &set, &patch)?))
}

async fn delete_inference_set(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Owner)?;
    state.store.delete_inference_set(&dataset, &set)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn upload_frames(
    state: State<AppState>,
    caller: Caller,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let (project, dataset) = path.0;
    let target = (project.clone(), dataset.clone());
    let answer = upload(State(state.0.clone()), caller, target, None, UploadKind::Frames, headers, body).await?;
    crate::assets::check_after_upload(&state, &project, &dataset);
    Ok(answer)
}

async fn upload_labels(
    state: State<AppState>,
    caller: Caller,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    upload(state, caller, path.0, None, UploadKind::Labels, headers, body).await
}

async fn upload_embeddings(
    state: State<AppState>,
    caller: Caller,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    upload(state, caller, path.0, None, UploadKind::Embeddings, headers, body).await
}

async fn upload_inferences(
    state: State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    upload(state, caller, (project, name), Some(set), UploadKind::Inferences, headers, body).await
}

async fn upload_inference_embeddings(
    state: State<AppState>,
    caller: Caller,
    Path((project, name, set)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    upload(state, caller, (project, name), Some(set), UploadKind::Embeddings, headers, body).await
}

/// Streams an upload body into the store, batch by batch.
async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    (project, name): (String, String),
    inference_set: Option<String>,
    kind: UploadKind,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let dataset = dataset(&state, &caller, &project, &name, ProjectRole::Owner)?;
    let set = inference_set.map(|set| state.store.inference_set(&dataset, &set)).transpose()?;
    let format = Format::from_content_type(headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()))?;
    let limit = state.config.max_upload_bytes;
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    let stream = http_body_util::BodyDataStream::new(limited).map_err(std::io::Error::other);
    let reader = SyncIoBridge::new(StreamReader::new(stream));
    let store: Store = state.store.clone();
    let batch_size = state.config.batch_size;
    blocking(move || {
        let mut upload = store.begin_upload(&dataset, kind, set.as_ref())?;
        let result = run_upload(&store, &mut upload, format, reader, batch_size);
        store.finish_upload(&upload, result.as_ref().err().map(|e| e.message.as_str()))?;
        let summary = json!({
            "upload_id": upload.id(),
            "version": upload.version(),
            "records": upload.records,
            "batches": upload.batches,
        });
        match result {
            Ok(()) => Ok(Json(summary)),
            Err(e) => Err(e.with_details(json!({ "committed": summary }))),
        }
    })
    .await
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
