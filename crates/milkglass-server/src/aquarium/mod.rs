//! The part of Aquarium's REST API (`/api/v1`) that its Python client, `aquariumlearning`
//! 1.0.7, calls: one more adapter over `milkglass-service`, so that scripts written for the
//! hosted Aquarium run unmodified against milkglass (docs/AQUARIUM.md).
//!
//! Handlers translate Aquarium's shapes into milkglass's (`rows`), call the same service
//! operations as milkglass's own routes (which authorize with the same roles and validate),
//! and answer in Aquarium's shapes. Errors are `{"message": ...}`, which the client raises
//! as `Exception("Error: ...")`.

mod metrics;
mod rows;
mod segments;
mod uploads;

use crate::error::ApiError;
use crate::extract::Path;
use crate::json::{BulkJsonBody, JsonBody};
use crate::{AppState, blocking};
use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
use milkglass_core::{AccessMode, ClassEntry, ClassMap, ProjectSpec};
use milkglass_service::{FrameFilter, MAX_PAGE, ProjectPatch, ServiceError, Services, User, datasets};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// What the Aquarium adapter keeps between requests: upload sessions and committed upload
/// versions, and the one-time URLs of segment downloads. In memory, as the client's uploads
/// are finished in minutes.
#[derive(Default)]
pub struct AquariumState {
    uploads: uploads::Uploads,
    exports: segments::Exports,
}

/// Where the client's `api_endpoint` points: `http://HOST:PORT/api/v1`.
pub const PREFIX: &str = "/api/v1";

/// The project metadata key that keeps what Aquarium's project has and milkglass's does not
/// (primary task, thresholds, the class map's training fields), as the client sent it.
const AQUARIUM_KEY: &str = "aquarium";

pub fn router() -> Router<AppState> {
    let dataset = "/projects/{project}/datasets/{dataset}";
    let routes = Router::new()
        .route("/projects", get(list_projects).post(create_project))
        .route("/projects/{project}", get(get_project).delete(delete_project))
        .route("/projects/{project}/metadata", post(set_project_metadata))
        .route("/projects/{project}/label_class_map", patch(patch_class_map))
        .route("/projects/{project}/datasets", get(list_datasets).post(uploads::commit_dataset))
        .route(dataset, get(get_dataset).delete(delete_dataset))
        .route(&format!("{dataset}/metadata"), post(set_dataset_metadata))
        .route(&format!("{dataset}/is_archived"), get(is_archived))
        .route(&format!("{dataset}/is_processed"), get(is_processed))
        .route(&format!("{dataset}/process_state"), get(process_state))
        .route(&format!("{dataset}/ingest_error_logs"), get(uploads::error_logs))
        .route(&format!("{dataset}/get_upload_url"), get(uploads::upload_url).post(uploads::refuse_v2_upload_url))
        .route(&format!("{dataset}/inferences"), post(uploads::commit_inferences))
        .route(&format!("{dataset}/inferences/{{set}}/is_processed"), get(inference_is_processed))
        .route(&format!("{dataset}/inferences/{{set}}/process_state"), get(inference_process_state))
        .route(&format!("{dataset}/inferences/{{set}}/ingest_error_logs"), get(uploads::error_logs_of_set))
        .route(&format!("{dataset}/frame_ids/LATEST"), get(frame_ids))
        .route(&format!("{dataset}/frame/{{frame}}/LATEST"), get(frame))
        .route(&format!("{dataset}/frames/LATEST"), post(frames))
        .route(
            "/streaming/projects/{project}/datasets/{dataset}/upload_version/{version}/windows",
            get(uploads::windows),
        )
        .route("/datasets/verify_urls", post(verify_urls))
        .route("/joined_filtered_table", get(metrics::joined_table))
        .route("/projects/{project}/datasets/get_scenario_metrics", post(metrics::scenario_metrics))
        .route("/uploads/{session}", post(uploads::initiate).put(uploads::put_chunk))
        .merge(segments::router())
        // Routes, not a fallback: the API's own `/api/{*rest}` would otherwise answer first.
        .route("/", any(not_served))
        .route("/{*rest}", any(not_served));
    Router::new().nest(PREFIX, routes)
}

// ---------------------------------------------------------------------------------------------
// Errors and credentials

/// An error as the client shows it: `{"message": ...}` (plus milkglass's own error body).
pub struct AqError(ApiError);

impl<E: Into<ApiError>> From<E> for AqError {
    fn from(e: E) -> Self {
        AqError(e.into())
    }
}

