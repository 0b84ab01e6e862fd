//! Arrow Flight SQL: the guarded query service for any Flight SQL client (ADBC,
//! JDBC, Polars, pandas). Every statement goes through `milkglass_service::query::run`, the same
//! guard, audit log and review queue as HTTP; a result is computed and decided
//! before its FlightInfo exists, so no byte of it leaves before the decision.

use crate::AppState;
use crate::blocking;
use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    Any, CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage, SchemaAsIpc,
    Ticket,
};
use base64::Engine;
use futures::{Stream, TryStreamExt};
use milkglass_service::{Answer, ErrorKind, GuardedTableInfo, ServiceError, User, dataset_tables, query, tables};
use prost::Message;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status, Streaming};

/// The catalog and schema every table appears under (DataFusion's defaults).
const CATALOG: &str = "datafusion";
const SCHEMA: &str = "public";
/// A decided result waits this long for its DoGet before it is dropped.
const RESULT_TTL: Duration = Duration::from_secs(300);
/// Request header: how many seconds a held statement waits for the owner before answering "held".
const WAIT_HEADER: &str = "x-milkglass-wait-seconds";
/// Schema metadata keys that carry what JSON answers say in fields: a flagged query's
/// warning, the columns nulled because they derive from sanitized columns, the audit entry.
pub const FLAGGED_KEY: &str = "milkglass.flagged";
pub const MASKED_KEY: &str = "milkglass.masked_columns";
pub const AUDIT_KEY: &str = "milkglass.audit_id";

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "milkglass");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.build().expect("static SqlInfo")
});

/// A result that passed the guard, waiting for its one DoGet by its requester.
struct Decided {
    user_id: i64,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    at: Instant,
}

pub struct MilkglassFlightSql {
    state: AppState,
    results: Mutex<HashMap<String, Decided>>,
    /// Prepared statement handle to (owner, SQL).
    prepared: Mutex<HashMap<String, (i64, String)>>,
}

/// The tonic service to mount on a gRPC server.
pub fn service(state: AppState) -> FlightServiceServer<MilkglassFlightSql> {
    FlightServiceServer::new(MilkglassFlightSql { state, results: Mutex::default(), prepared: Mutex::default() })
}

fn new_handle() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Metadata keys of the structured error every failed call carries beside its message,
/// so that clients classify errors without reading prose (see docs/API.md).
pub const ERROR_KIND_KEY: &str = "x-milkglass-error-kind";
pub const ERROR_CODE_KEY: &str = "x-milkglass-error-code";
pub const ERROR_FIELD_KEY: &str = "x-milkglass-error-field";
pub const REQUEST_ID_KEY: &str = "x-milkglass-request-id";

/// Service errors as gRPC statuses; the message is what the data scientist reads, the
/// metadata what a program reads.
fn status(e: ServiceError) -> Status {
    let code = match e.kind {
        ErrorKind::Refused | ErrorKind::Rejected | ErrorKind::Forbidden => tonic::Code::PermissionDenied,
        ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
        ErrorKind::NotFound => tonic::Code::NotFound,
        ErrorKind::Internal => tonic::Code::Internal,
        ErrorKind::Busy => tonic::Code::ResourceExhausted,
        ErrorKind::Unavailable => tonic::Code::Unavailable,
        ErrorKind::Stopped => tonic::Code::DeadlineExceeded,
        ErrorKind::Conflict | ErrorKind::Gone => tonic::Code::FailedPrecondition,
        ErrorKind::Invalid | ErrorKind::TooLarge | ErrorKind::Unsupported => tonic::Code::InvalidArgument,
    };
    let kind = serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    structured(Status::new(code, e.message.clone()), &kind, e.code, e.field.as_deref(), e.request_id())
}

