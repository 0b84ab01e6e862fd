//! Routes of the table face: guarded tables, queries, reviews and the audit log.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Multipart, Path, Query};
use crate::json::JsonBody;
use crate::{AppState, blocking};
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use milkglass_service::{
    Answer, GuardedTableInfo, Policy, ServiceError, TableFormat, access, dataset_tables, query, reviews, tables,
};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/tables", get(list_tables).post(upload_table))
        .route("/api/tables/{table}", get(get_table).delete(drop_table))
        .route("/api/tables/{table}/policy", put(set_policy))
        .route("/api/query", post(run_query))
        .route("/api/query/requests/{id}", get(collect_request))
        .route("/api/reviews", get(list_reviews))
        .route("/api/reviews/{id}/approve", post(approve))
        .route("/api/reviews/{id}/reject", post(reject))
        .route("/api/audit", get(audit_log))
        .route("/api/audit/verify", get(verify_audit))
        .route("/api/budget", get(budget))
        .route("/api/dataset_tables", get(list_dataset_tables))
        .route("/api/projects/{project}/datasets/{dataset}/tables", get(dataset_tables_of))
        .route(
            "/api/projects/{project}/datasets/{dataset}/publication",
            get(get_publication).put(publish_dataset).delete(unpublish_dataset),
        )
}

/// The caller's privacy budget on every differentially private table they may read.
async fn budget(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let budgets = blocking(move || milkglass_service::dp::budgets(&state.services.store, &caller.0)).await?;
    Ok(Json(json!({ "budgets": budgets })))
}

/// Every dataset table the caller may query: their projects' datasets and those published to them.
async fn list_dataset_tables(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let tables = blocking(move || dataset_tables::list(&state.services, &caller.0, None)).await?;
    Ok(Json(json!({ "tables": tables })))
}

/// One dataset's tables, for a member or a reader of its publication.
async fn dataset_tables_of(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let tables = blocking(move || {
        let tables = dataset_tables::list(&state.services, &caller.0, Some((&project, &dataset)))?;
        if tables.is_empty() {
            // Neither a member nor a reader: the same answer as for a project that does not exist.
            return Err(access::no_project_access(&project));
        }
        Ok(tables)
    })
    .await?;
    Ok(Json(json!({ "tables": tables })))
}

async fn get_publication(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let publication =
        blocking(move || dataset_tables::publication(&state.services, &caller.0, &project, &dataset)).await?;
    Ok(Json(json!({ "publication": publication })))
}

async fn publish_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
    JsonBody(spec): JsonBody<dataset_tables::PublicationSpec>,
) -> ApiResult<Json<Value>> {
    let publication = dataset_tables::publish(&state.services, &caller.0, &project, &dataset, spec).await?;
    Ok(Json(json!({ "publication": publication })))
}