impl IntoResponse for AqError {
    fn into_response(self) -> Response {
        let e = self.0;
        let message = match &e.field {
            Some(field) if !field.is_empty() => format!("{field}: {}", e.message),
            _ => e.message.clone(),
        };
        let mut error = json!({ "code": e.code, "message": e.message });
        if let Some(field) = &e.field {
            error["field"] = field.clone().into();
        }
        if let Some(details) = &e.details {
            error["details"] = details.clone();
        }
        (e.status, Json(json!({ "message": message, "error": error }))).into_response()
    }
}

pub type AqResult<T> = Result<T, AqError>;

fn invalid(field: &str, message: impl Into<String>) -> AqError {
    AqError(ApiError::invalid(field, message))
}

/// A JSON body read as milkglass's own routes read theirs (`JsonBody`: the JSON size limit,
/// the content type, the field at fault), its errors in the client's shape.
pub struct AqBody<T = Map<String, Value>>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AqBody<T> {
    type Rejection = AqError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AqError> {
        Ok(AqBody(JsonBody::<T>::from_request(req, state).await?.0))
    }
}

/// A JSON body that lists items by the thousand (frame ids, segment elements, URLs), bounded
/// as milkglass's own bulk bodies are (`BulkJsonBody`).
pub struct AqBulkBody<T = Map<String, Value>>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AqBulkBody<T> {
    type Rejection = AqError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, AqError> {
        Ok(AqBulkBody(BulkJsonBody::<T>::from_request(req, state).await?.0))
    }
}

/// The string field `key` of a body.
fn required_str<'a>(body: &'a Map<String, Value>, key: &str) -> AqResult<&'a str> {
    body.get(key).and_then(Value::as_str).ok_or_else(|| invalid(key, "must be a string"))
}

/// The object field `key` of a body, when given (`null` is not given).
fn optional_object(body: &Map<String, Value>, key: &str) -> AqResult<Option<Map<String, Value>>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(invalid(key, "must be an object")),
    }
}

/// The object field `key` of a body, which must be given.
fn required_object(body: &Map<String, Value>, key: &str) -> AqResult<Map<String, Value>> {
    optional_object(body, key)?.ok_or_else(|| invalid(key, "must be an object"))
}

/// Every route the client may call that milkglass does not serve answers 501 with a message
/// the client raises (a 404 would be retried for 14 seconds first).
async fn not_served(request: axum::extract::Request) -> AqError {
    AqError(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_served",
        format!(
            "milkglass does not serve {} {} of Aquarium's API; docs/AQUARIUM.md lists what it serves",
            request.method(),
            request.uri().path()
        ),
    ))
}

/// The caller, by any of the client's credential forms: `x-illume-api-key` (a milkglass
/// token as the API key), `Authorization: Bearer`, or the app pair's `x-illume-key`.
pub struct AqCaller(pub User);

impl FromRequestParts<AppState> for AqCaller {
    type Rejection = AqError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AqError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let bearer = header("authorization").and_then(|h| h.strip_prefix("Bearer ").or(h.strip_prefix("bearer ")));
        let token = header("x-illume-api-key").or(bearer).or(header("x-illume-key")).ok_or_else(|| {
            AqError(ApiError::unauthorized(
                "no credentials: pass a milkglass token as the API key (al.Client().set_credentials(api_key=...))",
            ))
        })?;
        let (services, token) = (state.services.clone(), token.to_string());
        let attempt = crate::auth::http_attempt(parts);
        Ok(AqCaller(blocking(move || services.authenticate(&token, &attempt)).await?))
    }
}

/// The scheme and host the client reached this server by, for the URLs it is handed.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}")
}

/// Names the client uses for an inference set among datasets: `inferences_{dataset}_{set}`.
fn inference_set_id(dataset: &str, set: &str) -> String {
    format!("inferences_{dataset}_{set}")
}

// ---------------------------------------------------------------------------------------------
// Projects

