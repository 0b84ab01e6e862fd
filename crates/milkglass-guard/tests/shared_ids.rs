//! Tables whose rows share ids (a dataset's labels, where the id is the row's frame or its
//! driver): a minimum counts distinct ids, never rows. Generated data, every grouping and
//! filter below, against a count done here by hand: the answer is safe exactly when every
//! result row stands for at least k distinct units.

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use milkglass_core::Policy;
use milkglass_guard::{Decision, ProtectedTable, ROW_ID, TableReference, prepare};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

struct Row {
    class: String,
    weather: String,
    x: f64,
    unit: i64,
}

/// Rows of `units` drivers; a small linear congruential generator keeps the data the same on every run.
fn rows(n: usize, units: i64, seed: u64) -> Vec<Row> {
    let mut state = seed;
    let mut next = move |m: u64| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    (0..n)
        .map(|_| {
            let unit = next(units as u64) as i64;
            // Driver 0 drives in fog only: many rows, one unit.
            let weather = if unit == 0 { "fog".to_string() } else { format!("w{}", next(3)) };
            Row { class: format!("c{}", next(4)), weather, x: next(100) as f64, unit }
        })
        .collect()
}

fn table(rows: &[Row], units: i64, k: u64) -> ProtectedTable {
    let visible_schema = Arc::new(Schema::new(vec![
        Field::new("class", DataType::Utf8, false),
        Field::new("weather", DataType::Utf8, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let mut fields: Vec<Field> = visible_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROW_ID, DataType::Int64, false));
    let internal_schema = Arc::new(Schema::new(fields));
    let class = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.class.as_str())));
    let weather = Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.weather.as_str())));
    let x = Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.x)));
    let ids = Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.unit)));
    let visible =
        RecordBatch::try_new(visible_schema.clone(), vec![class.clone(), weather.clone(), x.clone()]).unwrap();
    let internal = RecordBatch::try_new(internal_schema.clone(), vec![class, weather, x, ids]).unwrap();
    let policy = format!(r#"{{"safe_zone": {{"aggregation": {{"min_agg_size": {k}}}}}, "unsafe_handling": "reject"}}"#);
    ProtectedTable {
        name: "p/d/labels".into(),
        reference: TableReference::partial("d", "labels"),
        policy: Policy::from_json(&policy).unwrap(),
        visible: Arc::new(MemTable::try_new(visible_schema, vec![vec![visible]]).unwrap()),
        internal: Arc::new(MemTable::try_new(internal_schema, vec![vec![internal]]).unwrap()),
        rows: units as u64,
        shared_ids: true,
    }
}

/// The fewest distinct units behind one group of `rows` that pass `keep`, grouped by `key`.
fn fewest_units(rows: &[Row], keep: impl Fn(&Row) -> bool, key: impl Fn(&Row) -> String) -> Option<usize> {
    let mut groups: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for row in rows.iter().filter(|r| keep(r)) {
        groups.entry(key(row)).or_default().insert(row.unit);
    }
    groups.values().map(BTreeSet::len).min()
}