async fn unpublish_dataset(
    State(state): State<AppState>,
    caller: Caller,
    Path((project, dataset)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    blocking(move || dataset_tables::unpublish(&state.services, &caller.0, &project, &dataset)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_tables(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let tables = blocking(move || tables::list(&state.services, &caller.0)).await?;
    Ok(Json(json!({ "tables": tables })))
}

async fn get_table(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<GuardedTableInfo>> {
    Ok(Json(blocking(move || tables::get(&state.services, &caller.0, &name)).await?))
}

fn parse_readers(text: &str) -> Option<Vec<String>> {
    let readers: Vec<String> = text.split(',').map(str::trim).filter(|r| !r.is_empty()).map(String::from).collect();
    (!readers.is_empty()).then_some(readers)
}

/// `multipart/form-data` with parts `name`, `policy` (JSON), optional `readers`
/// (comma-separated) and `format`, and `file` (CSV, Parquet or Arrow IPC).
async fn upload_table(
    State(state): State<AppState>,
    caller: Caller,
    Multipart(mut form): Multipart,
) -> ApiResult<Response> {
    let result = publish(&state, &caller, &mut form).await;
    if result.is_err() {
        // Read the rest of the body (bounded by the upload limit) so that a client still
        // sending gets the answer instead of a broken connection.
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(_)) = field.chunk().await {}
        }
    }
    result
}

async fn publish(state: &AppState, caller: &Caller, form: &mut axum::extract::Multipart) -> ApiResult<Response> {
    // Refused before reading the body: a scientist's upload is not written anywhere.
    access::require_table_creator(&caller.0)?;
    let (mut name, mut policy, mut readers, mut format, mut upload) = (None, None, None, None, None);
    let staging = Staging::new(&state.services)?;
    while let Some(mut field) =
        form.next_field().await.map_err(|e| ApiError::invalid("body", format!("malformed multipart body: {e}")))?
    {
        let part = field.name().unwrap_or_default().to_string();
        match part.as_str() {
            "name" => name = Some(field.text().await.map_err(|e| ApiError::invalid("name", e.to_string()))?),
            "policy" => {
                let text = field.text().await.map_err(|e| ApiError::invalid("policy", e.to_string()))?;
                policy = Some(Policy::from_json(&text).map_err(ServiceError::from)?);
            }
            "readers" => {
                readers = parse_readers(&field.text().await.map_err(|e| ApiError::invalid("readers", e.to_string()))?)
            }
            "format" => {
                let text = field.text().await.map_err(|e| ApiError::invalid("format", e.to_string()))?;
                format = Some(
                    TableFormat::parse(&text)
                        .ok_or_else(|| ApiError::invalid("format", "use csv, parquet or arrow"))?,
                );
            }
            "file" => {
                let file_name = field.file_name().map(String::from);
                let mut out = tokio::fs::File::create(&staging.0).await.map_err(ApiError::internal)?;
                while let Some(chunk) = field.chunk().await.map_err(|e| body_error(&e.to_string()))? {
                    out.write_all(&chunk).await.map_err(ApiError::internal)?;
                }
                out.flush().await.map_err(ApiError::internal)?;
                upload = Some(file_name);
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown form field; send name, policy, readers, format and file",
                ));
            }
        }
    }
    let name = name.ok_or_else(|| ApiError::invalid("name", "is required"))?;
    let policy = policy.ok_or_else(|| ApiError::invalid("policy", "is required"))?;
    let file_name = upload.ok_or_else(|| ApiError::invalid("file", "is required"))?;
    let format = format.or_else(|| file_name.as_deref().and_then(TableFormat::parse)).ok_or_else(|| {
        ApiError::invalid("format", "cannot tell the file's format from its name; send format=csv, parquet or arrow")
    })?;
    let publication = tables::Publication { name: &name, policy, readers, file: &staging.0, format };
    let table = tables::publish(&state.services, &caller.0, publication).await?;
    Ok((StatusCode::CREATED, Json(table)).into_response())
}

/// A staging file for an upload (in the data directory), removed when dropped: the one way
/// adapters keep a body on disk until a service call has read it.
pub(crate) struct Staging(pub(crate) std::path::PathBuf);

