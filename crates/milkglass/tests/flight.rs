//! Arrow Flight SQL against a real server, with arrow-flight's own Flight SQL client:
//! the same guard, refusals as PERMISSION_DENIED, only readable tables listed.

mod common;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use arrow_flight::sql::CommandGetTables;
use arrow_flight::sql::client::FlightSqlServiceClient;
use common::{Server, add_user, cli};
use futures::TryStreamExt;
use tonic::transport::Channel;

fn titanic_setup(handling: &str) -> (Server, String, String) {
    titanic_setup_waiting(handling, 0)
}

fn titanic_setup_waiting(handling: &str, review_wait_secs: u64) -> (Server, String, String) {
    let (server, _admin) = Server::start(&["--review-wait-secs", &review_wait_secs.to_string()]);
    let owner = add_user(&server.dir, "olivia", "owner");
    let scientist = add_user(&server.dir, "sam", "scientist");
    let policy = server.dir.join("policy.json");
    std::fs::write(
        &policy,
        format!(r#"{{"safe_zone": {{"aggregation": {{"min_agg_size": 10}}}}, "unsafe_handling": "{handling}", "sanitized_columns": ["Name"]}}"#),
    )
    .unwrap();
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv");
    cli(&[
        "table",
        "upload",
        csv,
        "--name",
        "titanic",
        "--policy",
        policy.to_str().unwrap(),
        "--server",
        &server.base,
        "--token",
        &owner,
    ]);
    (server, owner, scientist)
}

async fn client(server: &Server, token: &str) -> FlightSqlServiceClient<Channel> {
    let channel = Channel::from_shared(server.flight.clone()).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_token(token.to_string());
    client
}

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<Vec<RecordBatch>, tonic::Status> {
    let info = client.execute(sql.to_string(), None).await.map_err(to_status)?;
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("ticket");
        let stream = client.do_get(ticket).await.map_err(to_status)?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(|e| tonic::Status::internal(e.to_string()))?);
    }
    Ok(batches)
}