async fn decide(table: ProtectedTable, sql: &str) -> Decision {
    let policies = HashMap::from([(table.name.clone(), table.policy.clone())]);
    let prepared = prepare(sql, vec![table]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let outcome = prepared.execute().await.unwrap();
    prepared.decide(Some(&outcome), &policies, "sam")
}

#[tokio::test]
async fn a_minimum_counts_distinct_units_in_every_grouping_and_filter() {
    type Keep = fn(&Row) -> bool;
    type Key = fn(&Row) -> String;
    let cases: [(&str, Keep, Key); 6] = [
        ("SELECT class, COUNT(*) AS n FROM d.labels GROUP BY class", |_| true, |r| r.class.clone()),
        (
            "SELECT weather, class, AVG(x) AS m FROM d.labels GROUP BY weather, class",
            |_| true,
            |r| format!("{}/{}", r.weather, r.class),
        ),
        ("SELECT COUNT(*) AS n FROM d.labels WHERE weather = 'fog'", |r| r.weather == "fog", |_| String::new()),
        (
            "SELECT class, SUM(x) AS s FROM d.labels WHERE weather <> 'w0' GROUP BY class",
            |r| r.weather != "w0",
            |r| r.class.clone(),
        ),
        ("SELECT weather, COUNT(*) AS n FROM d.labels GROUP BY weather", |_| true, |r| r.weather.clone()),
        (
            "SELECT COUNT(*) AS n FROM datafusion.d.labels WHERE x < 50 AND class = 'c1'",
            |r| r.x < 50.0 && r.class == "c1",
            |_| String::new(),
        ),
    ];
    let mut safe_and_unsafe = (0, 0);
    for seed in 1..=6u64 {
        let units = 3 + (seed as i64 % 4) * 2;
        let data = rows(120, units, seed);
        for k in [2u64, 3, 5] {
            for (sql, keep, key) in &cases {
                let Some(fewest) = fewest_units(&data, keep, key) else { continue };
                let decision = decide(table(&data, units, k), sql).await;
                let expected_safe = fewest as u64 >= k;
                assert_eq!(
                    decision == Decision::Safe,
                    expected_safe,
                    "seed {seed}, {units} units, k {k}: {sql}: fewest {fewest} units, decided {decision:?}"
                );
                if expected_safe { safe_and_unsafe.0 += 1 } else { safe_and_unsafe.1 += 1 }
            }
        }
    }
    // The cases tried both sides of the rule.
    assert!(safe_and_unsafe.0 > 10 && safe_and_unsafe.1 > 10, "{safe_and_unsafe:?}");
}

#[tokio::test]
async fn many_rows_of_one_unit_never_pass_for_many_people() {
    // 60 rows, all of driver 0, under a minimum of 2: as one person as a single row is.
    let data: Vec<Row> =
        (0..60).map(|i| Row { class: "c0".into(), weather: "fog".into(), x: f64::from(i), unit: 0 }).collect();
    for sql in [
        "SELECT COUNT(*) AS n FROM d.labels",
        "SELECT class, AVG(x) AS m FROM d.labels GROUP BY class",
        "SELECT COUNT(DISTINCT x) AS n FROM d.labels WHERE x > 3",
    ] {
        let decision = decide(table(&data, 1, 2), sql).await;
        assert!(matches!(decision, Decision::Unsafe { .. }), "{sql}: {decision:?}");
    }
}

#[tokio::test]
async fn an_open_table_runs_uncounted_but_a_thresholded_one_beside_it_still_decides() {
    let data = rows(60, 3, 9);
    let mut open = table(&data, 3, 2);
    open.policy = Policy::from_json(r#"{"safe_zone": true, "unsafe_handling": "log"}"#).unwrap();
    let policies = HashMap::from([(open.name.clone(), open.policy.clone())]);
    let prepared = prepare("SELECT class, x FROM d.labels", vec![open]).await.unwrap();
    let outcome = prepared.execute().await.unwrap();
    assert_eq!(outcome.rows, 60);
    assert_eq!(prepared.decide(Some(&outcome), &policies, "victor"), Decision::Safe);

    // The same rows under a minimum, read in one query with the open table: the minimum holds.
    let mut open = table(&data, 3, 2);
    open.policy = Policy::from_json(r#"{"safe_zone": true, "unsafe_handling": "log"}"#).unwrap();
    let mut guarded = table(&data, 3, 2);
    guarded.name = "p/e/labels".into();
    guarded.reference = TableReference::partial("e", "labels");
    let policies =
        HashMap::from([(open.name.clone(), open.policy.clone()), (guarded.name.clone(), guarded.policy.clone())]);
    let sql = "SELECT l.class, e.x FROM d.labels l JOIN e.labels e ON l.x = e.x";
    let prepared = prepare(sql, vec![open, guarded]).await.unwrap();
    let outcome = prepared.execute().await.unwrap();
    assert!(matches!(prepared.decide(Some(&outcome), &policies, "victor"), Decision::Unsafe { .. }));
}
