//! Aquarium's segments (called issues in its API) as milkglass segments of one dataset.
//!
//! An Aquarium segment belongs to a project and names its dataset; a milkglass segment belongs
//! to its dataset. The id the client gets is `{dataset}.{segment name}` (dataset names have no
//! dot), so every later call finds the dataset again. Elements are frame ids (`frame`) or label
//! ids (`crop`).

use super::{AqBody, AqBulkBody, AqCaller, AqError, AqResult, base_url, invalid, required_str};
use crate::extract::Path;
use crate::{AppState, blocking};
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get, patch};
use milkglass_service::{Segment, SegmentSpec, ServiceError, User, datasets};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the URL `download_elements` hands out stays good.
const EXPORT_TTL: Duration = Duration::from_secs(600);

/// The description that keeps the segment's Aquarium type (`bucket`, `labelQuality`...).
const TYPE_PREFIX: &str = "Aquarium segment type: ";

pub fn router() -> Router<AppState> {
    let segment = "/projects/{project}/issues/{id}";
    Router::new()
        .route("/projects/{project}/issues", get(list).post(create))
        .route(segment, delete(remove))
        .route(&format!("{segment}/elements"), patch(edit_elements))
        .route(&format!("{segment}/download_elements"), get(download))
        .route(&format!("{segment}/update_state"), patch(update_state))
        .route(&format!("{segment}/rename"), patch(rename))
        .route("/segment_exports/{token}", get(export))
}

/// One-time, short-lived URLs for `download_elements`, which the client reads without
/// credentials: the token stands for the caller who asked.
#[derive(Default)]
pub struct Exports(Mutex<HashMap<String, Export>>);

/// What a download URL stands for: a segment, read as the user who asked for the URL.
struct Export {
    user: User,
    project: String,
    dataset: String,
    segment: String,
    expires: Instant,
}

impl Exports {
    fn issue(&self, user: User, project: String, dataset: String, segment: String) -> String {
        let token = super::uploads::random_token();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, export| export.expires > Instant::now());
        let expires = Instant::now() + EXPORT_TTL;
        map.insert(token.clone(), Export { user, project, dataset, segment, expires });
        token
    }

    fn redeem(&self, token: &str) -> Option<Export> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(token).filter(|export| export.expires > Instant::now())
    }
}

/// `{dataset}.{name}` back into its parts.
fn split_id(id: &str) -> AqResult<(String, String)> {
    id.split_once('.')
        .map(|(d, n)| (d.to_string(), n.to_string()))
        .ok_or_else(|| invalid("id", format!("{id:?} is not a segment id of milkglass (dataset.name)")))
}

/// `"{project}.{name}"` as the client writes datasets, without the project.
fn strip_project<'a>(project: &str, qualified: &'a str) -> &'a str {
    qualified.strip_prefix(project).and_then(|rest| rest.strip_prefix('.')).unwrap_or(qualified)
}

fn element_type(item_kind: &str) -> &'static str {
    if item_kind == "labels" { "crop" } else { "frame" }
}

fn state_to_aquarium(state: &str) -> &'static str {
    match state {
        "in_review" => "inReview",
        "resolved" => "resolved",
        _ => "triage",
    }
}

/// Only the states that mean the same on both sides are taken: the others would come back
/// as something else.
fn state_from_aquarium(state: &str) -> AqResult<&'static str> {
    match state {
        "triage" => Ok("open"),
        "inReview" => Ok("in_review"),
        "resolved" => Ok("resolved"),
        other => Err(invalid(
            "state",
            format!("milkglass keeps segment states triage, inReview and resolved; {other:?} has no equal"),
        )),
    }
}