impl Staging {
    pub(crate) fn new(services: &milkglass_service::Services) -> milkglass_service::ServiceResult<Staging> {
        Ok(Staging(tables::staging_file(services)?))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn body_error(message: &str) -> ApiError {
    if message.contains("length limit") || message.contains("size limit") {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the upload is larger than the server's limit")
    } else {
        ApiError::invalid("file", format!("could not read the upload: {message}"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    policy: Value,
    /// Replaces the readers when present (`null`: every scientist).
    #[serde(default, deserialize_with = "double_option")]
    readers: Option<Option<Vec<String>>>,
}

/// Tells "absent" (keep) from `null` (clear) for an optional field.
fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

async fn set_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<PolicyBody>,
) -> ApiResult<Json<GuardedTableInfo>> {
    let table = blocking(move || {
        let readers = body.readers.as_ref().map(|r| r.as_deref());
        tables::set_policy(&state.services, &caller.0, &name, body.policy, readers)
    })
    .await?;
    Ok(Json(table))
}

async fn drop_table(State(state): State<AppState>, caller: Caller, Path(name): Path<String>) -> ApiResult<StatusCode> {
    blocking(move || tables::drop(&state.services, &caller.0, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    /// How long to wait for the owner when the query is held (default: the server's setting).
    #[serde(default)]
    wait_seconds: Option<u64>,
    /// Save the result as a new guarded table with this name instead of returning it.
    #[serde(default)]
    save_as: Option<String>,
}

const MAX_SQL_BYTES: usize = 100_000;

async fn run_query(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<QueryBody>,
) -> ApiResult<Response> {
    if body.sql.len() > MAX_SQL_BYTES {
        return Err(ApiError::invalid("sql", format!("is longer than {MAX_SQL_BYTES} bytes")));
    }
    if let Some(name) = &body.save_as {
        let table = query::save_result(&state.services, &caller.0, &body.sql, name).await?;
        return Ok((StatusCode::CREATED, Json(table)).into_response());
    }
    let wait =
        body.wait_seconds.map_or(state.services.config.review_wait, Duration::from_secs).min(query::MAX_REVIEW_WAIT);
    let answer = query::run(&state.services, &caller.0, &body.sql, wait).await?;
    respond(answer, &headers)
}

async fn collect_request(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    let answer = query::collect_request(&state.services, &caller.0, id).await?;
    respond(answer, &headers)
}

/// Rows as JSON, or as an Arrow IPC stream when the caller asks for one.
fn respond(answer: Answer, headers: &HeaderMap) -> ApiResult<Response> {
    let arrow = headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/vnd.apache.arrow.stream"));
    match answer {
        Answer::Held { request_id, reason } => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "status": "held",
                "request_id": request_id,
                "message": format!(
                    "Held for the owner's review: {reason}. Poll /api/query/requests/{request_id} for the decision."
                ),
            })),
        )
            .into_response()),
        Answer::Rows { batches, columns, flagged, masked, audit_id, privacy } if arrow => {
            let schema = batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| std::sync::Arc::new(arrow::datatypes::Schema::empty()));
            let mut body = Vec::new();
            {
                let mut writer =
                    arrow::ipc::writer::StreamWriter::try_new(&mut body, &schema).map_err(ApiError::internal)?;
                for batch in &batches {
                    writer.write(batch).map_err(ApiError::internal)?;
                }
                writer.finish().map_err(ApiError::internal)?;
            }
            let _ = columns;
            let mut response = body.into_response();
            let h = response.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/vnd.apache.arrow.stream"));
            h.insert("milkglass-audit-id", HeaderValue::from(audit_id));
            if let Some(flag) = flagged.and_then(|f| HeaderValue::from_str(&f.replace(['\r', '\n'], " ")).ok()) {
                h.insert("milkglass-flagged", flag);
            }
            if let Some(note) = privacy.and_then(|p| HeaderValue::from_str(&p.replace(['\r', '\n'], " ")).ok()) {
                h.insert("milkglass-privacy", note);
            }
            if !masked.is_empty()
                && let Ok(v) = HeaderValue::from_str(&masked.join(","))
            {
                h.insert("milkglass-masked-columns", v);
            }
            Ok(response)
        }
        Answer::Rows { batches, columns, flagged, masked, audit_id, privacy } => {
            // Explicit nulls: a sanitized column shows as null rather than vanishing.
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(Vec::new());
            for batch in &batches {
                writer.write(batch).map_err(ApiError::internal)?;
            }
            writer.finish().map_err(ApiError::internal)?;
            let bytes = writer.into_inner();
            let rows: Value = if bytes.is_empty() {
                json!([])
            } else {
                serde_json::from_slice(&bytes).map_err(ApiError::internal)?
            };
            let count = batches.iter().map(|b| b.num_rows()).sum::<usize>();
            let mut body = json!({
                "columns": columns,
                "rows": rows,
                "row_count": count,
                "flagged": flagged.is_some(),
                "warning": flagged,
                "masked_columns": masked,
                "audit_id": audit_id,
            });
            if let Some(note) = privacy {
                // Each number's 95% error bound, from its field's metadata.
                let mut ci95 = serde_json::Map::new();
                if let Some(batch) = batches.first() {
                    for field in batch.schema().fields() {
                        if let Some(v) = field.metadata().get("milkglass.dp.ci95").and_then(|v| v.parse::<f64>().ok()) {
                            ci95.insert(field.name().clone(), json!(v));
                        }
                    }
                }
                body["privacy"] = json!({ "note": note, "ci95": ci95 });
            }
            Ok(Json(body).into_response())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewQuery {
    #[serde(default)]
    state: Option<String>,
}

async fn list_reviews(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ReviewQuery>,
) -> ApiResult<Json<Value>> {
    let visible = blocking(move || reviews::list(&state.services, &caller.0, q.state.as_deref())).await?;
    Ok(Json(json!({ "requests": visible })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: String,
}

async fn approve(State(state): State<AppState>, caller: Caller, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    decide(state, caller, id, true, None).await
}

async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    JsonBody(body): JsonBody<RejectBody>,
) -> ApiResult<Json<Value>> {
    decide(state, caller, id, false, Some(body.reason)).await
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: i64,
    approve: bool,
    reason: Option<String>,
) -> ApiResult<Json<Value>> {
    let decided = blocking(move || reviews::decide(&state.services, &caller.0, id, approve, reason.as_deref())).await?;
    Ok(Json(serde_json::to_value(decided).expect("serializable")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// The hash chain's verdict (`milkglass audit verify` does the same offline).
async fn verify_audit(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let verdict = blocking(move || reviews::verify_audit(&state.services, &caller.0)).await?;
    Ok(Json(serde_json::to_value(verdict).expect("serializable")))
}

/// Owners read their tables' entries; everyone reads their own.
async fn audit_log(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let entries =
        blocking(move || reviews::audit_log(&state.services, &caller.0, q.table.as_deref(), q.user.as_deref())).await?;
    Ok(Json(json!({ "entries": entries })))
}
