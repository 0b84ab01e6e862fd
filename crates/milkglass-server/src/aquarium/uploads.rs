//! The client's uploads and commits.
//!
//! The client first uploads files, then commits them: `get_upload_url` hands it a URL per file,
//! which it fills with Google's resumable protocol (a POST that starts a session, PUTs of
//! chunks with `Content-Range`, 308 until the last), or with one plain PUT for an asset. The
//! commit (`POST .../datasets`, `POST .../inferences`) names the files by the download URLs it
//! was given. Only then are the rows read, translated (`rows`), checked, and written through
//! the same upload as milkglass's own API: every frame is checked before the first is
//! written, so a refused commit leaves the dataset as it was.
//!
//! Upload URLs carry no credentials (the client sends none on them, as with a signed GCS
//! URL): the session id in them is a 128-bit secret, handed only to an owner of the project,
//! and the commit must come from the same user and the same project (by its uid, not its name).

use super::rows::{self, RowEmbeddings, RowRules};
use super::{AqBody, AqCaller, AqError, AqResult, base_url, inference_set_id, invalid, optional_object, required_str};
use crate::error::ApiError;
use crate::extract::Path;
use crate::tables::Staging;
use crate::{AppState, blocking};
use arrow::array::{Array, AsArray, ListArray};
use arrow::datatypes::{DataType, Field, Float32Type};
use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use milkglass_core::{AccessMode, DatasetKind, DatasetSpec, Frame, Label};
use milkglass_service::ingest::{self, Format, UploadTarget};
use milkglass_service::{
    DatasetPatch, ErrorKind, FrameFilter, MAX_PAGE, ProjectRole, ServiceError, ServiceResult, Services, UploadKind,
    User, access, datasets,
};
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an upload session may wait for its commit.
const SESSION_TTL: Duration = Duration::from_secs(24 * 3600);
/// Open sessions per user: a client opens one per file of a commit (1000 frames a file).
const SESSIONS_PER_USER: usize = 10_000;
/// The scheme of the download URLs of resumable uploads, which only a commit reads.
const UPLOAD_SCHEME: &str = "milkglass-upload://";
/// Where assets go in a project's hosted store.
const ASSET_PREFIX: &str = "aquarium";

pub(crate) fn random_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// One file the client is uploading.
struct Session {
    /// The owner who asked for it, and the project by its uid: a commit by anyone else, or
    /// into a project re-created under the same name, does not see it.
    user: User,
    project_uid: String,
    project: String,
    dataset: String,
    filename: String,
    kind: SessionKind,
    expires: Instant,
}

enum SessionKind {
    /// A batch file of a commit, filled by chunks into a staging file.
    Resumable { file: Staging, total: Option<u64>, received: u64, started: bool },
    /// An asset (`upload_asset_from_filepath`), streamed into the hosted store by one PUT.
    Asset { done: bool },
}

type Shared = Arc<tokio::sync::Mutex<Session>>;

/// The open upload sessions and the answers of finished commits. In memory: a restart
/// loses unfinished uploads, which the client then reports as failed.
#[derive(Default)]
pub struct Uploads {
    sessions: Mutex<HashMap<String, Shared>>,
    /// The upload versions committed, by (project uid, the dataset as the client names it,
    /// upload version), for the client's polls (`windows`).
    commits: Mutex<HashSet<(String, String, String)>>,
}

impl Uploads {
    fn open(&self, session: Session) -> ServiceResult<String> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.try_lock().map(|s| s.expires > now).unwrap_or(true));
        let mine = sessions.values().filter(|s| s.try_lock().is_ok_and(|s| s.user.id == session.user.id)).count();
        if mine >= SESSIONS_PER_USER {
            return Err(ServiceError::new(
                ErrorKind::TooLarge,
                "too_many_uploads",
                format!("{SESSIONS_PER_USER} uploads are open for you: commit or wait a day for them to expire"),
            ));
        }
        let id = random_token();
        sessions.insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
        Ok(id)
    }

    fn get(&self, id: &str) -> Option<Shared> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(id).cloned()
    }

    fn take(&self, id: &str) -> Option<Shared> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
    }

    fn record(&self, key: (String, String, String)) {
        let mut commits = self.commits.lock().unwrap_or_else(|e| e.into_inner());
        if commits.len() > 100_000 {
            // Forgetting old versions is harmless: `windows` then answers from the dataset.
            commits.clear();
        }
        commits.insert(key);
    }

    fn committed(&self, key: &(String, String, String)) -> bool {
        self.commits.lock().unwrap_or_else(|e| e.into_inner()).contains(key)
    }
}

// ---------------------------------------------------------------------------------------------
// Upload URLs and the resumable protocol

#[derive(serde::Deserialize)]
pub struct UploadUrlQuery {
    upload_filename: String,
    #[serde(default)]
    resumable_upload: Option<String>,
}