fn segment_to_aquarium(project: &str, dataset: &str, segment: &Segment, with_elements: bool) -> Value {
    let template = segment.description.strip_prefix(TYPE_PREFIX).unwrap_or("bucket");
    let mut answer = json!({
        "id": format!("{dataset}.{}", segment.name),
        "name": segment.name,
        "element_type": element_type(&segment.item_kind),
        "created_at": segment.created_at,
        "updated_at": segment.updated_at,
        "state": state_to_aquarium(&segment.state),
        "template_type": template,
        "dataset": format!("{project}.{dataset}"),
        "compare_dataset": null,
        "element_count": segment.items.len(),
    });
    if with_elements {
        let kind = element_type(&segment.item_kind);
        let elements: Vec<Value> = segment
            .items
            .iter()
            .map(|id| json!({ "id": id, "frameId": if kind == "frame" { Some(id) } else { None }, "type": kind, "dataset": format!("{project}.{dataset}") }))
            .collect();
        answer["elements"] = elements.into();
    }
    answer
}

async fn list(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
) -> AqResult<Json<Value>> {
    let listing = blocking(move || {
        let mut out = Vec::new();
        for dataset in datasets::list_datasets(&state.services, &user, &project)? {
            for segment in datasets::list_segments(&state.services, &user, &project, &dataset.name)? {
                out.push(segment_to_aquarium(&project, &dataset.name, &segment, false));
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(listing.into()))
}

/// The items an edit or a new segment names: frame ids for frame elements, label ids for crops.
fn items(elements: &[Value], item_kind: &str) -> AqResult<Vec<String>> {
    elements
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let key = if item_kind == "frames" { "frameId" } else { "id" };
            e.get(key)
                .or_else(|| e.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| invalid(&format!("elements[{i}].{key}"), "must be a string"))
        })
        .collect()
}

async fn create(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
    AqBulkBody(body): AqBulkBody,
) -> AqResult<Json<Value>> {
    let name = required_str(&body, "name")?;
    if body.get("issue_category").and_then(Value::as_str) == Some("work-queue") {
        return Err(invalid("issue_category", "work queues are not served; create a plain segment"));
    }
    let template = body.get("issue_template_type").and_then(Value::as_str).unwrap_or("bucket");
    if template == "collectionCampaign" {
        return Err(invalid("issue_template_type", "collection campaigns are not served"));
    }
    // With a compare_dataset, `dataset` names the inference set and compare_dataset the base (sic).
    let base =
        body.get("compare_dataset").and_then(Value::as_str).or_else(|| body.get("dataset").and_then(Value::as_str));
    let base = base.ok_or_else(|| invalid("dataset", "must name the segment's dataset"))?;
    let dataset = strip_project(&project, base).to_string();
    let item_kind = match body.get("element_type").and_then(Value::as_str).unwrap_or("frame") {
        "frame" => "frames",
        "crop" => "labels",
        other => return Err(invalid("element_type", format!("{other:?} is not frame or crop"))),
    };
    let elements = body.get("elements").and_then(Value::as_array).cloned().unwrap_or_default();
    let spec = SegmentSpec {
        name: Some(name.to_string()),
        description: Some(format!("{TYPE_PREFIX}{template}")),
        state: Some("open".into()),
        item_kind: Some(item_kind.into()),
        items: Some(items(&elements, item_kind)?),
    };
    let created = blocking(move || {
        let dataset = resolve_dataset(&state, &user, &project, &dataset)?;
        let segment = datasets::create_segment(&state.services, &user, &project, &dataset, &spec)?;
        Ok(segment_to_aquarium(&project, &dataset, &segment, false))
    })
    .await?;
    Ok(Json(created))
}

/// The dataset a segment's `dataset` names: a dataset, or an inference set as
/// `inferences_{dataset}_{set}` (whose segment lives on its dataset).
fn resolve_dataset(state: &AppState, user: &User, project: &str, name: &str) -> Result<String, ServiceError> {
    let all = datasets::list_datasets(&state.services, user, project)?;
    if all.iter().any(|d| d.name == name) {
        return Ok(name.to_string());
    }
    let base = name.strip_prefix("inferences_").and_then(|rest| {
        all.iter().map(|d| d.name.as_str()).filter(|d| rest.starts_with(&format!("{d}_"))).max_by_key(|d| d.len())
    });
    base.map(str::to_string)
        .ok_or_else(|| ServiceError::not_found(format!("project {project:?} has no dataset {name:?}")))
}

async fn edit_elements(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, id)): Path<(String, String)>,
    AqBulkBody(body): AqBulkBody,
) -> AqResult<StatusCode> {
    let (dataset, name) = split_id(&id)?;
    let edit = body.get("edit_type").and_then(Value::as_str).unwrap_or("").to_string();
    if edit == "update" {
        return Err(invalid("edit_type", "element statuses are not kept by milkglass"));
    }
    if edit != "add" && edit != "remove" {
        return Err(invalid("edit_type", "must be add or remove"));
    }
    let elements = body.get("elements").and_then(Value::as_array).cloned().unwrap_or_default();
    blocking(move || {
        let segment = datasets::segment(&state.services, &user, &project, &dataset, &name)?;
        let changed = items(&elements, &segment.item_kind).map_err(super::to_service)?;
        let mut list = segment.items.clone();
        if edit == "add" {
            for id in changed {
                if !list.contains(&id) {
                    list.push(id);
                }
            }
        } else {
            list.retain(|id| !changed.contains(id));
        }
        let patch = SegmentSpec { items: Some(list), ..SegmentSpec::default() };
        datasets::update_segment(&state.services, &user, &project, &dataset, &name, &patch)
    })
    .await?;
    Ok(StatusCode::OK)
}

