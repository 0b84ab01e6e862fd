//! Guarded tables end to end on a real server: the owner publishes Titanic with a
//! policy, a scientist queries it, and every query lands in the audit log.

mod common;

use common::{BIN, Server, add_user, cli, expect_error};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

fn titanic_csv() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv"))
}

fn policy(handling: &str) -> String {
    json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": handling,
           "sanitized_columns": ["Name"], "savable": false})
    .to_string()
}

struct Setup {
    server: Server,
    owner: String,
    scientist: String,
}

/// A server with owner olivia's titanic table under `handling`, and scientist sam.
fn setup(handling: &str, extra: &[&str]) -> Setup {
    let (server, _admin) = Server::start(extra);
    let owner = add_user(&server.dir, "olivia", "owner");
    let scientist = add_user(&server.dir, "sam", "scientist");
    let policy_file = server.dir.join("policy.json");
    std::fs::write(&policy_file, policy(handling)).unwrap();
    let out = cli(&[
        "table",
        "upload",
        titanic_csv().to_str().unwrap(),
        "--name",
        "titanic",
        "--policy",
        policy_file.to_str().unwrap(),
        "--server",
        &server.base,
        "--token",
        &owner,
    ]);
    assert!(out.contains("891 rows"), "{out}");
    Setup { server, owner, scientist }
}

fn query(s: &Setup, token: &str, sql: &str) -> reqwest::blocking::Response {
    s.server.post_json(token, "/api/query", &json!({ "sql": sql }))
}

fn audit(s: &Setup) -> Vec<Value> {
    let body: Value = s.server.get(&s.owner, "/api/audit?table=titanic").json().unwrap();
    body["entries"].as_array().unwrap().clone()
}

/// `milkglass table upload` as `token`; Err carries stderr.
fn upload_table(
    s: &Setup,
    token: &str,
    file: &std::path::Path,
    name: &str,
    policy: &std::path::Path,
) -> Result<String, String> {
    let out = Command::new(BIN)
        .args(["table", "upload", file.to_str().unwrap(), "--name", name, "--policy", policy.to_str().unwrap()])
        .args(["--server", &s.server.base, "--token", token])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() { Ok(stdout) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

const ANNOUNCEMENT: &str =
    "SELECT Pclass, AVG(Survived) AS Survived FROM titanic GROUP BY Pclass ORDER BY Survived DESC";

#[test]
fn the_announcement_query_and_a_refusal() {
    let s = setup("reject", &[]);
    let r = query(&s, &s.scientist, ANNOUNCEMENT);
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    let got: Vec<f64> = body["rows"].as_array().unwrap().iter().map(|r| r["Survived"].as_f64().unwrap()).collect();
    for (g, want) in got.iter().zip([0.62963, 0.472826, 0.242363]) {
        assert!((g - want).abs() < 5e-7, "{got:?}");
    }
    assert_eq!(body["flagged"], false);

    let e = expect_error(query(&s, &s.scientist, "SELECT * FROM titanic LIMIT 5"), 403);
    assert_eq!(e["code"], "refused");
    assert_eq!(
        e["message"],
        "Refused: each result value must be determined by at least 10 rows of table \"titanic\"; \
         fewer than 10 rows stand behind the group."
    );
    let entries = audit(&s);
    let decisions: Vec<&str> = entries.iter().map(|e| e["decision"].as_str().unwrap()).collect();
    assert_eq!(decisions, ["answered", "refused"]);
    assert_eq!(entries[0]["smallest_group"], 184, "second class has 184 passengers");
    assert_eq!(entries[1]["user"], "sam");
}

#[test]
fn log_answers_and_flags_with_sanitized_columns_masked() {
    let s = setup("log", &[]);
    let r = query(&s, &s.scientist, "SELECT * FROM titanic LIMIT 5");
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["flagged"], true);
    assert!(body["warning"].as_str().unwrap().contains("fewer than 10 rows stand behind the group"));
    assert_eq!(body["masked_columns"], json!(["Name"]));
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.get("Name") == Some(&Value::Null)), "Name is there, and null: {rows:?}");
    assert!(rows.iter().all(|r| r["Age"].is_number() || r["Age"].is_null()));
    assert_eq!(audit(&s)[0]["decision"], "flagged");
}

