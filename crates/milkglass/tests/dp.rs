//! Differential privacy end to end on a real server: the differencing pair that thresholds
//! answer exactly recovers a person's value only within the noise; a repeated question
//! replays one answer and spends once; a spent budget refuses, saying what is left;
//! concurrent queries never overspend; partition selection keeps one-person groups out;
//! EXPLAIN PRIVACY tells the cost before anything runs; the ledger is in the audit log.

mod common;

use common::{Server, add_user, expect_error};
use serde_json::{Value, json};

fn dp_policy(dp: Value) -> Value {
    json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject",
           "sanitized_columns": ["Name"], "dp": dp})
}

/// Uploads `csv` as table `name` under `policy`, as `owner`.
fn upload(server: &Server, owner: &str, name: &str, csv: String, policy: &Value) {
    let form = reqwest::blocking::multipart::Form::new()
        .text("name", name.to_string())
        .text("policy", policy.to_string())
        .part("file", reqwest::blocking::multipart::Part::text(csv).file_name(format!("{name}.csv")));
    let response = server.request(reqwest::Method::POST, owner, "/api/tables").multipart(form).send().unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().unwrap());
}

/// `n` people with ages, sexes and a home town (town_k for k < towns, plus one town of one).
fn people(n: usize, seed: u64, towns: usize) -> (String, Vec<f64>) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut csv = String::from("PassengerId,Name,Sex,Age,Town\n");
    let mut ages = Vec::new();
    for i in 1..=n {
        let age = (next() * 80.0).floor();
        let sex = if next() < 0.5 { "female" } else { "male" };
        let town = if i == n { "lonely".to_string() } else { format!("town_{}", i % towns) };
        csv.push_str(&format!("{i},person {i},{sex},{age},{town}\n"));
        ages.push(age);
    }
    (csv, ages)
}

fn query(server: &Server, token: &str, sql: &str) -> reqwest::blocking::Response {
    server.post_json(token, "/api/query", &json!({ "sql": sql }))
}

fn answer(server: &Server, token: &str, sql: &str) -> Value {
    let response = query(server, token, sql);
    let status = response.status();
    let body: Value = response.json().unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    body
}

fn setup() -> (Server, String, String) {
    let (server, _admin) = Server::start(&[]);
    let owner = add_user(&server.dir, "olivia", "owner");
    let scientist = add_user(&server.dir, "sam", "scientist");
    (server, owner, scientist)
}

#[test]
fn the_differencing_pair_recovers_a_persons_age_only_within_the_noise() {
    let (server, owner, scientist) = setup();
    // Under thresholds alone the pair would be exact; the guard's memory of released answers
    // refuses its second half, but only for this analyst's pool (another analyst asks the other
    // half), and it cannot stop averaging: what the DP mode exists for.
    let (csv, _) = people(200, 1, 4);
    let plain = json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject"});
    upload(&server, &owner, "plain", csv, &plain);
    answer(&server, &scientist, "SELECT SUM(Age) AS s FROM plain");
    expect_error(query(&server, &scientist, "SELECT SUM(Age) AS s FROM plain WHERE PassengerId <> 7"), 403);

    // Under DP, over 20 fresh tables the difference lands within a year of the target's age
    // far less often than the noise allows (scale 2 x 100 / 0.5 = 400 per answer: the
    // difference of two is within one year about 0.2% of the time).
    let mut close = 0;
    let trials = 20;
    for t in 0..trials {
        let (csv, ages) = people(200, 100 + t, 4);
        let policy = dp_policy(json!({"epsilon": 1.0, "query_epsilon": 0.5, "privacy_unit": "PassengerId",
                                       "bounds": {"Age": [0, 100]}}));
        let name = format!("people_{t}");
        upload(&server, &owner, &name, csv, &policy);
        let all = answer(&server, &scientist, &format!("SELECT SUM(Age) AS s FROM {name}"));
        assert!(all["privacy"]["ci95"]["s"].as_f64().unwrap() > 100.0, "{all}");
        let but = answer(&server, &scientist, &format!("SELECT SUM(Age) AS s FROM {name} WHERE PassengerId <> 7"));
        let guess = all["rows"][0]["s"].as_f64().unwrap() - but["rows"][0]["s"].as_f64().unwrap();
        if (guess - ages[6]).abs() <= 1.0 {
            close += 1;
        }
        // The budget (1.0) is spent: a third question is refused, saying what is left.
        let third = query(&server, &scientist, &format!("SELECT COUNT(*) AS n FROM {name}"));
        let error = expect_error(third, 403);
        assert_eq!(error["code"], "budget_exhausted");
        assert!(error["message"].as_str().unwrap().contains("0.0000 of epsilon 1 "), "{error}");
    }
    assert!(close <= 2, "{close} of {trials} differences were within a year of the age");
}

