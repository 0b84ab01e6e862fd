//! What milkglass does with bytes from outside, as functions a fuzzer can call: the upload decoders
//! (JSON Lines and Arrow IPC), the policy parser, data URL parsing and the guard's entry point (SQL
//! text in, a decision out). Each must answer every input with a result, never a panic, a hang or an
//! unbounded allocation, and checks a property that must hold whatever the input:
//!
//! - an upload either decodes or is refused with an error that names a field;
//! - a policy that parses reads back the same after a round trip through its JSON;
//! - a data URL that parses keeps its text, and a hosted key passes the key rules;
//! - the guard's answer (rows, decision or error) is the same whatever the sanitized column holds.
//!
//! The cargo-fuzz targets in `fuzz/` call these; `tests/corpora.rs` replays every file of
//! `fuzz/corpus/<target>/` through them on the stable toolchain, in the ordinary test run.

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use milkglass_core::paths::key_refusal;
use milkglass_core::{DataUrl, Policy};
use milkglass_guard::{ProtectedTable, ROW_ID};
use milkglass_service::UploadKind;
use milkglass_service::ingest::{Format, check_body};
use std::sync::Arc;

/// A fuzz target: bytes in; it panics only on a bug.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their corpus directory.
pub const TARGETS: [(&str, Target); 5] = [
    ("upload_json_lines", upload_json_lines),
    ("upload_arrow", upload_arrow),
    ("policy", policy),
    ("data_url", data_url),
    ("guard", guard),
];

fn decode_as_every_kind(format: Format, data: &[u8]) {
    for kind in [UploadKind::Frames, UploadKind::Labels, UploadKind::Inferences, UploadKind::Embeddings] {
        if let Err(e) = check_body(kind, format, data) {
            assert!(!e.message.is_empty(), "a refusal says why");
        }
    }
}

/// A JSON Lines upload body, read as frames, labels, inferences and embeddings.
pub fn upload_json_lines(data: &[u8]) {
    decode_as_every_kind(Format::JsonLines, data);
}

/// An Arrow IPC stream upload body, read as every kind.
pub fn upload_arrow(data: &[u8]) {
    decode_as_every_kind(Format::ArrowStream, data);
}

/// A policy document.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(policy) = Policy::from_json(text) {
        let written = serde_json::to_string(&policy).expect("a parsed policy serializes");
        let again = Policy::from_json(&written).expect("a policy reads back what it wrote");
        assert_eq!(again, policy, "a policy survives its own JSON");
    }
}

/// A frame's data URL.
pub fn data_url(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match DataUrl::parse("url", text) {
        Ok(DataUrl::Hosted { key }) => assert_eq!(key_refusal(key), None, "a hosted URL's key passes the key rules"),
        Ok(DataUrl::Web(url)) | Ok(DataUrl::Bucket { url, .. }) => assert_eq!(url, text),
        Err(e) => assert_eq!(e.field, "url"),
    }
}

/// Two sets of values for the sanitized column: the same query over either must answer the same.
pub const SECRETS: [[&str; 3]; 2] =
    [["alpha-7f3a", "bravo-19c2", "charlie-e044"], ["zulu-0b1d", "yankee-8e21", "xray-55aa"]];

/// SQL text against a small table (`people`: `age`, `city`, and `secret`, sanitized; min group 3).
/// The query runs twice, over tables that differ only in the sanitized column's values: its answer,
/// its decision and its error must not differ (noninterference, as `milkglass-guard`'s property test
/// checks for generated queries).
pub fn guard(data: &[u8]) {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let [first, second] = SECRETS.map(|secrets| runtime.block_on(answer(sql, secrets)));
    assert_eq!(first, second, "the answer to {sql:?} depends on a sanitized column");
}

/// What a caller would learn from `sql`: the rows, the decision, or the error, as text.
pub async fn answer(sql: &str, secrets: [&str; 3]) -> String {
    let table = people(secrets);
    let policies = [("people".to_string(), table.policy.clone())].into();
    let limits = milkglass_guard::Limits { memory_bytes: 64 << 20, time: std::time::Duration::from_secs(5) };
    let prepared = match milkglass_guard::prepare_within(sql, vec![table], limits).await {
        Ok(prepared) => prepared,
        Err(e) => return format!("refused before running: {e}"),
    };
    match prepared.execute().await {
        Ok(outcome) => {
            let decision = prepared.decide(Some(&outcome), &policies, "fuzzer");
            format!("{decision:?}\n{}", rows_in_any_order(&outcome.batches))
        }
        Err(e) => format!("failed: {e}"),
    }
}

/// The rows as sorted lines of text: batches come in whatever order the partitions finished, and
/// without an ORDER BY the rows may too.
fn rows_in_any_order(batches: &[RecordBatch]) -> String {
    let table = match arrow::util::pretty::pretty_format_batches(batches) {
        Ok(table) => table.to_string(),
        Err(e) => return format!("cannot show the rows: {e}"),
    };
    let mut lines: Vec<&str> = table.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}

fn people(secrets: [&str; 3]) -> ProtectedTable {
    let rows = 12i64;
    let ages = Int64Array::from_iter_values((0..rows).map(|i| 20 + (i % 4) * 10));
    let cities = StringArray::from_iter_values((0..rows).map(|i| ["Paris", "Lyon", "Nice"][(i % 3) as usize]));
    let secrets = StringArray::from_iter_values((0..rows).map(|i| secrets[(i % 3) as usize]));
    let fields = vec![
        Field::new("age", DataType::Int64, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("secret", DataType::Utf8, false),
    ];
    let visible = Arc::new(Schema::new(fields.clone()));
    let mut internal_fields = fields;
    internal_fields.push(Field::new(ROW_ID, DataType::Int64, false));
    let internal = Arc::new(Schema::new(internal_fields));
    let columns: Vec<Arc<dyn arrow::array::Array>> = vec![Arc::new(ages), Arc::new(cities), Arc::new(secrets)];
    let batch = RecordBatch::try_new(visible.clone(), columns.clone()).expect("a batch");
    let mut with_ids = columns;
    with_ids.push(Arc::new(Int64Array::from_iter_values(0..rows)));
    let internal_batch = RecordBatch::try_new(internal.clone(), with_ids).expect("a batch");
    let policy = Policy::from_json(
        r#"{"safe_zone": {"aggregation": {"min_agg_size": 3}}, "unsafe_handling": "reject", "sanitized_columns": ["secret"]}"#,
    )
    .expect("the policy");
    ProtectedTable {
        name: "people".into(),
        reference: TableReference::bare("people"),
        policy,
        visible: Arc::new(MemTable::try_new(visible, vec![vec![batch]]).expect("a table")),
        internal: Arc::new(MemTable::try_new(internal, vec![vec![internal_batch]]).expect("a table")),
        rows: rows as u64,
        shared_ids: false,
    }
}
