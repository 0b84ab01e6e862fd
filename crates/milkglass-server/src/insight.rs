//! Insight routes: similar items, the label-error queue, model metrics and the embedding map.
//! Each handler authorizes (viewer rights on the project) and calls one function of
//! [`crate::insight_service`] on the blocking pool.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::insight_service::{self, Collection, Dismissal, LabelErrorQuery, MetricsQuery, SimilarRequest};
use crate::json::JsonBody;
use crate::{AppState, blocking};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use milkglass_core::ProjectRole;
use milkglass_store::{DatasetInfo, ProjectInfo, SegmentSpec};
use serde_json::Value;

pub fn router() -> Router<AppState> {
    let datasets = "/api/projects/{project}/datasets/{dataset}";
    let base = "/api/projects/{project}/datasets/{dataset}/insights";
    Router::new()
        .route(&format!("{base}/similar"), post(similar))
        .route(&format!("{base}/label_errors"), get(label_errors))
        .route(&format!("{base}/metrics"), get(metrics))
        .route(&format!("{base}/map"), get(embedding_map))
        .route(&format!("{base}/map/ids"), get(embedding_map_ids))
        .route(&format!("{base}/label_errors/dismiss"), post(dismiss))
        .route(&format!("{datasets}/segments"), get(list_segments).post(create_segment))
        .route(
            &format!("{datasets}/segments/{{segment}}"),
            get(get_segment).patch(update_segment).delete(delete_segment),
        )
        .route(&format!("{datasets}/segments/{{segment}}/export"), get(export_segment))
        .route(&format!("{datasets}/segments/{{segment}}/collect"), post(collect))
}

/// Changes (segments, dismissals) need the owner role on the project.
fn owned(state: &AppState, caller: &Caller, project: &str, dataset: &str) -> ApiResult<DatasetInfo> {
    let project = caller.project(state, project, ProjectRole::Owner)?;
    Ok(state.store.dataset(&project.name, dataset)?)
}

fn viewable(state: &AppState, caller: &Caller, project: &str, dataset: &str) -> ApiResult<(ProjectInfo, DatasetInfo)> {
    let project = caller.project(state, project, ProjectRole::Viewer)?;
    let dataset = state.store.dataset(&project.name, dataset)?;
    Ok((project, dataset))
}

/// Query parameters by name; unknown names are refused so that a typo is not silently ignored.
struct Params(std::collections::HashMap<String, String>);

impl Params {
    fn new(pairs: Vec<(String, String)>, known: &[&str]) -> ApiResult<Params> {
        for (name, _) in &pairs {
            if !known.contains(&name.as_str()) {
                return Err(ApiError::invalid(name.clone(), format!("unknown parameter; expected one of {known:?}")));
            }
        }
        Ok(Params(pairs.into_iter().collect()))
    }

    fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    fn required(&self, name: &str) -> ApiResult<String> {
        self.text(name).ok_or_else(|| ApiError::invalid(name, "this parameter is required"))
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> ApiResult<T> {
        match self.0.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| ApiError::invalid(name, format!("{raw:?} is not a valid number"))),
        }
    }
}

async fn similar(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    JsonBody(request): JsonBody<SimilarRequest>,
) -> ApiResult<Json<Value>> {
    let (_, dataset) = viewable(&state, &caller, &project, &dataset)?;
    let (store, indexes) = (state.store.clone(), state.indexes.clone());
    Ok(Json(blocking(move || insight_service::similar(&indexes, &store, &dataset, &request)).await?))
}

async fn label_errors(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (project, dataset) = viewable(&state, &caller, &project, &dataset)?;
    let p = Params::new(pairs, &["inference_set", "limit", "offset", "kind"])?;
    let params = LabelErrorQuery {
        inference_set: p.required("inference_set")?,
        limit: p.number("limit", 100)?,
        offset: p.number("offset", 0)?,
        kind: p.text("kind"),
    };
    let store = state.store.clone();
    Ok(Json(blocking(move || insight_service::label_errors(&store, &project, &dataset, &params)).await?))
}