fn to_status(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(status) => *status,
        other => tonic::Status::unknown(other.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_go_through_the_guard() {
    let (server, _owner, scientist) = tokio::task::spawn_blocking(|| titanic_setup("reject")).await.unwrap();
    let mut c = client(&server, &scientist).await;
    let batches =
        fetch(&mut c, "SELECT Pclass, AVG(Survived) AS Survived FROM titanic GROUP BY Pclass ORDER BY Survived DESC")
            .await
            .unwrap();
    let values: Vec<f64> =
        batches.iter().flat_map(|b| b.column(1).as_primitive::<Float64Type>().values().to_vec()).collect();
    for (got, want) in values.iter().zip([0.62963, 0.472826, 0.242363]) {
        assert!((got - want).abs() < 5e-7, "{values:?}");
    }
    let refused = fetch(&mut c, "SELECT * FROM titanic LIMIT 5").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("at least 10 rows of table \"titanic\""), "{}", refused.message());
    // The structured error rides along as metadata, for programs (the SDK reads it).
    let meta = |s: &tonic::Status, key: &str| s.metadata().get(key).and_then(|v| v.to_str().ok()).map(String::from);
    assert_eq!(meta(&refused, "x-milkglass-error-kind").as_deref(), Some("refused"));
    let invalid = fetch(&mut c, "DROP TABLE titanic").await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    assert_eq!(meta(&invalid, "x-milkglass-error-kind").as_deref(), Some("invalid"));
    assert_eq!(meta(&invalid, "x-milkglass-error-code").as_deref(), Some("not_a_query"));
    assert_eq!(meta(&invalid, "x-milkglass-error-field").as_deref(), Some("sql"));

    // Prepared statements (ADBC uses them) decide the same way.
    let mut prepared = c.prepare("SELECT Sex, COUNT(*) AS n FROM titanic GROUP BY Sex".into(), None).await.unwrap();
    let info = prepared.execute().await.unwrap();
    let stream = c.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap();
    let rows: usize = stream.try_collect::<Vec<_>>().await.unwrap().iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2);

    // Only readable tables are listed, with schemas that hide the row id.
    let info = c.get_tables(CommandGetTables { include_schema: true, ..Default::default() }).await.unwrap();
    let stream = c.do_get(info.endpoint[0].ticket.clone().unwrap()).await.unwrap();
    let tables: Vec<RecordBatch> = stream.try_collect().await.unwrap();
    let names = tables[0].column_by_name("table_name").unwrap().as_string::<i32>();
    assert_eq!(names.len(), 1);
    assert_eq!(names.value(0), "titanic");

    // Bad tokens are refused before anything runs.
    let mut stranger = client(&server, "mg_nope").await;
    let e = fetch(&mut stranger, "SELECT COUNT(*) FROM titanic").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread")]
async fn held_queries_carry_the_request_id_and_basic_auth_hands_out_a_bearer() {
    let (server, _owner, scientist) = tokio::task::spawn_blocking(|| titanic_setup("review")).await.unwrap();
    let channel = Channel::from_shared(server.flight.clone()).unwrap().connect().await.unwrap();
    let mut c = FlightSqlServiceClient::new(channel);
    let token = c.handshake("sam", &scientist).await.unwrap();
    assert!(!token.is_empty());
    let held = fetch(&mut c, "SELECT * FROM titanic LIMIT 5").await.unwrap_err();
    assert!(held.message().contains("request 1"), "{held:?}");
    let channel = Channel::from_shared(server.flight.clone()).unwrap().connect().await.unwrap();
    let mut fresh = FlightSqlServiceClient::new(channel);
    assert!(fresh.handshake("olivia", &scientist).await.is_err(), "a token works only with its own user name");
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_the_flag_the_masked_columns_and_the_audit_entry_in_their_schema() {
    let (server, _owner, scientist) = tokio::task::spawn_blocking(|| titanic_setup("log")).await.unwrap();
    let mut c = client(&server, &scientist).await;
    let info = c.execute("SELECT Name, Age FROM titanic LIMIT 3".to_string(), None).await.unwrap();
    let announced = info.clone().try_decode_schema().unwrap();
    let flagged = announced.metadata().get("milkglass.flagged").expect("flagged in the FlightInfo schema");
    assert!(flagged.contains("at least 10 rows"), "{flagged}");
    assert_eq!(announced.metadata().get("milkglass.masked_columns").map(String::as_str), Some(r#"["Name"]"#));
    let batches = fetch(&mut c, "SELECT Name, Age FROM titanic LIMIT 3").await.unwrap();
    let schema = batches[0].schema();
    assert!(schema.metadata().contains_key("milkglass.flagged"));
    assert_eq!(batches[0].column(0).null_count(), 3, "sanitized Name is nulled");
    let audit_id: i64 = schema.metadata()["milkglass.audit_id"].parse().unwrap();
    // A query inside the safe zone is not flagged, and has its own, later audit entry.
    let safe = fetch(&mut c, "SELECT Sex, COUNT(*) AS n FROM titanic GROUP BY Sex").await.unwrap();
    let metadata = safe[0].schema().metadata().clone();
    assert!(!metadata.contains_key("milkglass.flagged"), "{metadata:?}");
    assert!(metadata["milkglass.audit_id"].parse::<i64>().unwrap() > audit_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_may_ask_a_held_statement_not_to_wait() {
    let (server, _owner, scientist) =
        tokio::task::spawn_blocking(|| titanic_setup_waiting("review", 120)).await.unwrap();
    let mut c = client(&server, &scientist).await;
    c.set_header("x-milkglass-wait-seconds", "0");
    let started = std::time::Instant::now();
    let held = fetch(&mut c, "SELECT * FROM titanic LIMIT 5").await.unwrap_err();
    assert_eq!(held.code(), tonic::Code::FailedPrecondition, "{held:?}");
    assert!(held.message().contains("(request 1)"), "{}", held.message());
    let kind = held.metadata().get("x-milkglass-error-kind").and_then(|v| v.to_str().ok());
    let request = held.metadata().get("x-milkglass-request-id").and_then(|v| v.to_str().ok());
    assert_eq!((kind, request), (Some("held"), Some("1")));
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "the server waited {:?}", started.elapsed());
    c.set_header("x-milkglass-wait-seconds", "soon");
    let bad = fetch(&mut c, "SELECT * FROM titanic LIMIT 5").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("x-milkglass-wait-seconds"), "{}", bad.message());
}