#[test]
fn review_holds_then_the_owner_decides() {
    let s = setup("review", &["--review-wait-secs", "1"]);
    // Held: the caller waits, then gets the request id.
    let r = query(&s, &s.scientist, "SELECT * FROM titanic LIMIT 5");
    assert_eq!(r.status(), 202);
    let held: Value = r.json().unwrap();
    let id = held["request_id"].as_i64().unwrap();
    assert_eq!(s.server.get(&s.scientist, &format!("/api/query/requests/{id}")).status(), 202);

    // A scientist cannot approve; the owner can, from the CLI.
    expect_error(s.server.post_json(&s.scientist, &format!("/api/reviews/{id}/approve"), &json!({})), 403);
    let listed = cli(&["review", "list", "--server", &s.server.base, "--token", &s.owner]);
    assert!(listed.contains(&format!("#{id}")), "{listed}");
    cli(&["review", "approve", &id.to_string(), "--server", &s.server.base, "--token", &s.owner]);

    // Released once, to the requester only.
    let r = s.server.get(&s.owner, &format!("/api/query/requests/{id}"));
    assert_eq!(r.status(), 404);
    let r = s.server.get(&s.scientist, &format!("/api/query/requests/{id}"));
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["row_count"], 5);
    expect_error(s.server.get(&s.scientist, &format!("/api/query/requests/{id}")), 410);

    // Another held query, rejected with a reason.
    let r = query(&s, &s.scientist, "SELECT Age FROM titanic WHERE PassengerId = 7");
    let id: i64 = r.json::<Value>().unwrap()["request_id"].as_i64().unwrap();
    cli(&[
        "review",
        "reject",
        &id.to_string(),
        "--reason",
        "too fine-grained",
        "--server",
        &s.server.base,
        "--token",
        &s.owner,
    ]);
    let e = expect_error(s.server.get(&s.scientist, &format!("/api/query/requests/{id}")), 403);
    assert_eq!(e["code"], "rejected");
    assert!(e["message"].as_str().unwrap().contains("too fine-grained"));

    let decisions: Vec<String> = audit(&s).iter().map(|e| e["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["held", "approved", "released", "held", "rejected"]);
}

#[test]
fn a_query_waiting_for_review_gets_the_result_when_approved() {
    let s = setup("review", &["--review-wait-secs", "30"]);
    let base = s.server.base.clone();
    let owner = s.owner.clone();
    let approver = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::new();
        for _ in 0..200 {
            let list: Value = client
                .get(format!("{base}/api/reviews?state=pending"))
                .bearer_auth(&owner)
                .send()
                .unwrap()
                .json()
                .unwrap();
            if let Some(id) = list["requests"][0]["id"].as_i64() {
                let r = client.post(format!("{base}/api/reviews/{id}/approve")).bearer_auth(&owner).send().unwrap();
                assert_eq!(r.status(), 200);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("no request to approve");
    });
    let r = query(&s, &s.scientist, "SELECT * FROM titanic LIMIT 3");
    approver.join().unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().unwrap();
    assert_eq!(body["row_count"], 3);
}

#[test]
fn pending_requests_survive_a_restart_and_the_audit_chain_verifies() {
    let mut s = setup("review", &["--review-wait-secs", "0"]);
    let id = query(&s, &s.scientist, "SELECT * FROM titanic LIMIT 5").json::<Value>().unwrap()["request_id"]
        .as_i64()
        .unwrap();
    let dir = s.server.dir.clone();
    s.server.kill();
    let out = cli(&["audit", "verify", "--data-dir", dir.to_str().unwrap()]);
    assert!(out.contains("intact"), "{out}");
    let server = Server::start_on(&dir, &[]);
    let list: Value = server.get(&s.owner, "/api/reviews?state=pending").json().unwrap();
    assert_eq!(list["requests"][0]["id"], id);
    // Tampering with the log is detected.
    let conn = rusqlite::Connection::open(dir.join("catalog.db")).unwrap();
    conn.execute_batch("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET query = 'SELECT 1' WHERE id = 1;")
        .unwrap();
    let out = Command::new(BIN).args(["audit", "verify", "--data-dir", dir.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("broken at entry 1"));
}

#[test]
fn bad_input_is_refused_clearly_and_audited() {
    let s = setup("reject", &[]);
    let before: Value = s.server.get(&s.owner, "/api/tables/titanic").json().unwrap();
    let cases: &[(&str, &str)] = &[
        ("SELEC 1", "invalid_query"),
        ("DROP TABLE titanic", "not_a_query"),
        ("INSERT INTO titanic (Age) VALUES (1)", "not_a_query"),
        ("COPY titanic TO '/tmp/leak.csv'", "not_a_query"),
        ("SELECT * FROM '/etc/passwd'", "invalid_query"),
        ("SELECT * FROM read_parquet('/etc/passwd')", "invalid_query"),
        ("SELECT COUNT(*) FROM secret_table", "invalid_query"),
    ];
    for (sql, code) in cases {
        let e = expect_error(query(&s, &s.scientist, sql), 400);
        assert_eq!(e["code"], *code, "{sql}: {e}");
    }
    let mine: Value = s.server.get(&s.scientist, "/api/audit").json().unwrap();
    assert_eq!(mine["entries"].as_array().unwrap().len(), cases.len(), "one audit entry per query");
    assert!(std::fs::metadata("/tmp/leak.csv").is_err());

    // Tables of others: a second owner's table is invisible to a scientist left out of its readers.
    let other = add_user(&s.server.dir, "otto", "owner");
    let policy_file = s.server.dir.join("p2.json");
    std::fs::write(&policy_file, policy("reject")).unwrap();
    cli(&[
        "table",
        "upload",
        titanic_csv().to_str().unwrap(),
        "--name",
        "private",
        "--policy",
        policy_file.to_str().unwrap(),
        "--readers",
        "alex",
        "--server",
        &s.server.base,
        "--token",
        &other,
    ]);
    let e = expect_error(query(&s, &s.scientist, "SELECT COUNT(*) FROM private"), 400);
    assert!(e["message"].as_str().unwrap().contains("private"), "{e}");
    expect_error(s.server.get(&s.scientist, "/api/tables/private"), 404);
    // Olivia cannot replace otto's table or change its policy; scientists publish nothing.
    let r = s
        .server
        .request(reqwest::Method::PUT, &s.owner, "/api/tables/private/policy")
        .json(&json!({"policy": {"safe_zone": true}}))
        .send()
        .unwrap();
    expect_error(r, 404);
    let r = s.server.request(reqwest::Method::DELETE, &s.scientist, "/api/tables/titanic").send().unwrap();
    expect_error(r, 403);
    let err = upload_table(&s, &s.scientist, &titanic_csv(), "mine", &policy_file).unwrap_err();
    assert!(err.contains("403"), "{err}");

    // Malformed CSV and unknown rules: 400, nothing published.
    let bad_csv = s.server.dir.join("bad.csv");
    std::fs::write(&bad_csv, "a,b\n1,2,3,4\n\"unterminated\n").unwrap();
    let err = upload_table(&s, &s.owner, &bad_csv, "bad", &policy_file).unwrap_err();
    assert!(err.contains("400"), "{err}");
    let unknown_rule = s.server.dir.join("unknown.json");
    std::fs::write(&unknown_rule, r#"{"safe_zone": {"k_anonymity": 5}}"#).unwrap();
    let err = upload_table(&s, &s.owner, &titanic_csv(), "bad", &unknown_rule).unwrap_err();
    assert!(err.contains("k_anonymity"), "{err}");
    expect_error(s.server.get(&s.owner, "/api/tables/bad"), 404);
    // Wrong tokens.
    expect_error(query(&s, "mg_nope", ANNOUNCEMENT), 401);
    let after: Value = s.server.get(&s.owner, "/api/tables/titanic").json().unwrap();
    assert_eq!(before, after, "nothing changed");
}

#[test]
fn results_are_saved_only_from_savable_tables_and_inherit_the_policy() {
    let s = setup("reject", &[]);
    let save = |token: &str, sql: &str, name: &str| {
        s.server.post_json(token, "/api/query", &json!({"sql": sql, "save_as": name}))
    };
    // titanic says savable: false.
    let e = expect_error(save(&s.scientist, ANNOUNCEMENT, "by_class"), 403);
    assert_eq!(e["code"], "not_savable");
    assert!(e["message"].as_str().unwrap().contains("savable: false"));

    // A savable copy.
    let savable = json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject",
                         "sanitized_columns": ["Name"], "savable": true});
    let policy_file = s.server.dir.join("savable.json");
    std::fs::write(&policy_file, savable.to_string()).unwrap();
    cli(&[
        "table",
        "upload",
        titanic_csv().to_str().unwrap(),
        "--name",
        "open_titanic",
        "--policy",
        policy_file.to_str().unwrap(),
        "--server",
        &s.server.base,
        "--token",
        &s.owner,
    ]);
    // Unsafe results are never saved.
    let e = expect_error(save(&s.scientist, "SELECT * FROM open_titanic LIMIT 5", "rows"), 403);
    assert!(e["message"].as_str().unwrap().contains("fewer than 10 rows stand behind"));
    let sql = "SELECT Pclass, Sex, Embarked, AVG(Fare) AS fare, COUNT(*) AS n FROM open_titanic \
               GROUP BY Pclass, Sex, Embarked HAVING COUNT(*) >= 10";
    let r = save(&s.scientist, sql, "fares");
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let table: Value = s.server.get(&s.scientist, "/api/tables/fares").json().unwrap();
    assert_eq!(table["policy"]["safe_zone"], savable["safe_zone"], "the policy is inherited");
    assert_eq!(table["policy"]["savable"], true);
    assert_eq!(table["readers"], json!(["sam"]));
    assert_eq!(table["owner"], "olivia", "the source's owner manages the derived table");
    let rows = table["rows"].as_i64().unwrap();
    assert!(rows >= 10, "{rows}");
    // The derived table is itself guarded: its own rows count.
    assert_eq!(query(&s, &s.scientist, "SELECT COUNT(*) AS c FROM fares").status(), 200);
    expect_error(query(&s, &s.scientist, "SELECT * FROM fares"), 403);
    // Other scientists do not see it.
    let other = add_user(&s.server.dir, "alex", "scientist");
    expect_error(s.server.get(&other, "/api/tables/fares"), 404);
    let decisions: Vec<String> = audit(&s).iter().map(|e| e["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["refused"], "the titanic entries: one refused save");
}

#[test]
fn held_requests_say_what_the_answer_would_reveal() {
    let s = setup("review", &["--review-wait-secs", "0"]);
    // The plan alone puts it outside the safe zone (an extreme, one passenger's value): not run before the
    // decision, so only its columns are known.
    let first = query(&s, &s.scientist, "SELECT MAX(Age) AS oldest FROM titanic");
    assert_eq!(first.status(), 202);
    // Run, and held for its small groups: its row count and smallest group are known.
    let second = query(&s, &s.scientist, "SELECT Pclass, COUNT(*) AS n FROM titanic WHERE Age > 65 GROUP BY Pclass");
    assert_eq!(second.status(), 202);
    let third = query(&s, &s.scientist, "SELECT Name, Age FROM titanic LIMIT 5");
    assert_eq!(third.status(), 202);
    let list: Value = s.server.get(&s.owner, "/api/reviews?state=pending").json().unwrap();
    let requests = list["requests"].as_array().unwrap();
    let reveals = |sql_start: &str| {
        requests.iter().find(|r| r["query"].as_str().unwrap().contains(sql_start)).unwrap()["reveals"].clone()
    };
    let not_run = reveals("MAX(Age)");
    assert_eq!(not_run["columns"], json!(["oldest"]));
    assert_eq!((not_run["rows"].clone(), not_run["smallest_group"].clone()), (Value::Null, Value::Null));
    let rows = reveals("Name, Age");
    assert_eq!(rows, json!({"columns": ["Name", "Age"], "rows": 5, "smallest_group": 1}));
    // The requester lists their own requests, but not what they would reveal: that would tell the exact
    // small count the guard held them for.
    let own: Value = s.server.get(&s.scientist, "/api/reviews?state=pending").json().unwrap();
    let own = own["requests"].as_array().unwrap();
    assert_eq!(own.len(), 3);
    assert!(own.iter().all(|r| r["reveals"].is_null()), "{own:?}");
    let ran = reveals("Age > 65");
    assert_eq!(ran["columns"], json!(["Pclass", "n"]));
    assert!(ran["rows"].as_i64().is_some_and(|n| (1..=3).contains(&n)), "{ran}");
    assert!(ran["smallest_group"].as_i64().is_some_and(|n| (1..10).contains(&n)), "{ran}");
}

#[test]
fn statements_refused_before_planning_reach_the_tables_owner() {
    let s = setup("reject", &[]);
    for sql in ["DROP TABLE titanic", "SELECT * FROM titanic WHERE", "SELECT nonesuch FROM titanic"] {
        assert_eq!(query(&s, &s.scientist, sql).status(), 400, "{sql}");
    }
    // Naming a table the caller may not read names nothing in the entry its author reads.
    assert_eq!(query(&s, &s.scientist, "DROP TABLE secret").status(), 400);
    let owners: Vec<(String, String)> = audit(&s)
        .iter()
        .map(|e| (e["query"].as_str().unwrap().to_string(), e["decision"].as_str().unwrap().to_string()))
        .collect();
    let invalid = |sql: &str| (sql.to_string(), "invalid".to_string());
    assert_eq!(
        owners,
        [
            invalid("DROP TABLE titanic"),
            invalid("SELECT * FROM titanic WHERE"),
            invalid("SELECT nonesuch FROM titanic")
        ]
    );
    let mine: Value = s.server.get(&s.scientist, "/api/audit").json().unwrap();
    let last = mine["entries"].as_array().unwrap().last().unwrap().clone();
    assert_eq!((last["query"].as_str(), last["tables"].clone()), (Some("DROP TABLE secret"), json!([])));

    // Its author reads an entry as they were answered: the exact small count behind a refusal is the owner's.
    let small = "SELECT Pclass, COUNT(*) AS n FROM titanic WHERE Age > 65 GROUP BY Pclass";
    assert_eq!(query(&s, &s.scientist, small).status(), 403);
    let smallest = |token: &str| {
        let log: Value = s.server.get(token, "/api/audit?user=sam").json().unwrap();
        log["entries"].as_array().unwrap().last().unwrap()["smallest_group"].clone()
    };
    assert!(smallest(&s.owner).as_i64().is_some_and(|n| (1..10).contains(&n)));
    assert_eq!(smallest(&s.scientist), Value::Null);

    // `user` narrows to one user's entries, among those the caller may read.
    let by_sam: Value = s.server.get(&s.owner, "/api/audit?user=sam").json().unwrap();
    assert_eq!(by_sam["entries"].as_array().unwrap().len(), 4, "the owner reads sam's four about titanic");
    let by_owner: Value = s.server.get(&s.scientist, "/api/audit?user=olivia").json().unwrap();
    assert_eq!(by_owner["entries"], json!([]));
}
