//! The guard against queries written to get around it. Each case names its expected
//! decision; docs/PRIVACY.md describes the attacks.

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use milkglass_core::Policy;
use milkglass_guard::{Decision, GuardError, ProtectedTable, ROW_ID, prepare};
use std::collections::HashMap;
use std::sync::Arc;

const POLICY: &str = r#"{"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject",
                         "sanitized_columns": ["Name"], "savable": false}"#;

async fn titanic(policy: &str) -> ProtectedTable {
    let ctx = SessionContext::new();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv");
    let batches = ctx.read_csv(path, CsvReadOptions::new()).await.unwrap().collect().await.unwrap();
    let schema = batches[0].schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROW_ID, DataType::Int64, false));
    let internal_schema = Arc::new(Schema::new(fields));
    let mut next = 0i64;
    let internal: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let ids = Int64Array::from_iter_values(next..next + b.num_rows() as i64);
            next += b.num_rows() as i64;
            let mut columns = b.columns().to_vec();
            columns.push(Arc::new(ids));
            RecordBatch::try_new(internal_schema.clone(), columns).unwrap()
        })
        .collect();
    ProtectedTable {
        name: "titanic".into(),
        reference: TableReference::bare("titanic"),
        policy: Policy::from_json(policy).unwrap(),
        visible: Arc::new(MemTable::try_new(schema, vec![batches]).unwrap()),
        internal: Arc::new(MemTable::try_new(internal_schema, vec![internal]).unwrap()),
        rows: next as u64,
        shared_ids: false,
    }
}