async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (project, dataset) = viewable(&state, &caller, &project, &dataset)?;
    let p = Params::new(pairs, &["inference_set", "iou", "confidence"])?;
    let params = MetricsQuery {
        inference_set: p.required("inference_set")?,
        iou: p.number("iou", 0.5)?,
        confidence: p.number("confidence", 0.5)?,
    };
    let store = state.store.clone();
    Ok(Json(blocking(move || insight_service::metrics(&store, &project, &dataset, &params)).await?))
}

/// The map as `application/octet-stream`: little-endian f32 pairs in the order of `map/ids`.
async fn embedding_map(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let (_, dataset) = viewable(&state, &caller, &project, &dataset)?;
    let p = Params::new(params, &["space", "layout"])?;
    let (space, layout) =
        (p.text("space").unwrap_or_else(|| "frames".into()), p.text("layout").unwrap_or_else(|| "pca".into()));
    let store = state.store.clone();
    let (ids, bytes) = blocking(move || insight_service::embedding_map(&store, &dataset, &space, &layout)).await?;
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream".to_string()),
            ("x-milkglass-points".parse().expect("header name"), ids.len().to_string()),
        ],
        bytes,
    )
        .into_response())
}

async fn embedding_map_ids(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<Value>> {
    let (_, dataset) = viewable(&state, &caller, &project, &dataset)?;
    let p = Params::new(params, &["space"])?;
    let space = p.text("space").unwrap_or_else(|| "frames".into());
    let store = state.store.clone();
    let ids = blocking(move || insight_service::map_ids(&store, &dataset, &space)).await?;
    Ok(Json(serde_json::json!({ "ids": ids })))
}

async fn dismiss(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    JsonBody(dismissal): JsonBody<Dismissal>,
) -> ApiResult<Json<Value>> {
    let dataset = owned(&state, &caller, &project, &dataset)?;
    let store = state.store.clone();
    Ok(Json(blocking(move || insight_service::dismiss(&store, &dataset, &dismissal)).await?))
}

async fn list_segments(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, dataset) = viewable(&state, &caller, &project, &dataset)?;
    Ok(Json(serde_json::json!({ "segments": state.store.list_segments(&dataset)? })))
}

async fn create_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    JsonBody(spec): JsonBody<SegmentSpec>,
) -> ApiResult<Response> {
    let dataset = owned(&state, &caller, &project, &dataset)?;
    let segment = state.store.create_segment(&dataset, &spec)?;
    Ok((StatusCode::CREATED, Json(segment)).into_response())
}

async fn get_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let (_, dataset) = viewable(&state, &caller, &project, &dataset)?;
    Ok(Json(serde_json::to_value(state.store.segment(&dataset, &segment)?).expect("serializable")))
}

async fn update_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
    JsonBody(patch): JsonBody<SegmentSpec>,
) -> ApiResult<Json<Value>> {
    let dataset = owned(&state, &caller, &project, &dataset)?;
    Ok(Json(serde_json::to_value(state.store.update_segment(&dataset, &segment, &patch)?).expect("serializable")))
}

async fn delete_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    let dataset = owned(&state, &caller, &project, &dataset)?;
    state.store.delete_segment(&dataset, &segment)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn export_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let (_, dataset) = viewable(&state, &caller, &project, &dataset)?;
    let p = Params::new(params, &["format"])?;
    let format = p.text("format").unwrap_or_else(|| "jsonl".into());
    let store = state.store.clone();
    let (content_type, body) =
        blocking(move || insight_service::export_segment(&store, &dataset, &segment, &format)).await?;
    Ok(([(CONTENT_TYPE, content_type)], body).into_response())
}

async fn collect(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
    JsonBody(request): JsonBody<Collection>,
) -> ApiResult<Response> {
    let (_, source) = viewable(&state, &caller, &project, &dataset)?;
    let target = owned(&state, &caller, &project, &request.from_dataset)?;
    let store = state.store.clone();
    let saved = blocking(move || insight_service::collect(&store, &source, &target, &segment, &request)).await?;
    Ok((StatusCode::CREATED, Json(saved)).into_response())
}