/// `GET .../get_upload_url`: a URL to upload one file to (owners only, as any upload).
pub async fn upload_url(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
    Query(query): Query<UploadUrlQuery>,
    headers: HeaderMap,
) -> AqResult<Json<Value>> {
    let name = query.upload_filename.clone();
    if name.is_empty() || name.len() > 200 || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(invalid(
            "upload_filename",
            "must be a plain file name (no slashes, not hidden, at most 200 bytes)",
        ));
    }
    let resumable = query.resumable_upload.as_deref() == Some("true");
    let services = state.services.clone();
    let (info, path) = blocking(move || {
        let info = access::project(&services.store, &user, &project, ProjectRole::Owner)?;
        let path = if resumable { Some(Staging::new(&services)?) } else { None };
        Ok(((info, user, dataset), path))
    })
    .await?;
    let ((project, user, dataset), path) = (info, path);
    let kind = match path {
        Some(file) => SessionKind::Resumable { file, total: None, received: 0, started: false },
        None if project.access_mode != AccessMode::Hosted => {
            return Err(AqError(ApiError::from(ServiceError::new(
                ErrorKind::Conflict,
                "not_hosted",
                format!(
                    "project {:?} is {}: assets are uploaded only into hosted projects (give the frames URLs \
                     the browser can load instead)",
                    project.name, project.access_mode
                ),
            ))));
        }
        None => SessionKind::Asset { done: false },
    };
    let download_url = match &kind {
        SessionKind::Resumable { .. } => None,
        SessionKind::Asset { .. } => Some(format!("hosted:{ASSET_PREFIX}/{dataset}/{name}")),
    };
    let session = Session {
        user: user.clone(),
        project_uid: project.uid.clone(),
        project: project.name.clone(),
        dataset,
        filename: name.clone(),
        kind,
        expires: Instant::now() + SESSION_TTL,
    };
    let id = state.aquarium.uploads.open(session)?;
    let download_url = download_url.unwrap_or_else(|| format!("{UPLOAD_SCHEME}{id}/{name}"));
    Ok(Json(json!({
        "put_url": format!("{}{}/uploads/{id}", base_url(&headers), super::PREFIX),
        "download_url": download_url,
    })))
}

/// `POST .../get_upload_url` is how the client asks for unlabeled_v2 uploads, which milkglass
/// does not serve.
pub async fn refuse_v2_upload_url(AqCaller(_user): AqCaller) -> AqError {
    AqError(ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "not_served",
        "unlabeled_v2 datasets (experimental_streamingv2) are not served by milkglass: upload an \
         UnlabeledDataset with create_or_update_unlabeled_dataset",
    ))
}

/// 410, not 404: the client retries a 404 for seconds before it gives up.
fn no_session() -> AqError {
    AqError(ApiError::new(
        StatusCode::GONE,
        "upload_gone",
        "no such upload session: it was committed, expired (after a day) or never opened; ask for a new upload URL",
    ))
}

/// The resumable protocol's first request: records the file's length and answers with the
/// URL to send chunks to.
pub async fn initiate(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> AqResult<Response> {
    let session = state.aquarium.uploads.get(&id).ok_or_else(no_session)?;
    let mut session = session.lock().await;
    let limit = state.services.config.max_upload_bytes;
    let declared = match headers.get("x-upload-content-length") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| invalid("x-upload-content-length", "must be the file's length in bytes"))?,
        ),
    };
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let SessionKind::Resumable { file, total, received, started } = &mut session.kind else {
        return Err(invalid("upload", "this upload URL takes one plain PUT of the file"));
    };
    std::fs::File::create(&file.0).map_err(|e| ServiceError::internal(format!("staging an upload: {e}")))?;
    (*total, *received, *started) = (declared, 0, true);
    let location = format!("{}{}/uploads/{id}", base_url(&headers), super::PREFIX);
    let mut response = StatusCode::OK.into_response();
    response.headers_mut().insert(header::LOCATION, header_value(&location)?);
    Ok(response)
}

fn header_value(text: &str) -> AqResult<HeaderValue> {
    HeaderValue::from_str(text).map_err(|_| invalid("host", "is not a valid header value"))
}

fn too_large(limit: u64) -> AqError {
    AqError(ApiError::from(ServiceError::new(
        ErrorKind::TooLarge,
        "too_large",
        format!("a file may have at most {limit} bytes (the server's --max-upload-bytes)"),
    )))
}