enum Expect {
    Safe,
    /// Unsafe, and the explanation contains this text.
    Unsafe(&'static str),
    /// Refused before running (not a query, or invalid SQL); the error contains this text.
    Error(&'static str),
}

async fn decide(sql: &str, policy: &str, user: &str) -> Result<(Decision, Vec<String>, Vec<RecordBatch>), GuardError> {
    let table = titanic(policy).await;
    let policies: HashMap<String, Policy> = [("titanic".to_string(), table.policy.clone())].into();
    let prepared = prepare(sql, vec![table]).await?;
    let outcome = prepared.execute().await?;
    let decision = prepared.decide(Some(&outcome), &policies, user);
    Ok((decision, prepared.masked_columns(), outcome.batches))
}

async fn check(cases: &[(&str, Expect)]) {
    let mut failures = Vec::new();
    for (sql, expect) in cases {
        let got = decide(sql, POLICY, "sam").await;
        let ok = match (expect, &got) {
            (Expect::Safe, Ok((Decision::Safe, _, _))) => true,
            (Expect::Unsafe(text), Ok((d @ Decision::Unsafe { .. }, _, _))) => d.explanation().contains(text),
            (Expect::Error(text), Err(e)) => e.to_string().contains(text),
            _ => false,
        };
        if !ok {
            let got = match &got {
                Ok((d, _, _)) => format!("{d:?}"),
                Err(e) => format!("error: {e}"),
            };
            failures.push(format!("{sql}\n    got {got}"));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn the_announcement_query_is_answered_exactly() {
    let (decision, masked, batches) = decide(
        "SELECT Pclass, AVG(Survived) AS Survived FROM titanic GROUP BY Pclass ORDER BY Survived DESC",
        POLICY,
        "sam",
    )
    .await
    .unwrap();
    assert_eq!(decision, Decision::Safe);
    assert!(masked.is_empty());
    let text = arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
    for expected in ["0.6296296296", "0.4728260869", "0.2423625254"] {
        assert!(text.contains(expected), "{text}");
    }
}

#[tokio::test]
async fn individual_rows_are_refused_and_sanitized_columns_masked() {
    let (decision, masked, batches) = decide("SELECT * FROM titanic LIMIT 5", POLICY, "sam").await.unwrap();
    assert!(
        decision.explanation().contains(
            "each result value must be determined by at least 10 rows of table \"titanic\"; fewer than 10 rows stand behind the group"
        ),
        "{}",
        decision.explanation()
    );
    assert_eq!(masked, ["Name"]);
    let names = batches[0].column_by_name("Name").unwrap();
    assert_eq!(names.null_count(), names.len(), "Name never leaves the server");
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 5);
}

#[tokio::test]
async fn allowed_queries() {
    check(&[
        ("SELECT COUNT(*) FROM titanic", Expect::Safe),
        ("SELECT Sex, COUNT(*) AS n, AVG(Age) FROM titanic GROUP BY Sex", Expect::Safe),
        ("SELECT Pclass, Sex, AVG(Fare) FROM titanic GROUP BY Pclass, Sex", Expect::Safe),
        ("SELECT Pclass, COUNT(*) FROM titanic GROUP BY Pclass HAVING COUNT(*) > 200", Expect::Safe),
        ("SELECT AVG(f) FROM (SELECT Pclass, AVG(Fare) AS f FROM titanic GROUP BY Pclass) AS t", Expect::Safe),
        ("SELECT DISTINCT Pclass FROM titanic", Expect::Safe),
        ("SELECT Sex AS k, COUNT(*) FROM titanic GROUP BY Sex UNION ALL SELECT CAST(Pclass AS VARCHAR), COUNT(*) FROM titanic GROUP BY Pclass", Expect::Safe),
        ("SELECT a.Pclass, a.n, b.f FROM (SELECT Pclass, COUNT(*) AS n FROM titanic GROUP BY Pclass) a JOIN (SELECT Pclass, AVG(Fare) AS f FROM titanic GROUP BY Pclass) b ON a.Pclass = b.Pclass", Expect::Safe),
        ("SELECT a.Pclass, COUNT(*) FROM titanic a JOIN titanic b ON a.Pclass = b.Pclass GROUP BY a.Pclass", Expect::Safe),
        ("SELECT Pclass, n, RANK() OVER (ORDER BY n) FROM (SELECT Pclass, COUNT(*) AS n FROM titanic GROUP BY Pclass) t", Expect::Safe),
        ("WITH s AS (SELECT Sex, AVG(Age) AS a FROM titanic GROUP BY Sex) SELECT * FROM s", Expect::Safe),
        ("SELECT COUNT(*) FROM titanic WHERE Pclass IN (1, 2)", Expect::Safe),
        ("SELECT Survived, AVG(Age), STDDEV(Age) FROM titanic GROUP BY Survived", Expect::Safe),
        ("SELECT COUNT(*) FROM titanic WHERE Age > 200", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT Pclass, COUNT(*) FROM titanic GROUP BY Pclass HAVING COUNT(*) > 10000", Expect::Safe),
        ("SELECT COUNT(*) FROM titanic WHERE Pclass IN (SELECT Pclass FROM titanic GROUP BY Pclass HAVING COUNT(*) > 200)", Expect::Safe),
        ("SELECT Sex, COUNT(*) FROM titanic t WHERE EXISTS (SELECT 1 FROM titanic u WHERE u.Pclass = t.Pclass AND u.Fare > 50) GROUP BY Sex", Expect::Safe),
    ])
    .await;
}

#[tokio::test]
async fn attacks_are_refused() {
    check(&[
        // Rows of individuals, however they are dressed up.
        ("SELECT * FROM titanic LIMIT 5", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT Age FROM titanic ORDER BY Age DESC LIMIT 1", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT PassengerId, Age FROM titanic WHERE PassengerId = 7", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT Age, ROW_NUMBER() OVER (ORDER BY PassengerId) FROM titanic", Expect::Unsafe("window function over individual rows")),
        ("SELECT PassengerId, AVG(Age) OVER (PARTITION BY PassengerId) FROM titanic", Expect::Unsafe("window function over individual rows")),
        ("SELECT * FROM (SELECT Age FROM titanic) t UNION ALL SELECT 1", Expect::Unsafe("fewer than 10 rows stand behind")),
        // A global aggregate over a filter that leaves one person.
        ("SELECT AVG(Age) FROM titanic WHERE PassengerId = 7", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT SUM(Fare) FROM titanic WHERE Ticket = '113803'", Expect::Unsafe("fewer than 10 rows stand behind")),
        // Groups too small, keyed on a near-unique column.
        ("SELECT PassengerId, COUNT(*) FROM titanic GROUP BY PassengerId", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT Embarked, COUNT(*) FROM titanic GROUP BY Embarked", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT Ticket, AVG(Fare) FROM titanic GROUP BY Ticket ORDER BY 2 DESC LIMIT 3", Expect::Unsafe("fewer than 10 rows stand behind")),
        // One individual's value out of a big group.
        ("SELECT MAX(Fare) FROM titanic", Expect::Unsafe("max can return one individual's value")),
        ("SELECT Pclass, MIN(Age) FROM titanic GROUP BY Pclass", Expect::Unsafe("min can return one individual's value")),
        ("SELECT FIRST_VALUE(Age ORDER BY PassengerId) FROM titanic", Expect::Unsafe("first_value")),
        ("SELECT ARRAY_AGG(Age) FROM titanic", Expect::Unsafe("array_agg")),
        ("SELECT STRING_AGG(Ticket, ',') FROM titanic", Expect::Unsafe("string_agg")),
        ("SELECT MEDIAN(Age) FROM titanic", Expect::Unsafe("median")),
        ("SELECT SUM(Age) FILTER (WHERE PassengerId = 7) FROM titanic", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT PassengerId, LAG(Age) OVER (ORDER BY PassengerId) FROM titanic", Expect::Unsafe("window function over individual rows")),
        // A sanitized column as a key, directly or renamed.
        ("SELECT COUNT(*) FROM titanic WHERE Name LIKE 'Braund%'", Expect::Unsafe("using it as a filter is refused")),
        ("SELECT n, COUNT(*) FROM (SELECT Name AS n FROM titanic) t GROUP BY n", Expect::Unsafe("using it as a group key is refused")),
        ("SELECT LENGTH(Name) AS l, COUNT(*) FROM titanic GROUP BY LENGTH(Name)", Expect::Unsafe("sanitized")),
        ("SELECT a.Pclass, COUNT(*) FROM titanic a JOIN titanic b ON a.Name = b.Name GROUP BY a.Pclass", Expect::Unsafe("join key")),
        ("SELECT Sex, COUNT(*) FROM titanic GROUP BY Sex ORDER BY MAX(Name)", Expect::Unsafe("sanitized")),
        // Semi joins and subqueries whose filtering side reads the table.
        ("SELECT COUNT(*) FROM titanic WHERE PassengerId IN (SELECT PassengerId FROM titanic WHERE Age > 70)", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT COUNT(*) FROM titanic t WHERE EXISTS (SELECT 1 FROM titanic u WHERE u.Ticket = t.Ticket AND u.Age < 1)", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT COUNT(*) FROM titanic WHERE PassengerId NOT IN (SELECT PassengerId FROM titanic WHERE Age > 70)", Expect::Unsafe("")),
        ("SELECT COUNT(*) FROM titanic WHERE Age = (SELECT MAX(Age) FROM titanic)", Expect::Unsafe("")),
        // A list of the analyst's own ids, joined in.
        ("SELECT AVG(t.Age) FROM titanic t JOIN (VALUES (7), (8)) v(id) ON t.PassengerId = v.id", Expect::Unsafe("fewer than 10 rows stand behind")),
        ("SELECT AVG(Age) FROM titanic WHERE PassengerId IN (7, 8, 9)", Expect::Unsafe("fewer than 10 rows stand behind")),
        // Not a SELECT, or not this table.
        ("DROP TABLE titanic", Expect::Error("only SELECT")),
        ("INSERT INTO titanic VALUES (1)", Expect::Error("only SELECT")),
        ("COPY titanic TO '/tmp/out.csv'", Expect::Error("only SELECT")),
        ("CREATE TABLE x AS SELECT * FROM titanic", Expect::Error("only SELECT")),
        ("SELECT 1; SELECT 2", Expect::Error("exactly one")),
        ("SET datafusion.execution.batch_size = 1", Expect::Error("only SELECT")),
        ("SELECT * FROM '/etc/passwd'", Expect::Error("")),
        ("SELECT * FROM read_csv('/etc/passwd')", Expect::Error("")),
        ("SELECT * FROM secrets", Expect::Error("secrets")),
        ("SELECT __mg_row FROM titanic", Expect::Error("reserved")),
        ("SELEC COUNT(*) FROM titanic", Expect::Error("syntax")),
        ("EXPLAIN SELECT * FROM titanic", Expect::Error("only SELECT")),
    ])
    .await;
}

#[tokio::test]
async fn policies_with_users_and_alternatives() {
    let trusted = r#"{"safe_zone": {"at_least": {"n": 1, "of": [{"user": "alice"}, {"aggregation": {"min_agg_size": 10}}]}},
                      "sanitized_columns": ["Name"]}"#;
    let (d, masked, _) = decide("SELECT * FROM titanic LIMIT 3", trusted, "alice").await.unwrap();
    assert_eq!(d, Decision::Safe, "alice is trusted");
    assert_eq!(masked, ["Name"], "but sanitized columns stay hidden even from her");
    let (d, _, _) = decide("SELECT * FROM titanic LIMIT 3", trusted, "sam").await.unwrap();
    assert!(d.explanation().contains("at least 1 of these must hold"), "{}", d.explanation());
    let (d, _, _) = decide(
        "SELECT MAX(Age) FROM titanic",
        r#"{"safe_zone": {"aggregation": {"min_agg_size": 10}}, "allow_extremes": true}"#,
        "sam",
    )
    .await
    .unwrap();
    assert_eq!(d, Decision::Safe);
}

const LOG_POLICY: &str = r#"{"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "log",
                             "sanitized_columns": ["Name"]}"#;

/// The same query on plain DataFusion over the same file: the reference for values.
async fn plain(sql: &str) -> String {
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false),
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv");
    ctx.register_csv("titanic", path, CsvReadOptions::new()).await.unwrap();
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

fn text(batches: &[RecordBatch]) -> String {
    arrow::util::pretty::pretty_format_batches(batches).unwrap().to_string()
}

#[tokio::test]
async fn a_join_returns_exactly_the_callers_columns_with_every_name_null() {
    // The column shift: with hidden columns in the middle of a join's batch, the first
    // N columns were not the caller's. Under log handling the rows are released.
    let sql = "SELECT * FROM titanic a JOIN titanic b ON a.PassengerId = b.PassengerId WHERE a.PassengerId = 7";
    let (decision, masked, batches) = decide(sql, LOG_POLICY, "sam").await.unwrap();
    assert!(matches!(decision, Decision::Unsafe { .. }));
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names.len(), 24, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with("__mg")), "{names:?}");
    assert_eq!(masked, ["Name", "Name"]);
    for (i, field) in schema.fields().iter().enumerate() {
        let column = batches[0].column(i);
        if field.name() == "Name" {
            assert_eq!(column.null_count(), column.len());
        }
    }
    // The real columns are there, in place: PassengerId first on each side, Age 7th.
    let shown = text(&batches);
    assert!(shown.contains("| 7           |"), "{shown}");
    assert!(shown.contains("| 54.0 |") || shown.contains("| 54 "), "Age of passenger 7 is in its column: {shown}");
    // Packing Name into numbers reads NULL: nothing above the scan sees the values.
    let packed = "SELECT a.PassengerId, ASCII(SUBSTR(b.Name, 1, 1)) AS c, LENGTH(b.Name) AS l \
                  FROM titanic a JOIN titanic b ON a.PassengerId = b.PassengerId WHERE a.PassengerId = 7";
    let (_, masked, batches) = decide(packed, LOG_POLICY, "sam").await.unwrap();
    assert_eq!(masked, ["c", "l"]);
    assert_eq!(batches[0].column(1).null_count(), 1);
    assert_eq!(batches[0].column(2).null_count(), 1);
}

#[tokio::test]
async fn grouping_sets_keep_lineage_and_counts() {
    let (_, masked, batches) =
        decide("SELECT Sex, Name, COUNT(*) AS n FROM titanic GROUP BY ROLLUP(Sex, Name)", LOG_POLICY, "sam")
            .await
            .unwrap();
    assert_eq!(masked, ["Name"]);
    let schema = batches[0].schema();
    assert_eq!(schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["Sex", "Name", "n"]);
    // CUBE puts each person into every set: the outer count must not add them up.
    check(&[
        (
            "SELECT COUNT(*) FROM (SELECT Sex, Pclass FROM titanic WHERE PassengerId IN (7, 8, 9, 10, 11) GROUP BY CUBE(Sex, Pclass)) t",
            Expect::Unsafe("fewer than 10"),
        ),
        ("SELECT Sex, Pclass, COUNT(*) FROM titanic GROUP BY ROLLUP(Sex, Pclass)", Expect::Safe),
    ])
    .await;
}

#[tokio::test]
async fn refusals_and_errors_do_not_depend_on_a_sanitized_column() {
    // Whatever Name holds, it reads NULL: the division never happens, the filter never
    // passes, and the answer is the same.
    for sql in [
        "SELECT COUNT(*) AS n FROM titanic WHERE 1 / (CASE WHEN Name LIKE 'McCarthy%' THEN 0 ELSE 1 END) > 0",
        "SELECT COUNT(*) AS n FROM titanic WHERE Name IS NULL",
        "SELECT Pclass, COUNT(*) AS n FROM titanic GROUP BY Pclass HAVING MAX(LENGTH(Name)) > 3",
    ] {
        let got = decide(sql, LOG_POLICY, "sam").await;
        assert!(got.is_ok(), "{sql}: {:?}", got.err());
    }
    let (_, _, batches) =
        decide("SELECT COUNT(*) AS n FROM titanic WHERE Name IS NULL", LOG_POLICY, "sam").await.unwrap();
    assert!(text(&batches).contains("891"), "every Name reads NULL");
}

#[tokio::test]
async fn data_dependent_runtime_errors_become_nulls() {
    // Errors on guarded values would tell whether someone is 22, or has a ticket that is
    // not a number.
    let sql = "SELECT COUNT(*) AS n FROM titanic WHERE 10 / (CAST(Age AS BIGINT) - 22) IS NOT NULL";
    let (decision, _, batches) = decide(sql, POLICY, "sam").await.unwrap();
    assert_eq!(decision, Decision::Safe);
    let reference = plain("SELECT COUNT(*) AS n FROM titanic WHERE CAST(Age AS BIGINT) <> 22").await;
    assert_eq!(text(&batches), reference);
    let (decision, _, _) = decide("SELECT SUM(CAST(Ticket AS BIGINT)) AS s FROM titanic", POLICY, "sam").await.unwrap();
    assert!(matches!(decision, Decision::Unsafe { .. }), "a cast of text is refused inside an aggregate");
    let (decision, _, _) =
        decide("SELECT COUNT(*) FROM titanic WHERE CAST(Ticket AS BIGINT) > 100000", POLICY, "sam").await.unwrap();
    assert_eq!(decision, Decision::Safe, "the same cast in a filter runs, as NULL for non-numbers");
}

#[tokio::test]
async fn refusals_never_say_the_small_count() {
    for sql in [
        "SELECT COUNT(*) FROM titanic WHERE PassengerId = 7",
        "SELECT COUNT(*) FROM titanic WHERE PassengerId = 7 AND Survived = 1",
        "SELECT COUNT(*) FROM titanic WHERE Age > 200",
    ] {
        let (decision, _, _) = decide(sql, POLICY, "sam").await.unwrap();
        let explanation = decision.explanation();
        assert!(explanation.contains("fewer than 10"), "{explanation}");
        assert!(!explanation.chars().any(|c| c.is_ascii_digit() && c != '1' && c != '0'), "{explanation}");
        assert!(!explanation.contains(" 1 ") && !explanation.contains(" 0 "), "{explanation}");
    }
}

#[tokio::test]
async fn thresholds_count_the_rows_that_decide_each_value() {
    check(&[
        // One row's value inside a big group.
        ("SELECT AVG(CASE WHEN PassengerId = 7 THEN Age END) FROM titanic", Expect::Unsafe("fewer than 10")),
        ("SELECT SUM(Fare * CAST(PassengerId = 7 AS DOUBLE)) FROM titanic", Expect::Unsafe("fewer than 10")),
        ("SELECT SUM(Fare * CAST(PassengerId = 7 AS DOUBLE) + 1) FROM titanic", Expect::Unsafe("fewer than 10")),
        ("SELECT Pclass, SUM(CASE WHEN PassengerId = 7 AND Survived = 1 THEN 1 ELSE 0 END) FROM titanic GROUP BY Pclass", Expect::Unsafe("fewer than 10")),
        ("SELECT AVG(NULLIF(PassengerId, 7) * 0 + Age) FROM titanic", Expect::Unsafe("fewer than 10")),
        ("SELECT SUM(x) FROM (SELECT CASE WHEN PassengerId = 7 THEN Fare ELSE 0 END AS x FROM titanic) t", Expect::Unsafe("fewer than 10")),
        ("SELECT COUNT(*) FILTER (WHERE PassengerId <> 7) FROM titanic", Expect::Unsafe("fewer than 10")),
        // Arithmetic that builds an indicator out of a row's identity.
        ("SELECT SUM(Fare * (1 / (1 + (PassengerId - 7) * (PassengerId - 7)))) FROM titanic", Expect::Unsafe("single out rows")),
        ("SELECT SUM(Fare * FLOOR(1.0 / (1 + ABS(PassengerId - 7)))) FROM titanic", Expect::Unsafe("single out rows")),
        ("SELECT SUM(Fare * POWER(0, ABS(PassengerId - 7))) FROM titanic", Expect::Unsafe("single out rows")),
        // A HAVING on such a sum decides which groups appear.
        ("SELECT Pclass, COUNT(*) FROM titanic GROUP BY Pclass HAVING SUM(Fare * CAST(PassengerId = 7 AS DOUBLE)) > 10", Expect::Unsafe("fewer than 10")),
        // A HAVING or a LIMIT hides the small group the others are compared with.
        ("SELECT COUNT(*), SUM(Fare) FROM titanic GROUP BY GROUPING SETS ((), (PassengerId = 7)) HAVING COUNT(*) > 100", Expect::Unsafe("fewer than 10")),
        ("SELECT n FROM (SELECT PassengerId, COUNT(*) AS n FROM titanic GROUP BY PassengerId) t ORDER BY n DESC LIMIT 1", Expect::Unsafe("fewer than 10")),
        ("SELECT Pclass, Sex, Embarked, COUNT(*) FROM titanic GROUP BY Pclass, Sex, Embarked HAVING COUNT(*) >= 10", Expect::Safe),
        // A window frame copies a small group's value into a big group's row.
        ("SELECT k, w FROM (SELECT k, SUM(s) OVER (ORDER BY k ROWS 1 PRECEDING) AS w FROM (SELECT PassengerId = 7 AS k, SUM(Fare) AS s FROM titanic GROUP BY PassengerId = 7) a) b WHERE k = true", Expect::Unsafe("fewer than 10")),
        // Aggregates over small groups, re-aggregated.
        ("SELECT MAX(s) FROM (SELECT PassengerId, SUM(Fare) AS s FROM titanic GROUP BY PassengerId) t", Expect::Unsafe("fewer than 10")),
        ("SELECT SUM(CASE WHEN PassengerId = 7 THEN s END) FROM (SELECT PassengerId, SUM(Fare) AS s FROM titanic GROUP BY PassengerId) t", Expect::Unsafe("fewer than 10")),
        // A literal branch of a union passes for no group.
        ("SELECT Sex, COUNT(*) FROM titanic WHERE PassengerId = 7 GROUP BY Sex UNION ALL SELECT 'x', 100", Expect::Unsafe("fewer than 10")),
        ("SELECT SUM(n) FROM (SELECT COUNT(*) AS n FROM titanic WHERE PassengerId = 7 UNION ALL SELECT 100) t", Expect::Unsafe("fewer than 10")),
        // Aggregates over few present values.
        ("SELECT Pclass, AVG(Age) FROM titanic WHERE Age IS NULL OR PassengerId = 7 GROUP BY Pclass", Expect::Unsafe("the rows that enter avg")),
    ])
    .await;
}

#[tokio::test]
async fn differencing_inside_one_query_is_refused() {
    check(&[
        ("SELECT a.s - b.s FROM (SELECT SUM(Fare) AS s FROM titanic) a CROSS JOIN (SELECT SUM(Fare) AS s FROM titanic WHERE PassengerId <> 7) b", Expect::Unsafe("differ by fewer than 10")),
        ("SELECT SUM(Fare) FROM titanic UNION ALL SELECT SUM(Fare) FROM titanic WHERE PassengerId <> 7", Expect::Unsafe("differ by fewer than 10")),
        ("SELECT SUM(Fare) - (SELECT SUM(Fare) FROM titanic WHERE PassengerId <> 7) FROM titanic", Expect::Unsafe("differ by fewer than 10")),
        ("SELECT Pclass, SUM(Fare) FROM titanic GROUP BY Pclass UNION ALL SELECT Pclass, SUM(Fare) FROM titanic WHERE Age IS NULL OR Age <> 54 GROUP BY Pclass", Expect::Unsafe("differ by fewer than 10")),
        // Two parts that differ by many rows are fine.
        ("SELECT SUM(Fare) FROM titanic UNION ALL SELECT SUM(Fare) FROM titanic WHERE Pclass = 1", Expect::Safe),
    ])
    .await;
}

#[tokio::test]
async fn legitimate_queries_over_safe_aggregates_are_answered_exactly() {
    let cases = [
        "SELECT COUNT(*) AS n FROM titanic WHERE Age > (SELECT AVG(Age) FROM titanic)",
        "SELECT Pclass, COUNT(*) AS n FROM titanic WHERE Fare > (SELECT AVG(Fare) FROM titanic) GROUP BY Pclass ORDER BY Pclass",
        "SELECT MAX(n) AS m FROM (SELECT Pclass, COUNT(*) AS n FROM titanic GROUP BY Pclass) t",
        "SELECT MIN(f) AS m FROM (SELECT Pclass, AVG(Fare) AS f FROM titanic GROUP BY Pclass) t",
        "SELECT Pclass, n, LAG(n) OVER (ORDER BY Pclass) AS prev FROM (SELECT Pclass, COUNT(*) AS n FROM titanic GROUP BY Pclass) t ORDER BY Pclass",
        "SELECT Pclass, AVG(CASE WHEN Sex = 'female' THEN 1.0 ELSE 0.0 END) AS f FROM titanic GROUP BY Pclass ORDER BY Pclass",
        "SELECT Sex, SUM(CAST(Survived = 1 AS BIGINT)) AS s FROM titanic GROUP BY Sex ORDER BY Sex",
        "SELECT Pclass, AVG(Fare / 2.0) AS f, AVG(Age) AS a FROM titanic GROUP BY Pclass ORDER BY Pclass",
        "SELECT Sex, COUNT(*) AS n FROM titanic GROUP BY Sex HAVING COUNT(*) > 400",
        "SELECT COUNT(DISTINCT Ticket) AS t FROM titanic",
    ];
    for sql in cases {
        let (decision, _, batches) = decide(sql, POLICY, "sam").await.unwrap();
        assert_eq!(decision, Decision::Safe, "{sql}: {}", decision.explanation());
        assert_eq!(text(&batches), plain(sql).await, "{sql}");
    }
}

#[tokio::test]
async fn a_runaway_query_is_stopped_at_its_limit() {
    let table = titanic(POLICY).await;
    let limits = milkglass_guard::Limits { memory_bytes: 64 << 20, time: std::time::Duration::from_secs(3) };
    let prepared = milkglass_guard::prepare_within(
        "SELECT COUNT(*) FROM titanic a, titanic b, titanic c WHERE a.Age + b.Age + c.Age > 0",
        vec![table],
        limits,
    )
    .await
    .unwrap();
    let start = std::time::Instant::now();
    let err = prepared.execute().await.err().expect("a three-way cross join does not finish in 3 s");
    assert!(matches!(err, GuardError::Stopped(_)), "{err:?}");
    assert!(err.to_string().contains("was stopped"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10), "stopped promptly: {:?}", start.elapsed());
}