/// One class of Aquarium's class map; the core keeps id, name, colour, train name and
/// category, the project metadata the rest.
fn class_from_aquarium(entry: &Value, field: &str) -> Result<ClassEntry, AqError> {
    let map = entry.as_object().ok_or_else(|| invalid(field, "must be an object"))?;
    let name =
        map.get("name").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{field}.name"), "must be a string"))?;
    let id = map.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
    let id = id.ok_or_else(|| invalid(&format!("{field}.id"), "must be a whole number"))?;
    let color = match map.get("color") {
        Some(Value::Array(c)) if c.len() == 3 || c.len() == 4 => {
            let mut rgb = [0u8; 3];
            for (i, slot) in rgb.iter_mut().enumerate() {
                *slot = c[i]
                    .as_u64()
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or_else(|| invalid(&format!("{field}.color[{i}]"), "must be 0 to 255"))?;
            }
            rgb
        }
        None | Some(Value::Null) => [128, 128, 128],
        Some(_) => return Err(invalid(&format!("{field}.color"), "must be 3 or 4 numbers from 0 to 255")),
    };
    let other = |key: &str| map.get(key).and_then(Value::as_str).filter(|v| *v != name).map(str::to_string);
    Ok(ClassEntry { id, name: name.to_string(), color, train_name: other("train_name"), category: other("category") })
}

/// Aquarium's class map entry for a class, from the core's entry and what was kept of the
/// client's (by id).
fn class_to_aquarium(class: &ClassEntry, kept: Option<&Value>) -> Value {
    let mut entry = kept.and_then(Value::as_object).cloned().unwrap_or_default();
    let train_name = class.train_name.clone().unwrap_or_else(|| class.name.clone());
    entry.insert("name".into(), class.name.clone().into());
    entry.insert("id".into(), class.id.into());
    entry.insert("color".into(), json!(class.color));
    entry.insert("train_name".into(), train_name.into());
    entry.entry("train_id").or_insert(class.id.into());
    entry.insert("category".into(), class.category.clone().unwrap_or_else(|| class.name.clone()).into());
    entry.entry("category_id").or_insert(class.id.into());
    entry.entry("has_instances").or_insert(true.into());
    entry.entry("ignore_in_eval").or_insert(false.into());
    entry.entry("train_color").or_insert(json!(class.color));
    entry.entry("keypoint_names").or_insert(Value::Null);
    entry.entry("skeleton").or_insert(Value::Null);
    Value::Object(entry)
}

fn project_to_aquarium(project: &milkglass_service::ProjectInfo) -> Value {
    let kept = project.metadata.get(AQUARIUM_KEY).cloned().unwrap_or_else(|| json!({}));
    let classes = kept.get("label_class_map").and_then(Value::as_array).cloned().unwrap_or_default();
    let by_id = |id: u32| classes.iter().find(|c| c.get("id").and_then(Value::as_u64) == Some(u64::from(id)));
    let class_map: Vec<Value> = project.classes.0.iter().map(|c| class_to_aquarium(c, by_id(c.id))).collect();
    let mut answer = kept.as_object().cloned().unwrap_or_default();
    answer.insert("id".into(), project.name.clone().into());
    answer.insert("label_class_map".into(), class_map.into());
    answer.entry("primary_task").or_insert(Value::Null);
    let external: Map<String, Value> =
        project.metadata.iter().filter(|(k, _)| *k != AQUARIUM_KEY).map(|(k, v)| (k.clone(), v.clone())).collect();
    answer.insert("external_metadata".into(), external.into());
    answer.insert("milkglass_access_mode".into(), json!(project.access_mode));
    answer.insert("created_at".into(), project.created_at.clone().into());
    Value::Object(answer)
}

async fn list_projects(State(state): State<AppState>, AqCaller(user): AqCaller) -> AqResult<Json<Value>> {
    let projects = blocking(move || datasets::list_projects(&state.services, &user)).await?;
    Ok(Json(projects.iter().map(project_to_aquarium).collect()))
}

async fn get_project(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
) -> AqResult<Json<Value>> {
    let project = blocking(move || datasets::project(&state.services, &user, &project)).await?;
    Ok(Json(project_to_aquarium(&project)))
}

/// Project fields milkglass keeps for the client (in the project's `aquarium` metadata) without
/// acting on them: they steer Aquarium's web app, which milkglass's replaces.
const KEPT_PROJECT_FIELDS: [&str; 9] = [
    "primary_task",
    "binary_classification_negative_class",
    "frame_links",
    "label_links",
    "default_camera_position",
    "default_camera_target",
    "max_shown_categories",
    "include_no_gt",
    "confidence_threshold",
];