/// A chunk of a resumable upload (`Content-Range: bytes S-E/T`), a status query
/// (`bytes */*`), or an asset's single PUT.
pub async fn put_chunk(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> AqResult<Response> {
    let shared = state.aquarium.uploads.get(&id).ok_or_else(no_session)?;
    let mut session = shared.lock().await;
    let limit = state.services.config.max_upload_bytes;
    let (project, dataset, filename) = (session.project.clone(), session.dataset.clone(), session.filename.clone());
    let asker = session.user.clone();
    match &mut session.kind {
        SessionKind::Asset { done } => {
            if *done {
                return Err(invalid("upload", "this asset was already uploaded; ask for a new upload URL"));
            }
            // The asker as they are now: a user revoked since (or re-created under the name) may not.
            let user = blocking({
                let services = state.services.clone();
                move || {
                    let now = services.store.user_by_name(&asker.name).map_err(ServiceError::from);
                    now.ok().filter(|u| u.id == asker.id).ok_or_else(|| {
                        ServiceError::new(
                            ErrorKind::Forbidden,
                            "forbidden",
                            "the user who asked for this upload URL is gone",
                        )
                    })
                }
            })
            .await?;
            let key = format!("{ASSET_PREFIX}/{dataset}/{filename}");
            let stream = body.into_data_stream();
            let stored =
                milkglass_service::raw::signer::upload_hosted(&state.services, &user, &project, &key, stream).await?;
            *done = true;
            Ok(Json(json!({ "download_url": stored.url, "size": stored.bytes })).into_response())
        }
        SessionKind::Resumable { file, total, received, started } => {
            if !*started {
                return Err(invalid("upload", "start the upload with a POST first"));
            }
            let range = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
            let range = parse_content_range(range)?;
            if let Some(t) = range.total {
                if t > limit {
                    return Err(too_large(limit));
                }
                if total.is_some_and(|declared| declared != t) {
                    return Err(invalid("content-range", "the total differs from the length the upload began with"));
                }
                *total = Some(t);
            }
            let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
                .await
                .map_err(|_| too_large(limit))?;
            match range.span {
                None if !bytes.is_empty() => {
                    return Err(invalid("content-range", "a status query (bytes */...) carries no body"));
                }
                None => {}
                Some((start, end)) => {
                    if start != *received {
                        return Err(invalid(
                            "content-range",
                            format!("the chunk starts at byte {start}, but {} bytes have arrived", *received),
                        ));
                    }
                    if end + 1 - start != bytes.len() as u64 {
                        return Err(invalid(
                            "content-range",
                            format!("names {} bytes, the body has {}", end + 1 - start, bytes.len()),
                        ));
                    }
                    if total.is_some_and(|t| end >= t) || end >= limit {
                        return Err(invalid("content-range", "the chunk ends past the file's length"));
                    }
                    let path = file.0.clone();
                    blocking(move || {
                        std::fs::OpenOptions::new()
                            .append(true)
                            .open(&path)
                            .and_then(|mut file| file.write_all(&bytes))
                            .map_err(|e| ServiceError::internal(format!("staging an upload: {e}")))
                    })
                    .await?;
                    *received = end + 1;
                }
            }
            if total.is_some_and(|t| t == *received) {
                return Ok((StatusCode::OK, Json(json!({ "size": *received }))).into_response());
            }
            let mut response = StatusCode::PERMANENT_REDIRECT.into_response();
            if *received > 0 {
                response.headers_mut().insert(header::RANGE, header_value(&format!("bytes=0-{}", *received - 1))?);
            }
            Ok(response)
        }
    }
}

struct ContentRange {
    /// First and last byte of the chunk; `None` for `bytes */T`.
    span: Option<(u64, u64)>,
    total: Option<u64>,
}

fn parse_content_range(text: &str) -> AqResult<ContentRange> {
    let bad = || invalid("content-range", format!("{text:?} is not bytes S-E/T, bytes S-E/* or bytes */T"));
    let rest = text.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (span, total) = rest.split_once('/').ok_or_else(bad)?;
    let total = match total {
        "*" => None,
        t => Some(t.parse::<u64>().map_err(|_| bad())?),
    };
    let span = match span {
        "*" => None,
        s => {
            let (a, b) = s.split_once('-').ok_or_else(bad)?;
            let (a, b) = (a.parse::<u64>().map_err(|_| bad())?, b.parse::<u64>().map_err(|_| bad())?);
            if b < a {
                return Err(bad());
            }
            Some((a, b))
        }
    };
    Ok(ContentRange { span, total })
}

// ---------------------------------------------------------------------------------------------
// Commits

/// The payload keys of a commit that milkglass reads, and those it takes as information only
/// (counts and samples the client computed; model names).
const INFORMATIONAL: [&str; 13] = [
    "embedding_upload_version",
    "pipeline_mode",
    "frame_model_version",
    "crop_model_version",
    "sample_frame_embeddings",
    "sample_crop_embeddings",
    "total_num_frames",
    "total_num_crops",
    "streaming_version",
    "frame_url_counts",
    "crop_url_counts",
    "queue_after_dataset",
    "reuse_embeddings",
];

fn check_keys(body: &Map<String, Value>, read: &[&str]) -> AqResult<()> {
    for key in body.keys() {
        if !read.contains(&key.as_str()) && !INFORMATIONAL.contains(&key.as_str()) {
            return Err(invalid(key, "is not a commit field milkglass knows; leave it out"));
        }
    }
    if body.get("reuse_embeddings").and_then(Value::as_bool) == Some(true) {
        return Err(invalid("reuse_embeddings", "reusing earlier embeddings is not served: send them again"));
    }
    match body.get("embedding_distance_metric").and_then(Value::as_str) {
        None | Some("cosine") => Ok(()),
        Some(other) => Err(invalid(
            "embedding_distance_metric",
            format!("{other:?} is not served: milkglass compares embeddings by cosine distance"),
        )),
    }
}

/// A dimension the client sends: -1 (or absent) when it made up placeholder embeddings.
fn dimension(body: &Map<String, Value>, key: &str) -> AqResult<Option<usize>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n <= 0 => Ok(None),
            Some(n) => Ok(Some(usize::try_from(n).map_err(|_| invalid(key, "is too large"))?)),
            None => Err(invalid(key, "must be a whole number")),
        },
    }
}

fn url_list(value: Option<&Value>, field: &str) -> AqResult<Vec<String>> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_string).ok_or_else(|| invalid(&format!("{field}[{i}]"), "must be a URL"))
            })
            .collect(),
        Some(_) => Err(invalid(field, "must be a list of download URLs")),
    }
}

/// The staging files of a commit's uploads, taken out of the registry (a file is committed
/// once). Each must be complete and uploaded by this user into this project.
struct Files {
    sessions: Vec<(String, tokio::sync::OwnedMutexGuard<Session>)>,
}

impl Files {
    fn path(&self, i: usize) -> PathBuf {
        match &self.sessions[i].1.kind {
            SessionKind::Resumable { file, .. } => file.0.clone(),
            SessionKind::Asset { .. } => unreachable!("only resumable sessions are taken"),
        }
    }
}

