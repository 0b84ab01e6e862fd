//! Insight and segment routes: similar items, the label-error queue, model metrics, the
//! embedding map, segments and collection. Each handler parses and calls one function of
//! [`milkglass_service::insights`] or [`milkglass_service::datasets`] on the blocking pool.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::json::{BulkJsonBody, JsonBody};
use crate::{AppState, blocking};
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use milkglass_service::insights::{
    self, Collection, Dismissal, ExportFormat, LabelErrorQuery, LabelErrors, Layout, MetricsQuery, ModelMetrics,
    NeighborAnalytics, NeighborQuery, PointAttribute, Similar, SimilarRequest, parse_param,
};
use milkglass_service::{Segment, SegmentSpec, Space, datasets};
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
        .route(&format!("{base}/neighbors"), get(neighbors))
        .route(&format!("{base}/label_errors/dismiss"), post(dismiss))
        .route(&format!("{datasets}/segments"), get(list_segments).post(create_segment))
        .route(
            &format!("{datasets}/segments/{{segment}}"),
            get(get_segment).patch(update_segment).delete(delete_segment),
        )
        .route(&format!("{datasets}/segments/{{segment}}/export"), get(export_segment))
        .route(&format!("{datasets}/segments/{{segment}}/collect"), post(collect))
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

    /// A parameter naming one of an enum's values (`space=labels`), or its default.
    fn choice<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> ApiResult<T> {
        Ok(self.0.get(name).map(|raw| parse_param(name, raw)).transpose()?.unwrap_or_default())
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
) -> ApiResult<Json<Similar>> {
    Ok(Json(blocking(move || insights::similar(&state.services, &caller.0, &project, &dataset, &request)).await?))
}