async fn create_project(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    AqBody(body): AqBody,
) -> AqResult<StatusCode> {
    let name = required_str(&body, "project_id")?;
    let mut kept = Map::new();
    for (key, value) in &body {
        match key.as_str() {
            "project_id" | "external_metadata" => {}
            "label_class_map" => {
                kept.insert(key.clone(), value.clone());
            }
            "iou_threshold" => {
                kept.insert(key.clone(), value.clone());
            }
            "secondary_labels" | "custom_metrics" | "stratified_metrics"
                if value.as_array().is_some_and(|l| !l.is_empty()) =>
            {
                return Err(invalid(key, "is not served by milkglass; create the project without it"));
            }
            "secondary_labels" | "custom_metrics" | "stratified_metrics" => {}
            key if KEPT_PROJECT_FIELDS.contains(&key) => {
                kept.insert(key.to_string(), value.clone());
            }
            other => return Err(invalid(other, "is not a project field milkglass knows")),
        }
    }
    let entries = body.get("label_class_map").and_then(Value::as_array).cloned().unwrap_or_default();
    let classes = entries
        .iter()
        .enumerate()
        .map(|(i, c)| class_from_aquarium(c, &format!("label_class_map[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut metadata = optional_object(&body, "external_metadata")?.unwrap_or_default();
    metadata.insert(AQUARIUM_KEY.into(), Value::Object(kept));
    // Hosted: the frames' own URLs load in the browser as in a public project, and the
    // client's asset uploads (upload_asset_from_filepath) have a store to go to.
    let spec =
        ProjectSpec { name: name.to_string(), classes: ClassMap(classes), access_mode: AccessMode::Hosted, metadata };
    spec.validate().map_err(ServiceError::from)?;
    blocking(move || datasets::create_project(&state.services, &user, &spec)).await?;
    Ok(StatusCode::OK)
}

async fn delete_project(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
) -> AqResult<StatusCode> {
    datasets::delete_project(&state.services, &user, &project).await?;
    Ok(StatusCode::OK)
}

async fn set_project_metadata(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
    AqBody(body): AqBody,
) -> AqResult<StatusCode> {
    let external = required_object(&body, "external_metadata")?;
    blocking(move || {
        let current = datasets::project(&state.services, &user, &project)?;
        let mut metadata = external;
        if let Some(kept) = current.metadata.get(AQUARIUM_KEY) {
            metadata.insert(AQUARIUM_KEY.into(), kept.clone());
        }
        let patch = ProjectPatch { classes: None, metadata: Some(metadata) };
        datasets::update_project(&state.services, &user, &project, &patch)
    })
    .await?;
    Ok(StatusCode::OK)
}

/// Recolours classes (the only change Aquarium's client sends: class maps only grow).
async fn patch_class_map(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
    AqBody(body): AqBody,
) -> AqResult<StatusCode> {
    let entries = body.get("label_class_map").and_then(Value::as_array).cloned().unwrap_or_default();
    blocking(move || {
        let current = datasets::project(&state.services, &user, &project)?;
        let mut classes = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let field = format!("label_class_map[{i}]");
            let id = entry.get("id").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
            let class = id.and_then(|id| current.classes.by_id(id)).ok_or_else(|| {
                ServiceError::invalid(format!("{field}.id"), "names no class of the project (class maps only grow)")
            })?;
            let mut class = class.clone();
            if let Some(color) = entry.get("color") {
                let mut with_name = json!({ "id": class.id, "name": class.name, "color": color });
                if let Some(obj) = with_name.as_object_mut() {
                    obj.retain(|_, v| !v.is_null());
                }
                class.color = class_from_aquarium(&with_name, &field).map_err(to_service)?.color;
            }
            classes.push(class);
        }
        let patch = ProjectPatch { classes: Some(ClassMap(classes)), metadata: None };
        datasets::update_project(&state.services, &user, &project, &patch)
    })
    .await?;
    Ok(StatusCode::OK)
}

/// An adapter-side refusal (always of the input) carried through a service closure.
fn to_service(e: AqError) -> ServiceError {
    ServiceError::invalid(e.0.field.unwrap_or_default(), e.0.message)
}

// ---------------------------------------------------------------------------------------------
// Datasets

/// The datasets of a project, and each inference set as the client lists it among them.
async fn list_datasets(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
) -> AqResult<Json<Value>> {
    let listing = blocking(move || {
        let services = &state.services;
        let mut out = Vec::new();
        for dataset in datasets::list_datasets(services, &user, &project)? {
            let sets = datasets::list_inference_sets(services, &user, &project, &dataset.name)?;
            out.push(dataset_to_aquarium(&dataset));
            for set in sets {
                out.push(json!({
                    "id": inference_set_id(&dataset.name, &set.name),
                    "base_dataset": dataset.name,
                    "inference_set": set.name,
                    "is_streaming": true,
                    "ingest_agg_windows": [],
                    // The metrics manager's precondition; milkglass computes metrics when asked.
                    "bbox_metrics_metadata": { "metrics_type": "precomputed_v4", "metrics_table": "milkglass" },
                    "external_metadata": set.metadata,
                    "created_at": set.created_at,
                }));
            }
        }
        Ok(out)
    })
    .await?;
    Ok(Json(listing.into()))
}

fn dataset_to_aquarium(dataset: &milkglass_service::DatasetInfo) -> Value {
    json!({
        "id": dataset.name,
        "is_streaming": true,
        "is_unlabeled_indexed_dataset": false,
        "ingest_agg_windows": [],
        "external_metadata": dataset.metadata,
        "frame_embedding_dim": dataset.frame_embedding_dim,
        "crop_embedding_dim": dataset.label_embedding_dim,
        "version": dataset.version,
        "created_at": dataset.created_at,
    })
}

async fn get_dataset(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
) -> AqResult<Json<Value>> {
    let dataset = blocking(move || datasets::dataset(&state.services, &user, &project, &dataset)).await?;
    Ok(Json(dataset_to_aquarium(&dataset)))
}

async fn delete_dataset(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
) -> AqResult<StatusCode> {
    blocking(move || datasets::delete_dataset(&state.services, &user, &project, &dataset)).await?;
    Ok(StatusCode::OK)
}

/// `update_inferences_metadata` (the name is `inferences_{dataset}_{set}`), or a dataset's.
async fn set_dataset_metadata(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, name)): Path<(String, String)>,
    AqBody(body): AqBody,
) -> AqResult<StatusCode> {
    let patch = milkglass_service::DatasetPatch { metadata: Some(required_object(&body, "external_metadata")?) };
    blocking(move || {
        let services = &state.services;
        let target = match split_inference_set_id(services, &user, &project, &name)? {
            Some(found) => Some(found),
            None => inference_set_by_name(services, &user, &project, &name)?,
        };
        match target {
            Some((dataset, set)) => {
                datasets::update_inference_set(services, &user, &project, &dataset, &set, &patch).map(|_| ())
            }
            None => datasets::update_dataset(services, &user, &project, &name, &patch).map(|_| ()),
        }
    })
    .await?;
    Ok(StatusCode::OK)
}

