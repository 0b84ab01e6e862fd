//! The guard against queries written to get around it. Each case names its expected
//! decision; docs/PRIVACY.md describes the attacks.

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
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
        policy: Policy::from_json(policy).unwrap(),
        visible: Arc::new(MemTable::try_new(schema, vec![batches]).unwrap()),
        internal: Arc::new(MemTable::try_new(internal_schema, vec![internal]).unwrap()),
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
            "each result row must aggregate at least 10 rows of table \"titanic\"; the smallest group here has 1"
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
        ("SELECT COUNT(*) FROM titanic WHERE Age > 200", Expect::Unsafe("smallest group here has 0")),
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
        ("SELECT * FROM titanic LIMIT 5", Expect::Unsafe("smallest group here has 1")),
        ("SELECT Age FROM titanic ORDER BY Age DESC LIMIT 1", Expect::Unsafe("smallest group here has 1")),
        ("SELECT PassengerId, Age FROM titanic WHERE PassengerId = 7", Expect::Unsafe("smallest group here has 1")),
        ("SELECT Age, ROW_NUMBER() OVER (ORDER BY PassengerId) FROM titanic", Expect::Unsafe("smallest group here has 1")),
        ("SELECT PassengerId, AVG(Age) OVER (PARTITION BY PassengerId) FROM titanic", Expect::Unsafe("smallest group here has 1")),
        ("SELECT * FROM (SELECT Age FROM titanic) t UNION ALL SELECT 1", Expect::Unsafe("smallest group here has 1")),
        // A global aggregate over a filter that leaves one person.
        ("SELECT AVG(Age) FROM titanic WHERE PassengerId = 7", Expect::Unsafe("smallest group here has 1")),
        ("SELECT SUM(Fare) FROM titanic WHERE Ticket = '113803'", Expect::Unsafe("smallest group here has 2")),
        // Groups too small, keyed on a near-unique column.
        ("SELECT PassengerId, COUNT(*) FROM titanic GROUP BY PassengerId", Expect::Unsafe("smallest group here has 1")),
        ("SELECT Embarked, COUNT(*) FROM titanic GROUP BY Embarked", Expect::Unsafe("smallest group here has 2")),
        ("SELECT Ticket, AVG(Fare) FROM titanic GROUP BY Ticket ORDER BY 2 DESC LIMIT 3", Expect::Unsafe("smallest group here has")),
        // One individual's value out of a big group.
        ("SELECT MAX(Fare) FROM titanic", Expect::Unsafe("max can return one individual's value")),
        ("SELECT Pclass, MIN(Age) FROM titanic GROUP BY Pclass", Expect::Unsafe("min can return one individual's value")),
        ("SELECT FIRST_VALUE(Age ORDER BY PassengerId) FROM titanic", Expect::Unsafe("first_value")),
        ("SELECT ARRAY_AGG(Age) FROM titanic", Expect::Unsafe("array_agg")),
        ("SELECT STRING_AGG(Ticket, ',') FROM titanic", Expect::Unsafe("string_agg")),
        ("SELECT MEDIAN(Age) FROM titanic", Expect::Unsafe("median")),
        ("SELECT SUM(Age) FILTER (WHERE PassengerId = 7) FROM titanic", Expect::Unsafe("FILTER clause")),
        ("SELECT PassengerId, LAG(Age) OVER (ORDER BY PassengerId) FROM titanic", Expect::Unsafe("lag")),
        // A sanitized column as a key, directly or renamed.
        ("SELECT COUNT(*) FROM titanic WHERE Name LIKE 'Braund%'", Expect::Unsafe("using it as a filter reveals it")),
        ("SELECT n, COUNT(*) FROM (SELECT Name AS n FROM titanic) t GROUP BY n", Expect::Unsafe("using it as a group key reveals it")),
        ("SELECT LENGTH(Name) AS l, COUNT(*) FROM titanic GROUP BY LENGTH(Name)", Expect::Unsafe("sanitized")),
        ("SELECT a.Pclass, COUNT(*) FROM titanic a JOIN titanic b ON a.Name = b.Name GROUP BY a.Pclass", Expect::Unsafe("join key")),
        ("SELECT Sex, COUNT(*) FROM titanic GROUP BY Sex ORDER BY MAX(Name)", Expect::Unsafe("sanitized")),
        // Semi joins and subqueries whose filtering side reads the table.
        ("SELECT COUNT(*) FROM titanic WHERE PassengerId IN (SELECT PassengerId FROM titanic WHERE Age > 70)", Expect::Unsafe("smallest group here has")),
        ("SELECT COUNT(*) FROM titanic t WHERE EXISTS (SELECT 1 FROM titanic u WHERE u.Ticket = t.Ticket AND u.Age < 1)", Expect::Unsafe("smallest group here has")),
        ("SELECT COUNT(*) FROM titanic WHERE PassengerId NOT IN (SELECT PassengerId FROM titanic WHERE Age > 70)", Expect::Unsafe("")),
        ("SELECT COUNT(*) FROM titanic WHERE Age = (SELECT MAX(Age) FROM titanic)", Expect::Unsafe("")),
        // A list of the analyst's own ids, joined in.
        ("SELECT AVG(t.Age) FROM titanic t JOIN (VALUES (7), (8)) v(id) ON t.PassengerId = v.id", Expect::Unsafe("smallest group here has 2")),
        ("SELECT AVG(Age) FROM titanic WHERE PassengerId IN (7, 8, 9)", Expect::Unsafe("smallest group here has 3")),
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
