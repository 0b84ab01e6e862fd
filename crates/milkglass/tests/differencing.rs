//! Differencing across queries on a real server: an answer whose rows differ from an
//! earlier answer's by fewer than the table's minimum is refused, for the analyst who
//! asked and for every analyst in their pool, across restarts.

mod common;

use common::{Server, add_user, cli, expect_error};
use serde_json::{Value, json};

const TITANIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv");

/// Owner olivia's titanic table (minimum 10 rows, reject) on a server with scientists
/// sam and tess; returns the server and the tokens.
fn setup(dir: &std::path::Path) -> (Server, String, String, String) {
    add_user(dir, "admin", "admin");
    let server = Server::start_on(dir, &[]);
    let owner = add_user(dir, "olivia", "owner");
    let sam = add_user(dir, "sam", "scientist");
    let tess = add_user(dir, "tess", "scientist");
    let policy = dir.join("policy.json");
    let rules = json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject",
                       "sanitized_columns": ["Name"]});
    std::fs::write(&policy, rules.to_string()).unwrap();
    cli(&["table", "upload", TITANIC, "--name", "titanic", "--policy", policy.to_str().unwrap()]
        .iter()
        .copied()
        .chain(["--server", server.base.as_str(), "--token", owner.as_str()])
        .collect::<Vec<_>>());
    (server, owner, sam, tess)
}

fn ask(server: &Server, token: &str, sql: &str) -> reqwest::blocking::Response {
    server.post_json(token, "/api/query", &json!({ "sql": sql }))
}

fn answered(server: &Server, token: &str, sql: &str) -> Value {
    let response = ask(server, token, sql);
    assert_eq!(response.status(), 200, "{sql}: {}", response.text().unwrap());
    response.json().unwrap()
}

fn refused(server: &Server, token: &str, sql: &str) -> String {
    let body = expect_error(ask(server, token, sql), 403);
    body["message"].as_str().unwrap().to_string()
}

#[test]
fn an_answer_that_differs_from_an_earlier_one_by_a_few_rows_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let (mut server, owner, sam, tess) = setup(temp.path());

    // Everyone, then everyone but passenger 7: the difference is one person's fare.
    answered(&server, &sam, "SELECT SUM(Fare) AS total FROM titanic");
    let message = refused(&server, &sam, "SELECT SUM(Fare) AS total FROM titanic WHERE PassengerId <> 7");
    assert!(message.contains("an earlier answer"), "{message}");
    assert!(message.contains("fewer than 10 rows"), "{message}");
    // Grouping does not hide it: the rows that enter the aggregation still differ by one.
    refused(&server, &sam, "SELECT Pclass, AVG(Age) FROM titanic WHERE PassengerId <> 7 GROUP BY Pclass");

    // The individual tracker: C1 = first class, C2 = "PassengerId = 2". Asking about C1
    // and about C1 AND NOT C2 differ by exactly the one person C1 AND C2 picks out.
    answered(&server, &sam, "SELECT COUNT(*) AS n, SUM(Survived) AS s FROM titanic WHERE Pclass = 1");
    refused(
        &server,
        &sam,
        "SELECT COUNT(*) AS n, SUM(Survived) AS s FROM titanic WHERE Pclass = 1 AND PassengerId <> 2",
    );

    // Sets that differ by at least the minimum, or not at all, are fine.
    answered(&server, &sam, "SELECT SUM(Fare) AS total FROM titanic WHERE PassengerId > 20");
    answered(&server, &sam, "SELECT AVG(Fare) AS mean FROM titanic");
    answered(&server, &sam, "SELECT Pclass, COUNT(*) FROM titanic GROUP BY Pclass");

    // Another analyst alone has no earlier answers: the same question is answered.
    answered(&server, &tess, "SELECT SUM(Fare) AS total FROM titanic WHERE PassengerId <> 7");
    // ... and now sam's first question, asked by tess, differs from hers by one row.
    refused(&server, &tess, "SELECT SUM(Fare) AS total FROM titanic");

    // Refused answers leave no memory: the audit log has them, the comparison does not.
    let audit: Value = server.get(&owner, "/api/audit?table=titanic").json().unwrap();
    let refusals = audit["entries"].as_array().unwrap().iter().filter(|e| e["decision"] == "refused").count();
    assert_eq!(refusals, 4, "{audit}");

    // The memory survives a restart.
    server.kill();
    let server = Server::start_on(temp.path(), &[]);
    refused(&server, &sam, "SELECT SUM(Fare) AS total FROM titanic WHERE PassengerId <> 7");
}

#[test]
fn analysts_in_one_pool_share_the_memory() {
    let temp = tempfile::tempdir().unwrap();
    let (server, _owner, sam, tess) = setup(temp.path());
    let dir = temp.path().to_str().unwrap();
    let out = cli(&["user", "pool", "sam", "lab", "--data-dir", dir]);
    assert!(out.contains("pool \"lab\""), "{out}");
    cli(&["user", "pool", "tess", "lab", "--data-dir", dir]);

    // Sam asks about everyone; tess, pooling results with sam, cannot ask about everyone
    // but one.
    answered(&server, &sam, "SELECT AVG(Age) FROM titanic");
    let message = refused(&server, &tess, "SELECT AVG(Age) FROM titanic WHERE PassengerId <> 100");
    assert!(message.contains("yours or your pool's"), "{message}");

    // Out of the pool, tess starts with her own (empty) memory.
    cli(&["user", "pool", "tess", "--data-dir", dir]);
    answered(&server, &tess, "SELECT AVG(Age) FROM titanic WHERE PassengerId <> 100");

    // A pool name is checked like any name, and an unknown user is a clear error.
    let out = std::process::Command::new(common::BIN)
        .args(["user", "pool", "nobody", "lab", "--data-dir", dir])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nobody"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_replaced_or_recreated_table_starts_a_fresh_memory() {
    let temp = tempfile::tempdir().unwrap();
    let (server, owner, sam, _tess) = setup(temp.path());
    answered(&server, &sam, "SELECT SUM(Fare) FROM titanic");
    refused(&server, &sam, "SELECT SUM(Fare) FROM titanic WHERE PassengerId <> 7");

    // Dropped and published again: another table, whose rows earlier answers never saw.
    let dropped = server.request(reqwest::Method::DELETE, &owner, "/api/tables/titanic").send().unwrap();
    assert!(dropped.status().is_success(), "{}", dropped.text().unwrap());
    let policy = temp.path().join("policy.json");
    cli(&["table", "upload", TITANIC, "--name", "titanic", "--policy", policy.to_str().unwrap()]
        .iter()
        .copied()
        .chain(["--server", server.base.as_str(), "--token", owner.as_str()])
        .collect::<Vec<_>>());
    answered(&server, &sam, "SELECT SUM(Fare) FROM titanic WHERE PassengerId <> 7");
}