/// The one inference set of the project called `name`, when no dataset is (the client passes
/// the name as the user gave it, with or without the `inferences_{dataset}_` prefix).
fn inference_set_by_name(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
) -> Result<Option<(String, String)>, ServiceError> {
    let all = datasets::list_datasets(services, user, project)?;
    if all.iter().any(|d| d.name == name) {
        return Ok(None);
    }
    let mut found = Vec::new();
    for dataset in &all {
        if datasets::list_inference_sets(services, user, project, &dataset.name)?.iter().any(|s| s.name == name) {
            found.push((dataset.name.clone(), name.to_string()));
        }
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        _ => Err(ServiceError::invalid(
            "inferences_name",
            format!("several datasets have an inference set {name:?}: name it inferences_<dataset>_{name}"),
        )),
    }
}

/// milkglass archives nothing: a dataset is there or not, and a new name is never archived.
async fn is_archived(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, _dataset)): Path<(String, String)>,
) -> AqResult<Json<Value>> {
    blocking(move || datasets::project(&state.services, &user, &project)).await?;
    Ok(Json(json!({ "archived": false })))
}

/// The dataset and inference set of a name the client gives an inference set
/// (`inferences_{dataset}_{set}`), or `None` when the name is a dataset's.
fn split_inference_set_id(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
) -> Result<Option<(String, String)>, ServiceError> {
    let all = datasets::list_datasets(services, user, project)?;
    if all.iter().any(|d| d.name == name) {
        return Ok(None);
    }
    Ok(all.iter().find_map(|d| {
        let set = name.strip_prefix("inferences_")?.strip_prefix(d.name.as_str())?.strip_prefix('_')?;
        Some((d.name.clone(), set.to_string()))
    }))
}