fn take_files(
    uploads: &Uploads,
    user: &User,
    project: &milkglass_service::ProjectInfo,
    dataset: &str,
    urls: &[(String, String)],
) -> ServiceResult<Files> {
    let mut sessions = Vec::new();
    for (field, url) in urls {
        let unknown = || {
            ServiceError::invalid(
                field.clone(),
                format!("{url:?} is not a file uploaded to this server for this commit (get_upload_url gives them)"),
            )
        };
        let (id, _name) = url.strip_prefix(UPLOAD_SCHEME).and_then(|rest| rest.split_once('/')).ok_or_else(unknown)?;
        let shared = uploads.get(id).ok_or_else(unknown)?;
        let session = shared.try_lock_owned().map_err(|_| {
            ServiceError::new(
                ErrorKind::Conflict,
                "upload_busy",
                format!("{field}: the upload is still receiving a chunk"),
            )
        })?;
        if session.user.id != user.id || session.project_uid != project.uid || session.dataset != dataset {
            return Err(unknown());
        }
        match &session.kind {
            SessionKind::Resumable { total: Some(total), received, .. } if total == received => {}
            SessionKind::Resumable { total, received, .. } => {
                let of = total.map(|t| format!(" of {t}")).unwrap_or_default();
                return Err(ServiceError::invalid(
                    field.clone(),
                    format!(
                        "the upload of {} is incomplete: {received}{of} bytes arrived; upload it again",
                        session.filename
                    ),
                ));
            }
            SessionKind::Asset { .. } => return Err(unknown()),
        }
        sessions.push((id.to_string(), session));
    }
    for (id, _) in &sessions {
        uploads.take(id);
    }
    Ok(Files { sessions })
}

/// Reads the embeddings of the Arrow IPC files the client writes (`frame_ids` with
/// `frame_embeddings`, and `crop_ids` with `crop_embeddings`, one list per frame), by id.
#[derive(Default)]
struct EmbeddingFiles {
    frames: HashMap<String, Vec<f32>>,
    crops: HashMap<String, Vec<f32>>,
}