#[test]
fn a_repeated_question_replays_one_answer_and_spends_once() {
    let (server, owner, scientist) = setup();
    let (csv, _) = people(300, 7, 3);
    let policy = dp_policy(json!({"epsilon": 1.0, "query_epsilon": 0.1, "privacy_unit": "PassengerId",
                                   "bounds": {"Age": [0, 100]}, "public_keys": {"Sex": ["female", "male"]}}));
    upload(&server, &owner, "people", csv, &policy);
    let first = answer(&server, &scientist, "SELECT Sex, COUNT(*) AS n, AVG(Age) AS age FROM people GROUP BY Sex");
    let rows = first["rows"].clone();
    assert_eq!(rows.as_array().unwrap().len(), 2, "both public keys are released: {first}");
    // Variants of one question: spacing, aliases, column order, conjunct order, ORDER BY.
    let variants = [
        "select Sex, count(*) as n, avg(Age) as age from people group by Sex",
        "SELECT   Sex,  COUNT(*) AS  n , AVG(Age) AS age FROM people p GROUP BY Sex",
        "SELECT Sex, COUNT(*) AS count, AVG(Age) AS mean FROM people GROUP BY Sex ORDER BY Sex DESC",
        "SELECT AVG(Age) AS age, Sex, COUNT(*) AS n FROM people GROUP BY Sex",
    ];
    for i in 0..100 {
        let sql = variants[i % variants.len()];
        let again = answer(&server, &scientist, sql);
        let mut got: Vec<(String, i64, f64)> = again["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let values: Vec<&Value> = r.as_object().unwrap().values().collect();
                let sex = r["Sex"].as_str().unwrap().to_string();
                let count = values.iter().find_map(|v| v.as_i64()).unwrap();
                let mean = values.iter().filter(|v| v.is_f64()).find_map(|v| v.as_f64()).unwrap();
                (sex, count, mean)
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, i64, f64)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["Sex"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap(), r["age"].as_f64().unwrap()))
            .collect();
        assert_eq!(got, want, "{sql}: {again}");
        assert!(again["privacy"]["note"].as_str().unwrap().contains("replayed"), "{again}");
    }
    let budget: Value = server.get(&scientist, "/api/budget").json().unwrap();
    let people = &budget["budgets"][0];
    assert_eq!(people["table"], "people");
    assert!((people["epsilon_spent"].as_f64().unwrap() - 0.1).abs() < 1e-12, "{budget}");
    assert_eq!(people["queries"], 1);
    // A different question spends again.
    answer(&server, &scientist, "SELECT COUNT(*) AS n FROM people WHERE Age > 30");
    let budget: Value = server.get(&scientist, "/api/budget").json().unwrap();
    assert!((budget["budgets"][0]["epsilon_spent"].as_f64().unwrap() - 0.2).abs() < 1e-12, "{budget}");
    // Every access is in the owner's audit log: one charge, the replays, the second charge.
    let audit: Value = server.get(&owner, "/api/audit?table=people").json().unwrap();
    let reasons: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["reason"].as_str()).collect();
    assert_eq!(reasons.iter().filter(|r| r.contains("spent")).count(), 2, "{reasons:?}");
    assert_eq!(reasons.iter().filter(|r| r.contains("replayed")).count(), 100);
}