/// Adds the structured error to a status's metadata.
fn structured(mut status: Status, kind: &str, code: &str, field: Option<&str>, request_id: Option<i64>) -> Status {
    let metadata = status.metadata_mut();
    let mut put = |key: &'static str, value: &str| {
        if let Ok(value) = value.parse() {
            metadata.insert(key, value);
        }
    };
    put(ERROR_KIND_KEY, kind);
    put(ERROR_CODE_KEY, code);
    if let Some(field) = field {
        put(ERROR_FIELD_KEY, field);
    }
    if let Some(id) = request_id {
        put(REQUEST_ID_KEY, &id.to_string());
    }
    status
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

fn stream_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> DoGetStream {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from);
    Box::pin(stream)
}

/// A metadata answer: one batch, streamed.
fn one_batch<E: std::fmt::Display>(batch: Result<RecordBatch, E>) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(stream_batches(batch.schema(), vec![batch])))
}

fn with_answer_metadata(schema: &Schema, flagged: Option<&str>, masked: &[String], audit_id: i64) -> SchemaRef {
    let mut metadata = schema.metadata().clone();
    metadata.insert(AUDIT_KEY.to_string(), audit_id.to_string());
    if let Some(warning) = flagged {
        metadata.insert(FLAGGED_KEY.to_string(), warning.to_string());
    }
    if !masked.is_empty() {
        metadata.insert(MASKED_KEY.to_string(), serde_json::to_string(masked).expect("strings serialize"));
    }
    Arc::new(schema.clone().with_metadata(metadata))
}

fn info_for(schema: &Schema, ticket: Vec<u8>, descriptor: FlightDescriptor, rows: i64) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor)
        .with_total_records(rows))
}

/// A sign-in over Flight SQL, as the audit log records it: the peer address and the method.
fn flight_attempt<T>(request: &Request<T>) -> milkglass_service::Attempt {
    let method = request.extensions().get::<tonic::GrpcMethod>().map(|m| m.method().to_string());
    milkglass_service::Attempt {
        from: request.remote_addr().map(|a| a.ip()),
        target: format!("Flight {}", method.as_deref().unwrap_or("call")),
    }
}

impl MilkglassFlightSql {
    /// The caller, from `authorization: Bearer <token>`.
    async fn caller<T>(&self, request: &Request<T>) -> Result<User, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("send authorization: Bearer <token>"))?;
        let token =
            header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).map(|t| t.trim().to_string());
        let (services, attempt) = (self.state.services.clone(), flight_attempt(request));
        let Some(token) = token else {
            blocking(move || services.failed_sign_in(&attempt, "malformed authorization header"))
                .await
                .map_err(status)?;
            return Err(Status::unauthenticated("the authorization header must be: Bearer <token>"));
        };
        blocking(move || services.authenticate(&token, &attempt)).await.map_err(status)
    }

    /// Runs a statement through the guard; a passed result is kept for one DoGet.
    async fn decide(
        &self,
        user: &User,
        sql: &str,
        wait: Duration,
        descriptor: FlightDescriptor,
    ) -> Result<FlightInfo, Status> {
        let answer = query::run(&self.state.services, user, sql, wait).await.map_err(status)?;
        let (batches, columns, flagged, masked, audit_id) = match answer {
            Answer::Rows { batches, columns, flagged, masked, audit_id, .. } => {
                (batches, columns, flagged, masked, audit_id)
            }
            Answer::Held { request_id, reason } => {
                let message = format!(
                    "held for the owner's review (request {request_id}): {reason}. \
                     Collect the result later from /api/query/requests/{request_id}"
                );
                return Err(structured(Status::failed_precondition(message), "held", "held", None, Some(request_id)));
            }
        };
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => Arc::new(Schema::new(
                columns
                    .iter()
                    .map(|c| arrow::datatypes::Field::new(c, arrow::datatypes::DataType::Null, true))
                    .collect::<Vec<_>>(),
            )),
        };
        let schema = with_answer_metadata(&schema, flagged.as_deref(), &masked, audit_id);
        let batches = batches
            .into_iter()
            .map(|b| b.with_schema(schema.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        let rows = batches.iter().map(|b| b.num_rows() as i64).sum();
        let handle = new_handle();
        let ticket = TicketStatementQuery { statement_handle: handle.clone().into() }.as_any().encode_to_vec();
        let info = info_for(&schema, ticket, descriptor, rows)?;
        let mut results = self.results.lock().expect("results lock");
        results.retain(|_, d| d.at.elapsed() < RESULT_TTL);
        results.insert(handle, Decided { user_id: user.id, schema, batches, at: Instant::now() });
        Ok(info)
    }

    /// How long a held statement waits for the owner: the client's
    /// `x-milkglass-wait-seconds` header (the SDK sends 0 and polls), else the server's default.
    fn review_wait<T>(&self, request: &Request<T>) -> Result<Duration, Status> {
        match request.metadata().get(WAIT_HEADER) {
            None => Ok(self.state.services.config.review_wait),
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs).min(query::MAX_REVIEW_WAIT))
                .ok_or_else(|| Status::invalid_argument(format!("{WAIT_HEADER} must be a whole number of seconds"))),
        }
    }

    async fn dataset_tables(&self, user: &User) -> Result<Vec<dataset_tables::TableListing>, Status> {
        let (services, user) = (self.state.services.clone(), user.clone());
        blocking(move || dataset_tables::list(&services, &user, None)).await.map_err(status)
    }

    async fn readable_tables(&self, user: &User) -> Result<Vec<GuardedTableInfo>, Status> {
        let (services, user) = (self.state.services.clone(), user.clone());
        blocking(move || tables::list(&services, &user)).await.map_err(status)
    }
}