impl EmbeddingFiles {
    fn read(&mut self, path: &std::path::Path, field: &str, frames: bool, crops: bool) -> ServiceResult<()> {
        let bad = |e: String| ServiceError::invalid(field, format!("not an Arrow IPC file of embeddings: {e}"));
        let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
        let mut reader =
            milkglass_service::decode_untrusted(|| arrow::ipc::reader::FileReader::try_new(BufReader::new(file), None))
                .map_err(|e| bad(e.to_string()))?;
        let vector_type = DataType::List(Arc::new(Field::new("item", DataType::Float32, true)));
        while let Some(batch) =
            milkglass_service::decode_untrusted(|| reader.next().transpose()).map_err(|e| bad(e.to_string()))?
        {
            let column = |name: &str, to: &DataType| -> ServiceResult<Option<arrow::array::ArrayRef>> {
                batch
                    .column_by_name(name)
                    .map(|c| arrow::compute::cast(c, to).map_err(|e| bad(format!("column {name}: {e}"))))
                    .transpose()
            };
            if frames
                && let (Some(ids), Some(vectors)) =
                    (column("frame_ids", &DataType::Utf8)?, column("frame_embeddings", &vector_type)?)
            {
                let (ids, vectors) = (ids.as_string::<i32>(), vectors.as_list::<i32>());
                for row in 0..batch.num_rows() {
                    if ids.is_null(row) || vectors.is_null(row) {
                        continue;
                    }
                    self.frames.insert(ids.value(row).to_string(), floats(vectors, row));
                }
            }
            let list_of = |t: DataType| DataType::List(Arc::new(Field::new("item", t, true)));
            if crops
                && let (Some(ids), Some(vectors)) = (
                    column("crop_ids", &list_of(DataType::Utf8))?,
                    column("crop_embeddings", &list_of(vector_type.clone()))?,
                )
            {
                let (ids, vectors) = (ids.as_list::<i32>(), vectors.as_list::<i32>());
                for row in 0..batch.num_rows() {
                    if ids.is_null(row) || vectors.is_null(row) {
                        continue;
                    }
                    let (row_ids, row_vectors) = (ids.value(row), vectors.value(row));
                    let (row_ids, row_vectors) = (row_ids.as_string::<i32>(), row_vectors.as_list::<i32>());
                    if row_ids.len() != row_vectors.len() {
                        return Err(ServiceError::invalid(
                            field,
                            "a frame's crop ids and crop embeddings differ in number",
                        ));
                    }
                    for i in 0..row_ids.len() {
                        if !row_ids.is_null(i) && !row_vectors.is_null(i) {
                            self.crops.insert(row_ids.value(i).to_string(), floats(row_vectors, i));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The embeddings of one frame and its crops, taken out of the maps.
    fn take(&mut self, frame_id: &str, crop_ids: &[&str]) -> RowEmbeddings {
        let crops = crop_ids.iter().filter_map(|id| self.crops.remove_entry(*id)).collect();
        RowEmbeddings { frame: self.frames.remove(frame_id), crops }
    }
}

fn floats(list: &ListArray, row: usize) -> Vec<f32> {
    let values = list.value(row);
    values.as_primitive::<Float32Type>().iter().map(|v| v.unwrap_or(f32::NAN)).collect()
}

/// The label ids a row names (`label_data`/`inference_data` entries' `uuid`), for matching
/// crop embeddings by id.
fn row_label_ids(row: &Value) -> Vec<&str> {
    ["label_data", "inference_data"]
        .iter()
        .filter_map(|key| row.get(*key).and_then(Value::as_array))
        .flatten()
        .filter_map(|l| l.get("uuid").and_then(Value::as_str))
        .collect()
}

/// A row error as the client shows it: which file, which line, which frame.
fn at_row(e: milkglass_core::Invalid, file_field: &str, line: usize, frame: Option<&str>) -> ServiceError {
    let frame = frame.map(|f| format!(" (frame {f:?})")).unwrap_or_default();
    ServiceError::invalid(e.field, format!("{file_field}, line {line}{frame}: {}", e.message))
}

fn json_line(line: &[u8], field: &str, line_no: usize) -> ServiceResult<Value> {
    serde_json::from_slice(line)
        .map_err(|e| ServiceError::invalid(field, format!("line {line_no}: not a JSON object: {e}")))
}

/// `POST /projects/{p}/datasets`: the frames of the uploaded files become the dataset's next
/// version, all or none.
pub async fn commit_dataset(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path(project): Path<String>,
    AqBody(body): AqBody,
) -> AqResult<Json<Value>> {
    check_keys(
        &body,
        &[
            "dataset_id",
            "data_url",
            "embedding_distance_metric",
            "upload_version",
            "is_anon_mode",
            "is_unlabeled_indexed_dataset",
            "frame_embedding_dim",
            "crop_embedding_dim",
            "external_metadata",
        ],
    )?;
    let dataset = required_str(&body, "dataset_id")?;
    let dataset = dataset.to_string();
    let urls =
        body.get("data_url").and_then(Value::as_object).ok_or_else(|| invalid("data_url", "must be an object"))?;
    for key in urls.keys() {
        match key.as_str() {
            "frame" | "crop" | "frame_embeddings" | "crop_embeddings" | "frame_url_counts" | "crop_url_counts" => {}
            "frame_asset_url" if url_list(urls.get(key), "data_url.frame_asset_url")?.is_empty() => {}
            "frame_asset_url" => {
                return Err(invalid(
                    "data_url.frame_asset_url",
                    "label assets (crop assets) are not served; leave them out",
                ));
            }
            other => return Err(invalid(&format!("data_url.{other}"), "is not a file list milkglass knows")),
        }
    }
    let lists = CommitFiles {
        rows: url_list(urls.get("frame"), "data_url.frame")?,
        crops: url_list(urls.get("crop"), "data_url.crop")?,
        frame_embeddings: url_list(urls.get("frame_embeddings"), "data_url.frame_embeddings")?,
        crop_embeddings: url_list(urls.get("crop_embeddings"), "data_url.crop_embeddings")?,
    };
    if !lists.crops.is_empty() && lists.crops.len() != lists.rows.len() {
        return Err(invalid("data_url.crop", "must name one file per frame file"));
    }
    let anonymous = body.get("is_anon_mode").and_then(Value::as_bool).unwrap_or(false);
    let kind = match body.get("is_unlabeled_indexed_dataset").and_then(Value::as_bool) {
        Some(true) => DatasetKind::Unlabeled,
        _ => DatasetKind::Labeled,
    };
    let frame_dim = dimension(&body, "frame_embedding_dim")?;
    let crop_dim = dimension(&body, "crop_embedding_dim")?;
    let metadata = optional_object(&body, "external_metadata")?;
    let upload_version = body.get("upload_version").and_then(Value::as_str).unwrap_or_default().to_string();
    let services = state.services.clone();
    let aquarium = state.aquarium.clone();
    let project_name = project.clone();
    let dataset_name = dataset.clone();
    let (summary, project_uid) = blocking(move || {
        let project = access::project(&services.store, &user, &project_name, ProjectRole::Owner)?;
        let files = take_files(&aquarium.uploads, &user, &project, &dataset_name, &lists.fields())?;
        let existing = match datasets::dataset(&services, &user, &project_name, &dataset_name) {
            Ok(info) => Some(info),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let dims = (
            existing.as_ref().and_then(|d| d.frame_embedding_dim).or(frame_dim),
            existing.as_ref().and_then(|d| d.label_embedding_dim).or(crop_dim),
        );
        let rules = RowRules {
            mirrors: project.access_mode == AccessMode::Mirrored,
            proposals: kind == DatasetKind::Unlabeled,
        };
        let (staged, proposals) =
            stage_frames(&services, &files, &lists, (frame_dim, crop_dim), dims, rules, &project.classes)?;
        if anonymous && project.access_mode != AccessMode::Anonymous {
            datasets::make_anonymous(&services, &user, &project_name).map_err(|e| {
                if e.kind == ErrorKind::Conflict {
                    ServiceError::new(
                        ErrorKind::Conflict,
                        "not_anonymous",
                        format!(
                            "is_anon_mode: project {project_name:?} already holds datasets that are not anonymous; \
                             put anonymous data in a new project"
                        ),
                    )
                } else {
                    e
                }
            })?;
        }
        match &existing {
            None => {
                let spec = DatasetSpec {
                    name: dataset_name.clone(),
                    kind,
                    metadata: metadata.unwrap_or_default(),
                    frame_embedding_dim: frame_dim,
                    label_embedding_dim: crop_dim,
                };
                datasets::create_dataset(&services, &user, &project_name, &spec)?;
            }
            Some(_) if metadata.is_some() => {
                datasets::update_dataset(&services, &user, &project_name, &dataset_name, &DatasetPatch { metadata })?;
            }
            Some(_) => {}
        }
        let target = UploadTarget {
            project: &project_name,
            dataset: &dataset_name,
            inference_set: None,
            kind: UploadKind::Frames,
        };
        let file = std::fs::File::open(&staged.0).map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
        let summary = ingest::upload(&services, &user, target, Format::JsonLines, file)?;
        if let Some(proposals) = proposals {
            upload_proposals(&services, &user, &project_name, &dataset_name, crop_dim, &proposals)?;
        }
        Ok((summary, project.uid))
    })
    .await?;
    milkglass_service::raw::url_check::check_after_upload(&state.services, &project, &dataset);
    state.aquarium.uploads.record((project_uid, dataset.clone(), upload_version));
    Ok(Json(json!({ "dataset_id": dataset, "milkglass": summary })))
}

/// The inference set an unlabeled dataset's proposals (its frames' inferences) are kept in.
const PROPOSALS: &str = "proposals";

/// An unlabeled dataset's proposals become the outputs of its inference set `proposals`
/// (created when new), after its frames are written.
fn upload_proposals(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    label_dim: Option<usize>,
    staged: &Staging,
) -> ServiceResult<()> {
    if datasets::inference_set(services, user, project, dataset, PROPOSALS).is_err() {
        let spec = DatasetSpec {
            name: PROPOSALS.to_string(),
            kind: DatasetKind::default(),
            metadata: Map::new(),
            frame_embedding_dim: None,
            label_embedding_dim: label_dim,
        };
        datasets::create_inference_set(services, user, project, dataset, &spec)?;
    }
    let target = UploadTarget { project, dataset, inference_set: Some(PROPOSALS), kind: UploadKind::Inferences };
    let file = std::fs::File::open(&staged.0).map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
    ingest::upload(services, user, target, Format::JsonLines, file)?;
    Ok(())
}

/// The file lists of a commit, as the client named them.
struct CommitFiles {
    rows: Vec<String>,
    crops: Vec<String>,
    frame_embeddings: Vec<String>,
    crop_embeddings: Vec<String>,
}

impl CommitFiles {
    /// Every file with the field that names it, in the order [`Files`] holds them.
    fn fields(&self) -> Vec<(String, String)> {
        let named = |list: &[String], field: &str| -> Vec<(String, String)> {
            list.iter().enumerate().map(|(i, url)| (format!("data_url.{field}[{i}]"), url.clone())).collect()
        };
        [
            named(&self.rows, "frame"),
            named(&self.crops, "crop"),
            named(&self.frame_embeddings, "frame_embeddings"),
            named(&self.crop_embeddings, "crop_embeddings"),
        ]
        .concat()
    }
}

/// Reads the commit's files, translates and checks every frame, and writes them as
/// milkglass JSON Lines into a staging file (an unlabeled dataset's proposals into a second
/// one, when there are any). Nothing is written to the dataset here.
fn stage_frames(
    services: &Services,
    files: &Files,
    lists: &CommitFiles,
    sent_dims: (Option<usize>, Option<usize>),
    dims: (Option<usize>, Option<usize>),
    rules: RowRules,
    classes: &milkglass_core::ClassMap,
) -> ServiceResult<(Staging, Option<Staging>)> {
    let (rows, crops, frame_files) = (lists.rows.len(), lists.crops.len(), lists.frame_embeddings.len());
    let mut embeddings = EmbeddingFiles::default();
    // A dimension of -1 says the client filled in placeholders ([0, 0, 0]): those are not read.
    for i in 0..frame_files {
        embeddings.read(
            &files.path(rows + crops + i),
            &format!("data_url.frame_embeddings[{i}]"),
            sent_dims.0.is_some(),
            false,
        )?;
    }
    for i in 0..lists.crop_embeddings.len() {
        let field = format!("data_url.crop_embeddings[{i}]");
        embeddings.read(&files.path(rows + crops + frame_files + i), &field, false, sent_dims.1.is_some())?;
    }
    let staged = Staging::new(services)?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&staged.0).map_err(|e| ServiceError::internal(format!("staging: {e}")))?,
    );
    let mut proposals = match rules.proposals {
        true => {
            let staged = Staging::new(services)?;
            let file = std::fs::File::create(&staged.0).map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
            Some((staged, std::io::BufWriter::new(file), 0usize))
        }
        false => None,
    };
    let (mut frame_ids, mut label_ids) = (HashSet::new(), HashSet::new());
    let mut dims = dims;
    for i in 0..rows {
        let field = format!("data_url.frame[{i}]");
        let open = |path: PathBuf| -> ServiceResult<BufReader<std::fs::File>> {
            Ok(BufReader::new(std::fs::File::open(path).map_err(|e| ServiceError::internal(format!("staging: {e}")))?))
        };
        let frame_lines = open(files.path(i))?.split(b'\n');
        let mut crop_lines = if crops > 0 { Some(open(files.path(rows + i))?.split(b'\n')) } else { None };
        let mut line_no = 0usize;
        for line in frame_lines {
            let line = line.map_err(ingest::body_read_error)?;
            line_no += 1;
            let labels_line = match crop_lines.as_mut().map(|l| l.next()) {
                Some(Some(l)) => Some(l.map_err(ingest::body_read_error)?),
                Some(None) => {
                    return Err(ServiceError::invalid(
                        format!("data_url.crop[{i}]"),
                        format!("has fewer lines than {field}: the files do not line up"),
                    ));
                }
                None => None,
            };
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let row = json_line(&line, &field, line_no)?;
            let labels_row =
                labels_line.as_deref().map(|l| json_line(l, &format!("data_url.crop[{i}]"), line_no)).transpose()?;
            let frame_id = row.get("task_id").and_then(Value::as_str).map(str::to_string);
            let wrap = |e| at_row(e, &field, line_no, frame_id.as_deref());
            let ids = labels_row.as_ref().map(row_label_ids).unwrap_or_default();
            let row_embeddings = embeddings.take(frame_id.as_deref().unwrap_or_default(), &ids);
            let mut frame: Frame =
                rows::frame_from_row(&row, labels_row.as_ref(), row_embeddings, rules, "frame").map_err(wrap)?;
            if let Some((_, out, count)) = proposals.as_mut() {
                for mut proposal in frame.labels.take().unwrap_or_default() {
                    dims.1 = dims.1.or(proposal.embedding.as_ref().map(Vec::len));
                    proposal.frame_id = Some(frame.frame_id.clone());
                    proposal.validate(classes, true, dims.1).map_err(wrap)?;
                    if !label_ids.insert(proposal.label_id.clone()) {
                        let e = milkglass_core::Invalid::new(
                            "uuid",
                            format!("proposal {:?} appears twice", proposal.label_id),
                        );
                        return Err(wrap(e));
                    }
                    serde_json::to_writer(&mut *out, &proposal)
                        .map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
                    out.write_all(b"\n").map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
                    *count += 1;
                }
            }
            dims.0 = dims.0.or(frame.embedding.as_ref().map(Vec::len));
            let first_label_dim = frame.labels.iter().flatten().find_map(|l| l.embedding.as_ref().map(Vec::len));
            dims.1 = dims.1.or(first_label_dim);
            frame.validate(classes, dims.0, dims.1).map_err(wrap)?;
            if !frame_ids.insert(frame.frame_id.clone()) {
                return Err(wrap(milkglass_core::Invalid::new("task_id", "the frame appears twice in this upload")));
            }
            for label in frame.labels.iter().flatten() {
                if !label_ids.insert(label.label_id.clone()) {
                    let e = milkglass_core::Invalid::new(
                        "label_data.uuid",
                        format!("label {:?} appears twice", label.label_id),
                    );
                    return Err(wrap(e));
                }
            }
            serde_json::to_writer(&mut out, &frame).map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
            out.write_all(b"\n").map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
        }
        if crop_lines.as_mut().is_some_and(|l| l.any(|line| line.is_ok_and(|l| !l.iter().all(u8::is_ascii_whitespace))))
        {
            return Err(ServiceError::invalid(
                format!("data_url.crop[{i}]"),
                format!("has more lines than {field}: the files do not line up"),
            ));
        }
    }
    if let Some(id) = embeddings.frames.keys().next() {
        return Err(ServiceError::invalid(
            "data_url.frame_embeddings",
            format!("an embedding for frame {id:?}, which the upload does not hold"),
        ));
    }
    if let Some(id) = embeddings.crops.keys().next() {
        return Err(ServiceError::invalid(
            "data_url.crop_embeddings",
            format!("an embedding for label {id:?}, which the upload does not hold"),
        ));
    }
    out.flush().map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
    let proposals = match proposals {
        Some((staged, mut out, count)) if count > 0 => {
            out.flush().map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
            Some(staged)
        }
        _ => None,
    };
    Ok((staged, proposals))
}

/// `POST .../{dataset}/inferences`: the uploaded rows become the inference set (created when
/// new), all or none; every frame they name must be in the dataset.
pub async fn commit_inferences(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
    AqBody(body): AqBody,
) -> AqResult<Json<Value>> {
    check_keys(
        &body,
        &[
            "inferences_id",
            "data_url",
            "embeddings_url",
            "frame_asset_url",
            "embedding_distance_metric",
            "upload_version",
            "frame_embedding_dim",
            "crop_embedding_dim",
            "external_metadata",
        ],
    )?;
    let set = required_str(&body, "inferences_id")?;
    let set = set.to_string();
    let rows = url_list(body.get("data_url"), "data_url")?;
    let embedding_files = url_list(body.get("embeddings_url"), "embeddings_url")?;
    if !url_list(body.get("frame_asset_url"), "frame_asset_url")?.is_empty() {
        return Err(invalid("frame_asset_url", "inference assets are not served; leave them out"));
    }
    let crop_dim = dimension(&body, "crop_embedding_dim")?;
    let frame_dim = dimension(&body, "frame_embedding_dim")?;
    let metadata = optional_object(&body, "external_metadata")?;
    let upload_version = body.get("upload_version").and_then(Value::as_str).unwrap_or_default().to_string();
    let (services, aquarium) = (state.services.clone(), state.aquarium.clone());
    let (project_name, dataset_name, set_name) = (project.clone(), dataset.clone(), set.clone());
    let (summary, project_uid) = blocking(move || {
        let project = access::project(&services.store, &user, &project_name, ProjectRole::Owner)?;
        let base = datasets::dataset(&services, &user, &project_name, &dataset_name)?;
        let named: Vec<(String, String)> = rows
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("data_url[{i}]"), u.clone()))
            .chain(embedding_files.iter().enumerate().map(|(i, u)| (format!("embeddings_url[{i}]"), u.clone())))
            .collect();
        let files = take_files(&aquarium.uploads, &user, &project, &dataset_name, &named)?;
        let existing = match datasets::inference_set(&services, &user, &project_name, &dataset_name, &set_name) {
            Ok(info) => Some(info),
            Err(e) if e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut embeddings = EmbeddingFiles::default();
        for i in 0..embedding_files.len() {
            let field = format!("embeddings_url[{i}]");
            embeddings.read(&files.path(rows.len() + i), &field, frame_dim.is_some(), crop_dim.is_some())?;
        }
        // Inference embeddings live in the dataset's label space.
        let mut label_dim = base.label_embedding_dim.or(crop_dim);
        let staged = Staging::new(&services)?;
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(&staged.0).map_err(|e| ServiceError::internal(format!("staging: {e}")))?,
        );
        let (mut frames, mut label_ids) = (Vec::new(), HashSet::new());
        for i in 0..rows.len() {
            let field = format!("data_url[{i}]");
            let file =
                std::fs::File::open(files.path(i)).map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
            for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
                let line = line.map_err(ingest::body_read_error)?;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let row = json_line(&line, &field, n + 1)?;
                let frame_id = row.get("task_id").and_then(Value::as_str).map(str::to_string);
                let wrap = |e| at_row(e, &field, n + 1, frame_id.as_deref());
                let ids = row_label_ids(&row);
                let row_embeddings = embeddings.take(frame_id.as_deref().unwrap_or_default(), &ids);
                let labels: Vec<Label> = rows::inferences_from_row(&row, row_embeddings, "frame").map_err(wrap)?;
                for label in &labels {
                    label_dim = label_dim.or(label.embedding.as_ref().map(Vec::len));
                    label.validate(&project.classes, true, label_dim).map_err(wrap)?;
                    if !label_ids.insert(label.label_id.clone()) {
                        return Err(wrap(milkglass_core::Invalid::new(
                            "uuid",
                            format!("inference {:?} appears twice", label.label_id),
                        )));
                    }
                    serde_json::to_writer(&mut out, label)
                        .map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
                    out.write_all(b"\n").map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
                }
                if let Some(id) = frame_id {
                    frames.push((id, field.clone(), n + 1));
                }
            }
        }
        out.flush().map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
        if let Some(id) = embeddings.crops.keys().next() {
            return Err(ServiceError::invalid(
                "embeddings_url",
                format!("an embedding for inference {id:?}, which the upload does not hold"),
            ));
        }
        check_frames_exist(&services, &user, &project_name, &dataset_name, &frames)?;
        match &existing {
            None => {
                let spec = DatasetSpec {
                    name: set_name.clone(),
                    kind: DatasetKind::default(),
                    metadata: metadata.unwrap_or_default(),
                    frame_embedding_dim: None,
                    label_embedding_dim: crop_dim,
                };
                datasets::create_inference_set(&services, &user, &project_name, &dataset_name, &spec)?;
            }
            Some(_) if metadata.is_some() => {
                let patch = DatasetPatch { metadata };
                datasets::update_inference_set(&services, &user, &project_name, &dataset_name, &set_name, &patch)?;
            }
            Some(_) => {}
        }
        let target = UploadTarget {
            project: &project_name,
            dataset: &dataset_name,
            inference_set: Some(&set_name),
            kind: UploadKind::Inferences,
        };
        let file = std::fs::File::open(&staged.0).map_err(|e| ServiceError::internal(format!("staging: {e}")))?;
        let summary = ingest::upload(&services, &user, target, Format::JsonLines, file)?;
        Ok((summary, project.uid))
    })
    .await?;
    let name = inference_set_id(&dataset, &set);
    state.aquarium.uploads.record((project_uid, name.clone(), upload_version));
    Ok(Json(json!({ "inferences_id": name, "milkglass": summary })))
}

/// Every frame an inference row names must be in the dataset: an inference of no frame would
/// be kept by nothing and shown nowhere.
fn check_frames_exist(
    services: &Services,
    user: &User,
    project: &str,
    dataset: &str,
    frames: &[(String, String, usize)],
) -> ServiceResult<()> {
    for chunk in frames.chunks(MAX_PAGE) {
        let ids: Vec<String> = chunk.iter().map(|(id, _, _)| id.clone()).collect();
        let filter = FrameFilter { ids, limit: MAX_PAGE, ..FrameFilter::default() };
        let page = datasets::list_frames(services, user, project, dataset, &filter)?;
        let found: HashSet<&str> = page.frames.iter().map(|f| f.frame_id.as_str()).collect();
        if let Some((id, field, line)) = chunk.iter().find(|(id, _, _)| !found.contains(id.as_str())) {
            return Err(ServiceError::invalid(
                "task_id",
                format!("{field}, line {line}: frame {id:?} is not in dataset {dataset:?}; upload the frame first"),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processing status

/// `windows` of an upload version: one window, DONE, as commits are processed before they
/// answer. A version this server did not commit (say, before a restart) is DONE when the
/// dataset has data, and unknown (no windows, the client keeps polling) otherwise.
pub async fn windows(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset, version)): Path<(String, String, String)>,
) -> AqResult<Json<Value>> {
    let services = state.services.clone();
    let (project_name, name) = (project.clone(), dataset.clone());
    let (uid, has_data) = blocking(move || {
        let info = access::project(&services.store, &user, &project_name, ProjectRole::Viewer)?;
        let has_data = match super::split_inference_set_id(&services, &user, &project_name, &name)? {
            Some((base, set)) => datasets::inference_set(&services, &user, &project_name, &base, &set).is_ok(),
            None => super::processed(&services, &user, &project_name, &name)?,
        };
        Ok((info.uid, has_data))
    })
    .await?;
    let window = |status: &str| json!([{ "uuid": version, "status": status }]);
    let committed = state.aquarium.uploads.committed(&(uid, dataset, version.clone()));
    Ok(Json(if committed || has_data { window("DONE") } else { json!([]) }))
}

/// `ingest_error_logs`: commits answer their errors at once, so none are left to log.
pub async fn error_logs(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset)): Path<(String, String)>,
) -> AqResult<Json<Value>> {
    blocking(move || datasets::dataset(&state.services, &user, &project, &dataset)).await?;
    Ok(Json(json!([])))
}

pub async fn error_logs_of_set(
    State(state): State<AppState>,
    AqCaller(user): AqCaller,
    Path((project, dataset, set)): Path<(String, String, String)>,
) -> AqResult<Json<Value>> {
    blocking(move || datasets::inference_set(&state.services, &user, &project, &dataset, &set)).await?;
    Ok(Json(json!([])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges_of_chunks_status_queries_and_empty_files() {
        let chunk = parse_content_range("bytes 0-262143/895584").ok().unwrap();
        assert_eq!((chunk.span, chunk.total), (Some((0, 262143)), Some(895584)));
        let open = parse_content_range("bytes 262144-524287/*").ok().unwrap();
        assert_eq!((open.span, open.total), (Some((262144, 524287)), None));
        let status = parse_content_range("bytes */*").ok().unwrap();
        assert_eq!((status.span, status.total), (None, None));
        let empty = parse_content_range("bytes */0").ok().unwrap();
        assert_eq!((empty.span, empty.total), (None, Some(0)));
        for bad in ["", "bytes 5-4/10", "bytes 0-1", "items 0-1/2", "bytes a-b/c", "bytes -1/2"] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
    }
}