async fn download(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> AqResult<Json<Value>> {
    let (dataset, name) = split_id(&id)?;
    let (services, who) = (state.services.clone(), user.clone());
    let (p, d, n) = (project.clone(), dataset.clone(), name.clone());
    blocking(move || datasets::segment(&services, &who, &p, &d, &n)).await?;
    let token = state.aquarium.exports.issue(user, project, dataset, name);
    Ok(Json(json!({ "signed_url": format!("{}{}/segment_exports/{token}", base_url(&headers), super::PREFIX) })))
}

/// The URL `download_elements` handed out: the segment with its elements, read as the user who
/// asked for the URL (their access is checked again now).
async fn export(State(state): State<AppState>, Path(token): Path<String>) -> AqResult<Json<Value>> {
    let Export { user, project, dataset, segment: name, .. } =
        state.aquarium.exports.redeem(&token).ok_or_else(|| {
            AqError(crate::error::ApiError::forbidden("this download URL is unknown, used or expired"))
        })?;
    let segment =
        blocking(move || Ok((datasets::segment(&state.services, &user, &project, &dataset, &name)?, project, dataset)))
            .await?;
    let (segment, project, dataset) = segment;
    Ok(Json(segment_to_aquarium(&project, &dataset, &segment, true)))
}

async fn remove(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, id)): Path<(String, String)>,
) -> AqResult<StatusCode> {
    let (dataset, name) = split_id(&id)?;
    blocking(move || datasets::delete_segment(&state.services, &user, &project, &dataset, &name)).await?;
    Ok(StatusCode::OK)
}

async fn update_state(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, id)): Path<(String, String)>,
    AqBody(body): AqBody,
) -> AqResult<StatusCode> {
    let (dataset, name) = split_id(&id)?;
    let wanted = required_str(&body, "state")?;
    let patch = SegmentSpec { state: Some(state_from_aquarium(wanted)?.into()), ..SegmentSpec::default() };
    blocking(move || datasets::update_segment(&state.services, &user, &project, &dataset, &name, &patch)).await?;
    Ok(StatusCode::OK)
}

async fn rename(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, id)): Path<(String, String)>,
    AqBody(body): AqBody,
) -> AqResult<StatusCode> {
    let (dataset, name) = split_id(&id)?;
    let new_name = required_str(&body, "name")?;
    let patch = SegmentSpec { name: Some(new_name.to_string()), ..SegmentSpec::default() };
    blocking(move || datasets::update_segment(&state.services, &user, &project, &dataset, &name, &patch)).await?;
    Ok(StatusCode::OK)
}
