//! A query cannot take the server down: on a real server, a three-way self cross join
//! is stopped at the time limit with a clear error, a second query from the same user
//! meanwhile is refused with 429, and another user's query is answered while it runs.

mod common;

use common::{Server, add_user, cli, expect_error};
use serde_json::json;
use std::time::{Duration, Instant};

const TITANIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv");

/// 891^3 = 707 million joined rows: far past a 3-second limit on any machine.
const CROSS_JOIN: &str = "SELECT COUNT(*) AS n, SUM(a.Fare + b.Fare + c.Fare) AS s \
                          FROM titanic a, titanic b, titanic c";

#[test]
fn heavy_queries_are_stopped_capped_per_user_and_others_are_answered_meanwhile() {
    let (server, _admin) = Server::start(&["--query-timeout-secs", "3", "--queries-per-user", "1"]);
    let owner = add_user(&server.dir, "olivia", "owner");
    let sam = add_user(&server.dir, "sam", "scientist");
    let tess = add_user(&server.dir, "tess", "scientist");
    let policy = server.dir.join("policy.json");
    std::fs::write(&policy, json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}}).to_string()).unwrap();
    cli(&["table", "upload", TITANIC, "--name", "titanic", "--policy", policy.to_str().unwrap()]
        .iter()
        .copied()
        .chain(["--server", server.base.as_str(), "--token", owner.as_str()])
        .collect::<Vec<_>>());

    // tess's small query, unloaded, for the latency comparison.
    let small = "SELECT Pclass, COUNT(*) AS n FROM titanic GROUP BY Pclass";
    let ask = |token: &str, sql: &str| server.post_json(token, "/api/query", &json!({ "sql": sql }));
    let start = Instant::now();
    assert_eq!(ask(&tess, small).status(), 200);
    let unloaded = start.elapsed();

    std::thread::scope(|scope| {
        let heavy = scope.spawn(|| {
            let start = Instant::now();
            let response = ask(&sam, CROSS_JOIN);
            (response, start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(500));

        // Sam's second query while the first runs: refused at once, not queued.
        let body = expect_error(ask(&sam, small), 429);
        assert_eq!(body["code"], "too_many_queries", "{body}");

        // tess is answered while sam's query runs, not after it: queries run on a runtime of
        // their own, beside the threads that answer requests. (On a 2-core machine whose
        // cores the cross join saturates, her query takes up to about a second.)
        let start = Instant::now();
        assert_eq!(ask(&tess, small).status(), 200);
        let loaded = start.elapsed();
        assert!(
            loaded < Duration::from_millis(2000),
            "tess waited {loaded:?} beside the heavy query (alone: {unloaded:?})"
        );

        let (response, took) = heavy.join().unwrap();
        let body = expect_error(response, 422);
        assert_eq!(body["code"], "query_stopped", "{body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("longer than 3 s"), "{message}");
        assert!(took < Duration::from_secs(10), "stopped after {took:?}");
    });

    // The stop is audited, and sam may query again.
    let audit: serde_json::Value = server.get(&owner, "/api/audit?table=titanic").json().unwrap();
    let stopped = audit["entries"].as_array().unwrap().iter().filter(|e| e["decision"] == "stopped").count();
    assert_eq!(stopped, 1, "{audit}");
    assert_eq!(ask(&sam, small).status(), 200);
}