fn metadata_info(
    command: impl ProstMessageExt,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    Ok(Response::new(info_for(schema, command.as_any().encode_to_vec(), descriptor, -1)?))
}

#[tonic::async_trait]
impl FlightSqlService for MilkglassFlightSql {
    type FlightService = MilkglassFlightSql;

    /// Basic auth whose password is a milkglass token; answers with that token as a bearer.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("send basic auth (user name and token) or a bearer token"))?
            .to_string();
        let token = if let Some(basic) = header.strip_prefix("Basic ") {
            let attempt = flight_attempt(&request);
            let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim()).ok();
            let text = decoded.and_then(|d| String::from_utf8(d).ok());
            let Some((name, token)) = text.as_deref().and_then(|t| t.split_once(':')) else {
                let services = self.state.services.clone();
                blocking(move || services.failed_sign_in(&attempt, "malformed basic auth")).await.map_err(status)?;
                return Err(Status::unauthenticated("malformed basic auth"));
            };
            let (services, given) = (self.state.services.clone(), token.to_string());
            let user = blocking(move || services.authenticate(&given, &attempt)).await.map_err(status)?;
            // The token is right and only the name is wrong: nothing was guessed, so nothing is
            // counted; the pair is refused like any wrong one.
            if user.name != name {
                return Err(Status::unauthenticated("invalid user name or token"));
            }
            token.to_string()
        } else {
            let user = self.caller(&request).await?;
            let _ = user;
            header.trim_start_matches("Bearer ").trim().to_string()
        };
        let bearer = format!("Bearer {token}");
        let output = futures::stream::iter(vec![Ok(HandshakeResponse { protocol_version: 0, payload: token.into() })]);
        let mut response: Response<Pin<Box<dyn Stream<Item = _> + Send>>> = Response::new(Box::pin(output));
        response.metadata_mut().insert("authorization", bearer.parse().map_err(|_| Status::internal("token header"))?);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let user = self.caller(&request).await?;
        let wait = self.review_wait(&request)?;
        Ok(Response::new(self.decide(&user, &query.query, wait, request.into_inner()).await?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let user = self.caller(&request).await?;
        let handle =
            String::from_utf8(ticket.statement_handle.to_vec()).map_err(|_| Status::invalid_argument("bad ticket"))?;
        let mut results = self.results.lock().expect("results lock");
        match results.get(&handle) {
            Some(d) if d.user_id == user.id => {
                let decided = results.remove(&handle).expect("present");
                Ok(Response::new(stream_batches(decided.schema, decided.batches)))
            }
            _ => Err(Status::not_found("no such result; it was already fetched, expired, or is not yours")),
        }
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let user = self.caller(&request).await?;
        // Plan (no run) to check the statement and learn its result's schema.
        let schema = query::plan_schema(&self.state.services, &user, &query.query).await.map_err(status)?;
        let IpcMessage(schema_bytes) = SchemaAsIpc::new(&schema, &Default::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        let handle = new_handle();
        self.prepared.lock().expect("prepared lock").insert(handle.clone(), (user.id, query.query));
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into(),
            dataset_schema: schema_bytes,
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        self.prepared.lock().expect("prepared lock").remove(&handle);
        Ok(())
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let user = self.caller(&request).await?;
        let handle = String::from_utf8_lossy(&query.prepared_statement_handle).to_string();
        let sql = match self.prepared.lock().expect("prepared lock").get(&handle) {
            Some((owner, sql)) if *owner == user.id => sql.clone(),
            _ => return Err(Status::not_found("no such prepared statement")),
        };
        let wait = self.review_wait(&request)?;
        Ok(Response::new(self.decide(&user, &sql, wait, request.into_inner()).await?))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request).await?;
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        let builder = query.into_builder(&SQL_INFO);
        one_batch(builder.build())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request).await?;
        let schema = query.into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let user = self.caller(&request).await?;
        let mut builder = query.into_builder();
        let mut catalogs: Vec<String> = vec![CATALOG.to_string()];
        for table in self.dataset_tables(&user).await? {
            catalogs.extend(table.catalog);
        }
        catalogs.sort();
        catalogs.dedup();
        for catalog in catalogs {
            builder.append(catalog);
        }
        one_batch(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request).await?;
        let schema = query.clone().into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let user = self.caller(&request).await?;
        let mut builder = query.into_builder();
        let mut schemas = vec![(CATALOG.to_string(), SCHEMA.to_string())];
        for table in self.dataset_tables(&user).await? {
            schemas.push((table.catalog.unwrap_or_else(|| CATALOG.to_string()), table.schema));
        }
        schemas.sort();
        schemas.dedup();
        for (catalog, schema) in schemas {
            builder.append(catalog, schema);
        }
        one_batch(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request).await?;
        let schema = query.clone().into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    /// Only the tables the caller may read, with their schemas (without the hidden row id).
    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let user = self.caller(&request).await?;
        let mut builder = query.into_builder();
        for table in self.readable_tables(&user).await? {
            let (visible, _) = table.providers().map_err(|e| Status::internal(e.to_string()))?;
            builder.append(CATALOG, SCHEMA, &table.name, "TABLE", visible.schema().as_ref()).map_err(Status::from)?;
        }
        // Dataset tables under their dataset's schema (`shapes.labels`), without the row id.
        for table in self.dataset_tables(&user).await? {
            let fields: Vec<arrow::datatypes::Field> = table
                .columns
                .iter()
                .map(|c| arrow::datatypes::Field::new(&c.name, c.arrow_type.clone(), true))
                .collect();
            let catalog = table.catalog.as_deref().unwrap_or(CATALOG);
            builder
                .append(catalog, &table.schema, &table.table, "TABLE", &Schema::new(fields))
                .map_err(Status::from)?;
        }
        one_batch(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.caller(&request).await?;
        let schema = query.into_builder().schema();
        metadata_info(query, &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.caller(&request).await?;
        let mut builder = query.into_builder();
        builder.append("TABLE");
        one_batch(builder.build())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::unimplemented(format!("milkglass does not serve {}", message.type_url)))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