#[test]
fn concurrent_queries_never_overspend_the_budget() {
    let (server, owner, scientist) = setup();
    let (csv, _) = people(100, 9, 3);
    let policy = dp_policy(json!({"epsilon": 1.0, "query_epsilon": 0.25, "privacy_unit": "PassengerId"}));
    upload(&server, &owner, "people", csv, &policy);
    // Twelve different questions at once against a budget for four.
    let answered: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let (server, scientist) = (&server, &scientist);
                scope.spawn(move || {
                    let r =
                        query(server, scientist, &format!("SELECT COUNT(*) AS n FROM people WHERE PassengerId > {i}"));
                    match r.status().as_u16() {
                        200 => 1,
                        403 | 429 => 0,
                        other => panic!("{other}: {}", r.text().unwrap()),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert!(answered <= 4, "{answered} answers from a budget for 4");
    let budget: Value = server.get(&scientist, "/api/budget").json().unwrap();
    let spent = budget["budgets"][0]["epsilon_spent"].as_f64().unwrap();
    assert!(spent <= 1.0 + 1e-9, "{budget}");
    assert!((spent - 0.25 * answered as f64).abs() < 1e-9, "{budget}");
}

#[test]
fn unknown_groups_pass_partition_selection_and_a_group_of_one_person_does_not() {
    let (server, owner, scientist) = setup();
    // 400 people in 4 towns, and one person alone in "lonely".
    let (csv, _) = people(401, 11, 4);
    let policy =
        dp_policy(json!({"epsilon": 1000.0, "query_epsilon": 1.0, "delta": 1e-5, "privacy_unit": "PassengerId"}));
    upload(&server, &owner, "people", csv, &policy);
    let mut lonely = 0;
    for i in 0..50 {
        // Each a different question (a filter that keeps everyone), so each is fresh noise.
        let sql = format!("SELECT Town, COUNT(*) AS n FROM people WHERE Age > -{i} - 1 GROUP BY Town");
        let body = answer(&server, &scientist, &sql);
        let towns: Vec<&str> = body["rows"].as_array().unwrap().iter().map(|r| r["Town"].as_str().unwrap()).collect();
        assert!(towns.iter().filter(|t| t.starts_with("town_")).count() == 4, "{body}");
        lonely += usize::from(towns.contains(&"lonely"));
    }
    // Released with probability at most delta (1e-5) each time.
    assert_eq!(lonely, 0);
    // EXPLAIN PRIVACY says what a query costs and where groups get suppressed, and spends nothing.
    let before: Value = server.get(&scientist, "/api/budget").json().unwrap();
    let explained = answer(&server, &scientist, "EXPLAIN PRIVACY SELECT Town, COUNT(*) AS n FROM people GROUP BY Town");
    let row = explained["rows"].as_array().unwrap().iter().find(|r| r["column"] == "n").unwrap().clone();
    assert_eq!(row["epsilon"], 1.0);
    assert!(row["delta"].as_f64().unwrap() > 0.0, "{row}");
    assert!(row["ci95"].as_f64().unwrap() > 1.0, "{row}");
    assert!(row["suppressed_below_units"].as_f64().unwrap() > 5.0, "{row}");
    let after: Value = server.get(&scientist, "/api/budget").json().unwrap();
    assert_eq!(before, after);
}

#[test]
fn what_the_dp_mode_cannot_answer_is_refused_from_the_plan() {
    let (server, owner, scientist) = setup();
    let (csv, _) = people(100, 3, 3);
    let policy = dp_policy(json!({"epsilon": 10.0, "privacy_unit": "PassengerId", "bounds": {"Age": [0, 100]}}));
    upload(&server, &owner, "people", csv, &policy);
    for sql in [
        "SELECT * FROM people",
        "SELECT Age FROM people WHERE PassengerId = 7",
        "SELECT PassengerId, COUNT(*) AS n FROM people GROUP BY PassengerId",
        "SELECT MAX(Age) AS m FROM people",
        "SELECT SUM(PassengerId) AS s FROM people",
        "SELECT COUNT(DISTINCT Town) AS n FROM people",
        "SELECT Name, COUNT(*) AS n FROM people GROUP BY Name",
        "SELECT COUNT(*) AS n FROM people WHERE Name LIKE 'person 7%'",
        "SELECT COUNT(*) AS n FROM people a JOIN people b ON a.PassengerId = b.PassengerId",
        "SELECT SUM(Age * 2) AS s FROM people",
        "SELECT COUNT(*) AS n FROM people WHERE Age > (SELECT AVG(Age) FROM people)",
    ] {
        let error = expect_error(query(&server, &scientist, sql), 403);
        assert!(error["message"].as_str().unwrap().contains("differential privacy"), "{sql}: {error}");
    }
    // Nothing was spent by the refusals.
    let budget: Value = server.get(&scientist, "/api/budget").json().unwrap();
    assert_eq!(budget["budgets"][0]["epsilon_spent"], 0.0, "{budget}");
    // A policy with a bad DP block is refused naming the field.
    let bad = dp_policy(json!({"epsilon": -1.0}));
    let form = reqwest::blocking::multipart::Form::new()
        .text("name", "bad")
        .text("policy", bad.to_string())
        .part("file", reqwest::blocking::multipart::Part::text("a\n1\n").file_name("bad.csv"));
    let response = server.request(reqwest::Method::POST, &owner, "/api/tables").multipart(form).send().unwrap();
    let error = expect_error(response, 400);
    assert_eq!(error["field"], "policy.dp.epsilon", "{error}");
}

#[test]
fn a_person_with_many_rows_counts_once_and_in_one_group() {
    let (server, owner, scientist) = setup();
    // 100 people with one row in town A; person 1 also has 300 rows in town B.
    let mut csv = String::from("PassengerId,Name,Town,Age\n");
    for i in 1..=100 {
        csv.push_str(&format!("{i},p{i},A,40\n"));
    }
    for _ in 0..300 {
        csv.push_str("1,p1,B,40\n");
    }
    // Epsilon so large the noise is below one: what is left is the bounding.
    let policy = dp_policy(json!({"epsilon": 1e6, "query_epsilon": 1e5, "privacy_unit": "PassengerId",
                                   "bounds": {"Age": [0, 100]}, "public_keys": {"Town": ["A", "B"]}}));
    upload(&server, &owner, "visits", csv, &policy);
    let body = answer(
        &server,
        &scientist,
        "SELECT Town, COUNT(*) AS n, SUM(Age) AS s FROM visits GROUP BY Town ORDER BY Town",
    );
    let rows = body["rows"].as_array().unwrap();
    assert_eq!(rows[0]["Town"], "A");
    assert!((rows[0]["s"].as_f64().unwrap() - 40.0 * rows[0]["n"].as_f64().unwrap()).abs() < 1.0, "{body}");
    // Person 1 adds to one group only (A or B, at random), so B holds at most one row of 300.
    assert_eq!(rows[1]["Town"], "B");
    assert!(rows[1]["n"].as_i64().unwrap() <= 1, "{body}");
    assert!(rows[0]["n"].as_i64().unwrap() >= 99, "{body}");
}

/// `COUNT(DISTINCT unit)` counts persons: one per person however many rows they have, so
/// with noise below one it is the number of people, where `COUNT(*)` (one row per person
/// and group) is too. Distinct counts of anything else, or of a renamed column, are refused.
#[test]
fn count_distinct_of_the_privacy_unit_counts_persons_once() {
    let (server, owner, scientist) = setup();
    // 60 people in town A, 40 in B; each has 5 visits.
    let mut csv = String::from("PassengerId,Name,Town,Age\n");
    for i in 1..=100 {
        let town = if i <= 60 { "A" } else { "B" };
        for _ in 0..5 {
            csv.push_str(&format!("{i},p{i},{town},40\n"));
        }
    }
    let policy = dp_policy(json!({"epsilon": 1e6, "query_epsilon": 1e5, "privacy_unit": "PassengerId",
                                   "max_rows_per_unit": 10, "bounds": {"Age": [0, 100]},
                                   "public_keys": {"Town": ["A", "B"]}}));
    upload(&server, &owner, "visits", csv, &policy);
    let body = answer(
        &server,
        &scientist,
        "SELECT Town, COUNT(DISTINCT PassengerId) AS persons, COUNT(*) AS visits FROM visits GROUP BY Town ORDER BY Town",
    );
    let rows = body["rows"].as_array().unwrap();
    assert_eq!((rows[0]["persons"].as_i64(), rows[0]["visits"].as_i64()), (Some(60), Some(300)), "{body}");
    assert_eq!((rows[1]["persons"].as_i64(), rows[1]["visits"].as_i64()), (Some(40), Some(200)), "{body}");
    let total = answer(&server, &scientist, "SELECT COUNT(DISTINCT PassengerId) AS persons FROM visits");
    assert_eq!(total["rows"][0]["persons"], 100, "{total}");
    for sql in [
        "SELECT COUNT(DISTINCT Age) AS n FROM visits",
        "SELECT COUNT(DISTINCT PassengerId) AS n FROM (SELECT Age AS PassengerId FROM visits)",
        "SELECT SUM(DISTINCT Age) AS n FROM visits",
    ] {
        let error = expect_error(query(&server, &scientist, sql), 403);
        assert!(error["message"].as_str().unwrap().contains("differential privacy"), "{sql}: {error}");
    }
}

/// Quantiles (`MEDIAN`, `PERCENTILE_CONT` in both spellings) come from opendp's quantile
/// mechanism over each group's bounded values: with a large epsilon they are the true
/// quantile to within the candidates' spacing; a fraction outside [0, 1], a descending
/// order, an expression and the privacy unit are refused from the plan.
#[test]
fn quantiles_are_released_near_the_truth_and_malformed_ones_refused() {
    let (server, owner, scientist) = setup();
    let (csv, ages) = people(2000, 17, 2);
    let policy = dp_policy(json!({"epsilon": 1e6, "query_epsilon": 1e5, "privacy_unit": "PassengerId",
                                   "bounds": {"Age": [0, 100]}, "public_keys": {"Town": ["town_0", "town_1"]}}));
    upload(&server, &owner, "people", csv, &policy);
    let mut sorted = ages.clone();
    sorted.sort_by(f64::total_cmp);
    let truth = |f: f64| sorted[((sorted.len() - 1) as f64 * f).round() as usize];
    let body = answer(
        &server,
        &scientist,
        "SELECT MEDIAN(Age) AS m, PERCENTILE_CONT(Age, 0.9) AS p90, \
         percentile_cont(0.1) WITHIN GROUP (ORDER BY Age) AS p10 FROM people",
    );
    let row = &body["rows"][0];
    for (column, fraction) in [("m", 0.5), ("p90", 0.9), ("p10", 0.1)] {
        let got = row[column].as_f64().unwrap_or(f64::NAN);
        assert!((got - truth(fraction)).abs() <= 1.5, "{column}: {got} against {}: {body}", truth(fraction));
    }
    // Per group too, each from its own people.
    let grouped = answer(&server, &scientist, "SELECT Town, MEDIAN(Age) AS m FROM people GROUP BY Town ORDER BY Town");
    let rows = grouped["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{grouped}");
    for row in rows {
        let town = row["Town"].as_str().unwrap();
        let (csv, _) = people(2000, 17, 2);
        let mut mine: Vec<f64> = csv
            .lines()
            .skip(1)
            .filter(|l| l.ends_with(&format!(",{town}")))
            .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
            .collect();
        mine.sort_by(f64::total_cmp);
        let median = mine[(mine.len() - 1) / 2];
        assert!((row["m"].as_f64().unwrap() - median).abs() <= 1.5, "{town}: {grouped} against {median}");
    }
    for sql in [
        "SELECT PERCENTILE_CONT(Age, 1.5) AS p FROM people",
        "SELECT MEDIAN(PassengerId) AS m FROM people",
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY Age DESC) AS p FROM people",
        "SELECT MEDIAN(Age * 2) AS m FROM people",
    ] {
        let response = query(&server, &scientist, sql);
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap();
        assert_eq!(status, 403, "{sql}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("differential privacy"), "{sql}: {body}");
    }
    // EXPLAIN PRIVACY names the quantile mechanism.
    let explained = answer(&server, &scientist, "EXPLAIN PRIVACY SELECT MEDIAN(Age) AS m FROM people");
    assert!(explained.to_string().contains("quantiles by noisy max"), "{explained}");
}

#[test]
fn the_tables_total_cap_holds_across_analysts() {
    let (server, owner, sam) = setup();
    let ada = add_user(&server.dir, "ada", "scientist");
    let (csv, _) = people(100, 5, 3);
    let policy = dp_policy(json!({"epsilon": 1.0, "query_epsilon": 0.25, "table_epsilon": 0.5,
                                   "privacy_unit": "PassengerId"}));
    upload(&server, &owner, "people", csv, &policy);
    answer(&server, &sam, "SELECT COUNT(*) AS n FROM people");
    answer(&server, &ada, "SELECT COUNT(*) AS n FROM people WHERE Age > 10");
    // Each has 0.75 of their own left, but the table's 0.5 for everyone is spent.
    let error = expect_error(query(&server, &sam, "SELECT COUNT(*) AS n FROM people WHERE Age > 20"), 403);
    assert!(error["message"].as_str().unwrap().contains("total budget"), "{error}");
    // Budgets are per analyst: sam's shows only sam's spending.
    let budget: Value = server.get(&sam, "/api/budget").json().unwrap();
    assert!((budget["budgets"][0]["epsilon_spent"].as_f64().unwrap() - 0.25).abs() < 1e-12, "{budget}");
}

#[test]
fn a_pool_of_analysts_shares_one_budget_and_its_answers() {
    let (server, owner, sam) = setup();
    let ada = add_user(&server.dir, "ada", "scientist");
    for name in ["sam", "ada"] {
        common::cli(&["user", "pool", name, "lab", "--data-dir", server.dir.to_str().unwrap()]);
    }
    let (csv, _) = people(100, 6, 3);
    let policy = dp_policy(json!({"epsilon": 0.5, "query_epsilon": 0.25, "per": "group",
                                   "privacy_unit": "PassengerId"}));
    upload(&server, &owner, "people", csv, &policy);
    let first = answer(&server, &sam, "SELECT COUNT(*) AS n FROM people");
    // Ada asks sam's question: the pool's stored answer, at no cost.
    let same = answer(&server, &ada, "SELECT COUNT(*) AS n FROM people");
    assert_eq!(same["rows"], first["rows"]);
    answer(&server, &ada, "SELECT COUNT(*) AS n FROM people WHERE Age > 10");
    // The pool's 0.5 is spent, whoever asks next.
    let error = expect_error(query(&server, &sam, "SELECT COUNT(*) AS n FROM people WHERE Age > 20"), 403);
    assert_eq!(error["code"], "budget_exhausted", "{error}");
    let budget: Value = server.get(&sam, "/api/budget").json().unwrap();
    assert_eq!(budget["budgets"][0]["per"], "group");
    assert!((budget["budgets"][0]["epsilon_spent"].as_f64().unwrap() - 0.5).abs() < 1e-12, "{budget}");
}

#[test]
fn a_renewing_budget_counts_only_its_period() {
    let (server, owner, sam) = setup();
    let (csv, _) = people(100, 8, 3);
    // A period of two seconds, for the test (owners would say 30 days).
    let policy = dp_policy(json!({"epsilon": 0.25, "query_epsilon": 0.25, "renewal_days": 2.0 / 86_400.0,
                                   "privacy_unit": "PassengerId"}));
    upload(&server, &owner, "people", csv, &policy);
    answer(&server, &sam, "SELECT COUNT(*) AS n FROM people");
    expect_error(query(&server, &sam, "SELECT COUNT(*) AS n FROM people WHERE Age > 10"), 403);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    answer(&server, &sam, "SELECT COUNT(*) AS n FROM people WHERE Age > 10");
    let budget: Value = server.get(&sam, "/api/budget").json().unwrap();
    assert!((budget["budgets"][0]["epsilon_spent"].as_f64().unwrap() - 0.25).abs() < 1e-12, "{budget}");
}

#[test]
fn where_the_declared_groups_fit_the_bound_a_person_counts_in_each() {
    let (server, owner, scientist) = setup();
    let mut csv = String::from("PassengerId,Name,Town,Age\n");
    for i in 1..=50 {
        csv.push_str(&format!("{i},p{i},A,40\n{i},p{i},B,40\n"));
    }
    // Two declared towns and two groups allowed per person: no ranking needed, both count.
    let policy = dp_policy(json!({"epsilon": 1e6, "query_epsilon": 1e5, "privacy_unit": "PassengerId",
                                   "max_groups_per_unit": 2, "public_keys": {"Town": ["A", "B"]}}));
    upload(&server, &owner, "visits", csv, &policy);
    let body = answer(&server, &scientist, "SELECT Town, COUNT(*) AS n FROM visits GROUP BY Town ORDER BY Town");
    let counts: Vec<i64> = body["rows"].as_array().unwrap().iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(counts, [50, 50], "{body}");
}

#[test]
fn a_published_dataset_under_dp_spends_one_listed_budget_for_all_its_tables() {
    let (server, owner, scientist) = setup();
    let frames: Vec<Value> = (0..300).map(|i| common::frame(&format!("f{i:03}"), 2)).collect();
    common::dataset_of(&server, &owner, &frames);
    let publication = json!({
        "policy": {"safe_zone": {"aggregation": {"min_agg_size": 5}}, "unsafe_handling": "reject",
                   "sanitized_columns": ["frame_id", "urls", "label_id"],
                   "dp": {"epsilon": 1.0, "query_epsilon": 0.5, "max_groups_per_unit": 2,
                          "public_keys": {"class": ["cat", "dog"]}}},
        "readers": ["sam"],
    });
    let r = server
        .request(reqwest::Method::PUT, &owner, "/api/projects/p/datasets/d/publication")
        .json(&publication)
        .send();
    assert_eq!(r.unwrap().status(), 200);

    // Listed before any query, with the whole budget left.
    let budget: Value = server.get(&scientist, "/api/budget").json().unwrap();
    let listed = budget["budgets"].as_array().unwrap().iter().find(|b| b["table"] == "p/d/*").cloned();
    let listed = listed.unwrap_or_else(|| panic!("the dataset's budget is listed: {budget}"));
    assert_eq!((listed["epsilon_left"].as_f64(), listed["queries"].as_i64()), (Some(1.0), Some(0)), "{listed}");

    // Noisy class counts near the truth (300 of each: a frame, the unit, is in both groups,
    // which max_groups_per_unit allows), each query spending half the budget.
    let by_class = answer(&server, &scientist, "SELECT class, COUNT(*) AS n FROM d.labels GROUP BY class");
    let rows = by_class["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{by_class}");
    for row in rows {
        let n = row["n"].as_f64().unwrap();
        assert!((n - 300.0).abs() < 60.0, "{row}: Laplace noise of scale 4 (two groups per unit, epsilon 0.5)");
    }
    assert!(by_class["privacy"]["note"].is_string(), "{by_class}");
    // The frames table of the same dataset spends the same budget.
    answer(&server, &scientist, "SELECT COUNT(*) AS n FROM d.frames");
    let budget: Value = server.get(&scientist, "/api/budget").json().unwrap();
    let listed = budget["budgets"].as_array().unwrap().iter().find(|b| b["table"] == "p/d/*").cloned().unwrap();
    assert_eq!((listed["epsilon_left"].as_f64(), listed["queries"].as_i64()), (Some(0.0), Some(2)), "{listed}");
    let error = expect_error(query(&server, &scientist, "SELECT COUNT(*) AS n FROM d.labels WHERE class = 'cat'"), 403);
    assert_eq!(error["code"], "budget_exhausted", "{error}");
    // Members read their own dataset openly: no budget of theirs is listed.
    let budget: Value = server.get(&owner, "/api/budget").json().unwrap();
    assert!(budget["budgets"].as_array().unwrap().iter().all(|b| b["table"] != "p/d/*"), "{budget}");
}

#[test]
fn variance_and_standard_deviation_are_released_near_the_truth_with_their_error_bounds() {
    let (server, owner, scientist) = setup();
    let (csv, ages) = people(4000, 11, 3);
    let policy = dp_policy(json!({"epsilon": 20.0, "query_epsilon": 10.0, "privacy_unit": "PassengerId",
                                   "bounds": {"Age": [0, 100]}}));
    upload(&server, &owner, "people", csv, &policy);
    let n = ages.len() as f64;
    let mean = ages.iter().sum::<f64>() / n;
    let variance = ages.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / (n - 1.0);
    let body = answer(
        &server,
        &scientist,
        "SELECT VAR_SAMP(Age) AS v, STDDEV(Age) AS s, VAR_POP(Age) AS vp, COUNT(*) AS n FROM people",
    );
    let row = &body["rows"][0];
    let (v, s, vp) = (row["v"].as_f64().unwrap(), row["s"].as_f64().unwrap(), row["vp"].as_f64().unwrap());
    assert!((v - variance).abs() < 0.05 * variance, "variance {v} against {variance}: {body}");
    assert!((s - variance.sqrt()).abs() < 0.05 * variance.sqrt(), "stddev {s}: {body}");
    assert!((vp - v * (n - 1.0) / n).abs() < 0.02 * variance, "population variance {vp}: {body}");
    // Each released number says how wrong it may be, before and after running.
    let ci = &body["privacy"]["ci95"];
    assert!(ci["v"].as_f64().unwrap() > 0.0 && ci["s"].as_f64().unwrap() > 0.0, "{body}");
    // A variance needs bounds, like a sum.
    let error = expect_error(query(&server, &scientist, "SELECT VAR(PassengerId) AS v FROM people"), 403);
    assert!(error["message"].as_str().unwrap().contains("privacy unit"), "{error}");
}

/// A row of `people`'s CSV: (sex, age, town).
type Person = (String, f64, String);

/// Which people a random question's filter keeps.
type Keep = Box<dyn Fn(&Person) -> bool>;

fn parse_people(csv: &str) -> Vec<Person> {
    csv.lines()
        .skip(1)
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (f[2].to_string(), f[3].parse().unwrap(), f[4].to_string())
        })
        .collect()
}

#[test]
fn random_questions_are_answered_near_the_truth_or_refused_and_never_reach_a_sanitized_column() {
    let (server, owner, scientist) = setup();
    let (csv, _) = people(1200, 5, 3);
    let people_rows = parse_people(&csv);
    let policy = dp_policy(json!({"epsilon": 100000.0, "query_epsilon": 2.0, "delta": 1e-4,
                                   "privacy_unit": "PassengerId", "bounds": {"Age": [0, 100]}}));
    upload(&server, &owner, "people", csv, &policy);
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let (mut answered, mut refused) = (0, 0);
    for round in 0..60 {
        // A random question: keys, a filter, aggregates; now and then one that reaches for Name.
        let keys: Vec<&str> = match next(4) {
            0 => vec![],
            1 => vec!["Sex"],
            2 => vec!["Town"],
            _ => vec!["Sex", "Town"],
        };
        let threshold = next(80) as f64;
        let (filter, keep): (String, Keep) = match next(3) {
            0 => (format!("Age > {threshold}"), Box::new(move |r| r.1 > threshold)),
            1 => ("Sex = 'female'".to_string(), Box::new(|r| r.0 == "female")),
            _ => (
                format!("Age <= {threshold} OR Town = 'town_1'"),
                Box::new(move |r| r.1 <= threshold || r.2 == "town_1"),
            ),
        };
        let reach = next(6) == 0;
        let aggregates = if reach {
            ["COUNT(Name) AS n", "COUNT(*) AS n, MAX(Name) AS m", "COUNT(*) AS n"][next(3) as usize]
        } else {
            ["COUNT(*) AS n", "COUNT(*) AS n, SUM(Age) AS s", "COUNT(*) AS n, AVG(Age) AS a"][next(3) as usize]
        };
        let filter = if reach && aggregates == "COUNT(*) AS n" { format!("{filter} AND Name <> 'x'") } else { filter };
        let select: Vec<String> = keys.iter().map(|k| k.to_string()).chain([aggregates.to_string()]).collect();
        let mut sql = format!("SELECT {} FROM people WHERE ({filter}) AND Age >= -{round}", select.join(", "));
        if !keys.is_empty() {
            sql.push_str(&format!(" GROUP BY {}", keys.join(", ")));
        }
        let response = query(&server, &scientist, &sql);
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap();
        if reach {
            assert!(status == 403 || status == 400, "{sql} reaches for Name and was answered: {body}");
            refused += 1;
            continue;
        }
        assert_eq!(status, 200, "{sql}: {body}");
        answered += 1;
        // Each released group exists, and each number is within five of its 95% bounds of the truth.
        let ci = &body["privacy"]["ci95"];
        for row in body["rows"].as_array().unwrap() {
            let in_group = |r: &Person| {
                keep(r)
                    && keys.iter().all(|k| match *k {
                        "Sex" => row["Sex"] == r.0.as_str(),
                        _ => row["Town"] == r.2.as_str(),
                    })
            };
            let members: Vec<&Person> = people_rows.iter().filter(|r| in_group(r)).collect();
            assert!(!members.is_empty(), "{sql}: a group without people was released: {row}");
            let n = members.len() as f64;
            let close = |name: &str, truth: f64| {
                let (got, bound) = (row[name].as_f64().unwrap(), ci[name].as_f64().unwrap());
                assert!((got - truth).abs() <= 5.0 * bound + 0.5, "{sql}: {name} = {got}, truth {truth}, ci95 {bound}");
            };
            close("n", n);
            if row.get("s").is_some() {
                close("s", members.iter().map(|r| r.1).sum());
            }
            if row.get("a").is_some() && n > 100.0 {
                close("a", members.iter().map(|r| r.1).sum::<f64>() / n);
            }
        }
    }
    assert!(answered > 30 && refused > 3, "{answered} answered, {refused} refused");
}