async fn label_errors(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<LabelErrors>> {
    let p = Params::new(pairs, &["inference_set", "limit", "offset", "kind"])?;
    let query = LabelErrorQuery {
        inference_set: p.required("inference_set")?,
        limit: p.number("limit", 100)?,
        offset: p.number("offset", 0)?,
        kind: p.text("kind").map(|kind| parse_param("kind", &kind)).transpose()?,
    };
    Ok(Json(blocking(move || insights::label_errors(&state.services, &caller.0, &project, &dataset, &query)).await?))
}

async fn metrics(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> ApiResult<Json<ModelMetrics>> {
    let p = Params::new(pairs, &["inference_set", "iou", "confidence", "cell_ids"])?;
    let query = MetricsQuery {
        inference_set: p.required("inference_set")?,
        iou: p.number("iou", insights::DEFAULT_THRESHOLDS.0)?,
        confidence: p.number("confidence", insights::DEFAULT_THRESHOLDS.1)?,
        cell_ids: p.number("cell_ids", insights::DEFAULT_CELL_IDS)?,
    };
    Ok(Json(blocking(move || insights::metrics(&state.services, &caller.0, &project, &dataset, &query)).await?))
}

/// The map as `application/octet-stream`: little-endian f32 pairs in the order of `map/ids`.
async fn embedding_map(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let p = Params::new(params, &["space", "layout"])?;
    let (space, layout): (Space, Layout) = (p.choice("space")?, p.choice("layout")?);
    let (points, bytes) =
        blocking(move || insights::embedding_map(&state.services, &caller.0, &project, &dataset, space, layout))
            .await?;
    Ok((
        [
            (CONTENT_TYPE, "application/octet-stream".to_string()),
            ("x-milkglass-points".parse().expect("header name"), points.to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// The points' ids and attributes: JSON, or with `Accept: application/vnd.apache.arrow.stream`
/// one Arrow IPC record batch (`id`, then one column per attribute; text attributes
/// dictionary-encoded), a fraction of the JSON's size at a million points.
async fn embedding_map_ids(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Path((project, dataset)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let p = Params::new(params, &["space", "attributes", "inference_set"])?;
    let space: Space = p.choice("space")?;
    let attributes = match p.text("attributes") {
        None => Vec::new(),
        Some(list) => list.split(',').filter(|a| !a.is_empty()).map(PointAttribute::parse).collect::<Result<_, _>>()?,
    };
    let services = state.services;
    let points = blocking(move || {
        let set = p.text("inference_set");
        insights::map_ids(&services, &caller.0, &project, &dataset, space, &attributes, set.as_deref())
    })
    .await?;
    let arrow =
        headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains(ARROW_STREAM));
    if !arrow {
        return Ok(Json(serde_json::to_value(points).expect("serializable")).into_response());
    }
    let bytes = blocking(move || points_as_arrow(&points).map_err(milkglass_service::ServiceError::internal)).await?;
    Ok(([(CONTENT_TYPE, ARROW_STREAM)], bytes).into_response())
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

/// Map points as one Arrow record batch in an IPC stream.
fn points_as_arrow(points: &insights::MapPoints) -> Result<Vec<u8>, arrow::error::ArrowError> {
    use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray, StringDictionaryBuilder};
    use arrow::datatypes::{Field, Int32Type, Schema};
    use std::sync::Arc;
    let mut fields = vec![Field::new("id", arrow::datatypes::DataType::Utf8, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(&points.ids))];
    for (name, values) in &points.attributes {
        let present = || values.iter().filter(|v| !v.is_null());
        let column: ArrayRef = if present().all(Value::is_number) {
            Arc::new(values.iter().map(Value::as_f64).collect::<Float64Array>())
        } else if present().all(Value::is_boolean) {
            Arc::new(values.iter().map(Value::as_bool).collect::<BooleanArray>())
        } else {
            let mut builder = StringDictionaryBuilder::<Int32Type>::new();
            for value in values {
                match value {
                    Value::Null => builder.append_null(),
                    Value::String(s) => builder.append_value(s),
                    other => builder.append_value(other.to_string()),
                }
            }
            Arc::new(builder.finish())
        };
        fields.push(Field::new(name, column.data_type().clone(), true));
        columns.push(column);
    }
    let batch = arrow::array::RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
    let mut bytes = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(bytes)
}

async fn neighbors(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Json<NeighborAnalytics>> {
    let p = Params::new(params, &["space", "kind", "limit", "offset", "max_distance", "min_score"])?;
    let query = NeighborQuery {
        space: p.choice("space")?,
        kind: p.choice("kind")?,
        limit: p.number("limit", 100)?,
        offset: p.number("offset", 0)?,
        max_distance: p.number("max_distance", 0.02)?,
        min_score: p.number("min_score", 3.5)?,
    };
    Ok(Json(blocking(move || insights::neighbors(&state.services, &caller.0, &project, &dataset, &query)).await?))
}

async fn dismiss(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    JsonBody(dismissal): JsonBody<Dismissal>,
) -> ApiResult<Json<Value>> {
    let key = blocking(move || insights::dismiss(&state.services, &caller.0, &project, &dataset, &dismissal)).await?;
    Ok(Json(serde_json::json!({ "dismissed": key })))
}

async fn list_segments(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let segments = blocking(move || datasets::list_segments(&state.services, &caller.0, &project, &dataset)).await?;
    Ok(Json(serde_json::json!({ "segments": segments })))
}

async fn create_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    BulkJsonBody(spec): BulkJsonBody<SegmentSpec>,
) -> ApiResult<Response> {
    let segment =
        blocking(move || datasets::create_segment(&state.services, &caller.0, &project, &dataset, &spec)).await?;
    Ok((StatusCode::CREATED, Json(segment)).into_response())
}

async fn get_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
) -> ApiResult<Json<Segment>> {
    Ok(Json(blocking(move || datasets::segment(&state.services, &caller.0, &project, &dataset, &segment)).await?))
}

async fn update_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
    BulkJsonBody(patch): BulkJsonBody<SegmentSpec>,
) -> ApiResult<Json<Segment>> {
    let services = state.services;
    Ok(Json(
        blocking(move || datasets::update_segment(&services, &caller.0, &project, &dataset, &segment, &patch)).await?,
    ))
}

async fn delete_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || datasets::delete_segment(&state.services, &caller.0, &project, &dataset, &segment)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn export_segment(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
    Query(params): Query<Vec<(String, String)>>,
) -> ApiResult<Response> {
    let p = Params::new(params, &["format"])?;
    let format: ExportFormat = p.choice("format")?;
    let services = state.services;
    let body =
        blocking(move || insights::export_segment(&services, &caller.0, &project, &dataset, &segment, format)).await?;
    Ok(([(CONTENT_TYPE, format.content_type())], body).into_response())
}

async fn collect(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset, segment)): Path<(String, String, String)>,
    JsonBody(request): JsonBody<Collection>,
) -> ApiResult<Response> {
    let services = state.services;
    let saved =
        blocking(move || insights::collect(&services, &caller.0, &project, &dataset, &segment, &request)).await?;
    Ok((StatusCode::CREATED, Json(saved)).into_response())
}
