//! The client's `MetricsManager.get_metrics` for a whole inference set, answered from
//! milkglass's detection metrics (`insights::metrics`, the COCO matching at the given IoU and
//! confidence).
//!
//! The manager first asks `/joined_filtered_table` for a table name (Aquarium joined BigQuery
//! tables there), then posts it back to `get_scenario_metrics`. milkglass has no such tables:
//! the name it hands out only says which dataset and inference set to compute over, and is
//! checked again like any other input. Metrics per scenario (segment) are refused by name.

use super::{AqBody, AqCaller, AqResult, invalid, split_inference_set_id};
use crate::extract::Path;
use crate::{AppState, blocking};
use axum::Json;
use axum::extract::{Query, State};
use milkglass_service::insights::{self, MetricsQuery, ModelMetrics};
use milkglass_service::{ServiceError, datasets};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

/// `GET /joined_filtered_table?dataset=P.D&inference_set=P.S&project=P`: the "table" to post back.
pub async fn joined_table(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Query(query): Query<HashMap<String, String>>,
) -> AqResult<Json<Value>> {
    let project = query.get("project").cloned().ok_or_else(|| invalid("project", "is required"))?;
    let set = query.get("inference_set").cloned().ok_or_else(|| invalid("inference_set", "is required"))?;
    let set = set.strip_prefix(&format!("{project}.")).unwrap_or(&set).to_string();
    let (p, s) = (project.clone(), set.clone());
    blocking(move || {
        split_inference_set_id(&state.services, &user, &p, &s)?
            .ok_or_else(|| ServiceError::invalid("inference_set", format!("{s:?} names no inference set")))
    })
    .await?;
    Ok(Json(json!({ "dest_table": format!("{project}.{set}") })))
}

/// `POST /projects/{p}/datasets/get_scenario_metrics`: precision, recall, F1, false positives,
/// false negatives and confusions of each inference set named, over the whole dataset.
pub async fn scenario_metrics(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
    AqBody(body): AqBody,
) -> AqResult<Json<Value>> {
    if body.get("scenarios").and_then(Value::as_array).is_some_and(|s| !s.is_empty())
        || body.get("scenarios") == Some(&Value::Null)
    {
        return Err(invalid(
            "scenarios",
            "metrics per scenario are not served: call get_metrics without scenario_ids, or read \
             milkglass's metrics of a segment's frames in the web app",
        ));
    }
    let class = body.get("metrics_class").and_then(Value::as_str).map(str::to_lowercase);
    let sets = body.get("inferences").and_then(Value::as_array).cloned().unwrap_or_default();
    let answer = blocking(move || {
        let mut answer = Map::new();
        for (i, entry) in sets.iter().enumerate() {
            let field = |key: &str| format!("inferences[{i}].{key}");
            let name = entry.get("name").and_then(Value::as_str).ok_or_else(|| ServiceError::invalid(field("name"), "must be a string"))?;
            let percent = |key: &str| {
                entry.get(key).and_then(Value::as_f64).filter(|v| (0.0..=100.0).contains(v)).ok_or_else(|| {
                    ServiceError::invalid(field(key), "must be a percentage from 0 to 100")
                })
            };
            let (iou, confidence) = (percent("iou")?, percent("confidence")?);
            let (dataset, set) = split_inference_set_id(&state.services, &user, &project, name)?
                .ok_or_else(|| ServiceError::invalid(field("name"), format!("{name:?} names no inference set")))?;
            // Counts only: the manager shows no ids.
            let query = MetricsQuery { inference_set: set, iou: iou / 100.0, confidence: confidence / 100.0, cell_ids: 0 };
            let ModelMetrics::Detection(metrics) = insights::metrics(&state.services, &user, &project, &dataset, &query)? else {
                return Err(ServiceError::invalid(
                    field("name"),
                    "classification metrics are not served through the metrics manager: milkglass's are at \
                     GET /api/projects/{project}/datasets/{dataset}/insights/metrics",
                ));
            };
            let frames = datasets::status(&state.services, &user, &project, &dataset)?.status.frames;
            let scores: Vec<_> = metrics
                .classes
                .iter()
                .filter(|c| class.as_deref().is_none_or(|want| c.class.to_lowercase() == want))
                .filter_map(|c| c.at_threshold.as_ref())
                .collect();
            if let Some(want) = &class
                && scores.is_empty()
            {
                return Err(ServiceError::invalid("metrics_class", format!("{want:?} is no class of the project")));
            }
            let (tp, fp, fne) = scores.iter().fold((0usize, 0usize, 0usize), |(tp, fp, fne), s| {
                (tp + s.true_positives, fp + s.false_positives, fne + s.false_negatives)
            });
            let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            let (precision, recall) = (ratio(tp, tp + fp), ratio(tp, tp + fne));
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            let confusion = &metrics.confusion;
            let mut confusions = 0;
            for (r, row) in confusion.rows.iter().enumerate() {
                for (c, column) in confusion.columns.iter().enumerate() {
                    let counted = r != c && row != "background" && column != "background";
                    let of_class = class.as_deref().is_none_or(|want| row.to_lowercase() == want);
                    if counted && of_class {
                        confusions += confusion.cells[r][c].count;
                    }
                }
            }
            let by_threshold = json!({ format!("{:?}", iou): { format!("{:?}", confidence): [precision, recall, f1, fp, fne, confusions] } });
            answer.insert(
                name.to_string(),
                json!([{
                    "name": name,
                    "uuid": name,
                    "count": frames,
                    "metrics": by_threshold,
                    "issue_template_type": "testScenarioGeneric",
                    "issue_thresholds": {},
                }]),
            );
        }
        Ok(answer)
    })
    .await?;
    Ok(Json(Value::Object(answer)))
}