/// Commits are processed before their POST answers, so a dataset with a version is processed.
fn processed(services: &Services, user: &User, project: &str, dataset: &str) -> Result<bool, ServiceError> {
    match datasets::dataset(services, user, project, dataset) {
        Ok(info) => Ok(info.version > 0),
        Err(e) if e.kind == milkglass_service::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

async fn is_processed(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
) -> AqResult<Json<Value>> {
    let done = blocking(move || processed(&state.services, &user, &project, &dataset)).await?;
    Ok(Json(json!({ "processed": done })))
}

async fn process_state(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
) -> AqResult<Json<Value>> {
    let done = blocking(move || processed(&state.services, &user, &project, &dataset)).await?;
    Ok(Json(state_answer(done)))
}

fn state_answer(done: bool) -> Value {
    if done {
        json!({ "current_state": "DONE", "percent_done": 100.0 })
    } else {
        json!({ "current_state": "NOT_STARTED", "percent_done": 0.0 })
    }
}

async fn inference_is_processed(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset, set)): Path<(String, String, String)>,
) -> AqResult<Json<Value>> {
    let done =
        blocking(move || Ok(datasets::inference_set(&state.services, &user, &project, &dataset, &set).is_ok())).await?;
    Ok(Json(json!({ "processed": done })))
}

async fn inference_process_state(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset, set)): Path<(String, String, String)>,
) -> AqResult<Json<Value>> {
    let done =
        blocking(move || Ok(datasets::inference_set(&state.services, &user, &project, &dataset, &set).is_ok())).await?;
    Ok(Json(state_answer(done)))
}

// ---------------------------------------------------------------------------------------------
// Reading frames back

async fn frame_ids(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
) -> AqResult<Json<Vec<String>>> {
    let ids = blocking(move || {
        let mut ids = Vec::new();
        let mut filter = FrameFilter { limit: MAX_PAGE, ..FrameFilter::default() };
        loop {
            let page = datasets::list_frames(&state.services, &user, &project, &dataset, &filter)?;
            ids.extend(page.frames.into_iter().map(|f| f.frame_id));
            match page.next {
                Some(next) => filter.after = Some(next),
                None => return Ok(ids),
            }
        }
    })
    .await?;
    Ok(Json(ids))
}

async fn frame(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset, frame)): Path<(String, String, String)>,
) -> AqResult<Json<Value>> {
    let stored = blocking(move || datasets::frame(&state.services, &user, &project, &dataset, &frame, None)).await?;
    Ok(Json(rows::frame_to_row(&stored.frame, &stored.labels)))
}

#[derive(serde::Deserialize)]
struct FrameIds {
    frame_ids: Vec<String>,
}

async fn frames(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
    AqBulkBody(body): AqBulkBody<FrameIds>,
) -> AqResult<Json<Value>> {
    let rows = blocking(move || {
        let mut rows = Vec::with_capacity(body.frame_ids.len());
        for chunk in body.frame_ids.chunks(MAX_PAGE) {
            let filter = FrameFilter { ids: chunk.to_vec(), labels: true, limit: MAX_PAGE, ..FrameFilter::default() };
            let page = datasets::list_frames(&state.services, &user, &project, &dataset, &filter)?;
            for frame in &page.frames {
                rows.push(rows::frame_to_row(frame, frame.labels.as_deref().unwrap_or_default()));
            }
        }
        Ok(rows)
    })
    .await?;
    Ok(Json(rows.into()))
}

// ---------------------------------------------------------------------------------------------
// URL checks

#[derive(serde::Deserialize)]
struct Urls {
    urls: Vec<String>,
}

/// The client asks, before its first frame, whether the server can load the data URLs; its
/// answer decides anonymous mode. milkglass answers from its fetcher's rules alone and loads
/// nothing: the request names no project, and an anonymous project's URLs are never loaded.
async fn verify_urls(
    State(state): State<AppState>,
    AqCaller(_user): AqCaller,
    AqBulkBody(body): AqBulkBody<Urls>,
) -> AqResult<Json<Value>> {
    if body.urls.len() > 10_000 {
        return Err(invalid("urls", "give at most 10000 URLs"));
    }
    let verdicts = milkglass_service::raw::url_check::offline_verdicts(&state.services, &body.urls);
    let answer: Map<String, Value> = body
        .urls
        .into_iter()
        .zip(verdicts)
        .map(|(url, verdict)| {
            use milkglass_service::raw::url_check::Category;
            let word = match verdict {
                Category::Reachable => "SUCCESS",
                Category::BucketPath => "S3_PATH",
                // Not INVALID_URL: the client raises on it, and text sensors send their text here.
                Category::BrowserOnly | Category::Invalid | Category::NotChecked => "FAILURE",
            };
            (url, word.into())
        })
        .collect();
    Ok(Json(Value::Object(answer)))
}
