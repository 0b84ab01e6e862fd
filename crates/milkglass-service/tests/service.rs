//! The service functions on a temporary store, with no server: what every front end
//! gets from them.

use milkglass_core::{Policy, Role};
use milkglass_service::{Answer, ErrorKind, ServiceConfig, Services, access, query, reviews};
use milkglass_store::{Store, TableFormat, User};
use std::sync::Arc;
use std::time::Duration;

const TITANIC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv");

struct Fixture {
    _dir: tempfile::TempDir,
    services: Arc<Services>,
    owner: User,
    sam: User,
    tess: User,
}

/// A store with owner olivia's titanic table under `handling`, and scientists sam and tess.
async fn fixture(handling: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (name, role) in [("olivia", Role::Owner), ("sam", Role::Scientist), ("tess", Role::Scientist)] {
        store.add_user(name, role).unwrap();
    }
    let owner = store.user_by_name("olivia").unwrap();
    let policy = Policy::from_json(&format!(
        r#"{{"safe_zone": {{"aggregation": {{"min_agg_size": 10}}}}, "unsafe_handling": "{handling}",
            "sanitized_columns": ["Name"]}}"#
    ))
    .unwrap();
    let imported = store.import_table_file("titanic", TITANIC.as_ref(), TableFormat::Csv, None).await.unwrap();
    store.publish_table(&owner, "titanic", &policy, None, &imported).unwrap();
    let (sam, tess) = (store.user_by_name("sam").unwrap(), store.user_by_name("tess").unwrap());
    let config = ServiceConfig { review_wait: Duration::from_secs(5), ..ServiceConfig::default() };
    let services = Arc::new(Services::new(store, config).unwrap());
    Fixture { _dir: dir, services, owner, sam, tess }
}

fn rows(answer: Answer) -> usize {
    match answer {
        Answer::Rows { batches, .. } => batches.iter().map(|b| b.num_rows()).sum(),
        Answer::Held { request_id, .. } => panic!("held as request {request_id}"),
    }
}

#[tokio::test]
async fn queries_are_answered_refused_and_remembered_per_caller() {
    let f = fixture("reject").await;
    let sql = "SELECT Pclass, AVG(Age) FROM titanic GROUP BY Pclass";
    assert_eq!(rows(query::run(&f.services, &f.sam, sql, Duration::ZERO).await.unwrap()), 3);

    let refused = query::run(&f.services, &f.sam, "SELECT * FROM titanic", Duration::ZERO).await.err().unwrap();
    assert_eq!((refused.kind, refused.code), (ErrorKind::Refused, "refused"));
    assert!(refused.message.contains("fewer than 10 rows"), "{}", refused.message);

    let bad = query::run(&f.services, &f.sam, "SELEC 1", Duration::ZERO).await.err().unwrap();
    assert_eq!((bad.kind, bad.code, bad.field.as_deref()), (ErrorKind::Invalid, "invalid_query", Some("sql")));

    // Differencing across queries: sam's memory, not tess's.
    let all_but_one = "SELECT Pclass, AVG(Age) FROM titanic WHERE PassengerId <> 7 GROUP BY Pclass";
    let e = query::run(&f.services, &f.sam, all_but_one, Duration::ZERO).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Refused);
    assert_eq!(rows(query::run(&f.services, &f.tess, all_but_one, Duration::ZERO).await.unwrap()), 3);

    // Every one of them is in the owner's audit log, in order.
    let log = reviews::audit_log(&f.services, &f.owner, Some("titanic"), None).unwrap();
    let decisions: Vec<&str> = log.iter().map(|e| e.entry.decision.as_str()).collect();
    assert_eq!(decisions, ["answered", "refused", "refused", "answered"], "{decisions:?}");
    // The invalid query read no table, so only sam's own log has it.
    let own = reviews::audit_log(&f.services, &f.sam, None, None).unwrap();
    assert!(own.iter().any(|e| e.entry.decision == "invalid"));
    assert!(own.iter().all(|e| e.entry.user == "sam"));
}

#[tokio::test]
async fn a_held_query_is_released_as_soon_as_the_owner_approves() {
    let f = fixture("review").await;
    let services = f.services.clone();
    let sam = f.sam.clone();
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let answer = query::run(&services, &sam, "SELECT * FROM titanic LIMIT 3", Duration::from_secs(30)).await;
        (answer, started.elapsed())
    });
    // Wait until the request exists, then approve it.
    let id = loop {
        if let Some(r) = reviews::list(&f.services, &f.owner, Some("pending")).unwrap().first() {
            break r.id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Sam sees the request; tess, who neither asked nor owns the table, does not, and
    // cannot decide it: she is told what a missing id is told. Sam may not decide his own.
    assert_eq!(reviews::list(&f.services, &f.sam, None).unwrap().len(), 1);
    assert!(reviews::list(&f.services, &f.tess, None).unwrap().is_empty());
    let e = reviews::decide(&f.services, &f.tess, id, true, None).err().unwrap();
    let missing = reviews::decide(&f.services, &f.tess, id + 100, true, None).err().unwrap();
    assert_eq!(
        (e.kind, e.message.replace(&id.to_string(), "N")),
        (ErrorKind::NotFound, missing.message.replace(&(id + 100).to_string(), "N"))
    );
    let own = reviews::decide(&f.services, &f.sam, id, true, None).err().unwrap();
    assert_eq!(own.kind, ErrorKind::Forbidden);

    reviews::decide(&f.services, &f.owner, id, true, None).unwrap();
    let (answer, took) = waiting.await.unwrap();
    assert_eq!(rows(answer.unwrap()), 3);
    assert!(took < Duration::from_secs(10), "woken after {took:?}");

    // A second decision is a conflict; the released result is gone for a second collect.
    let again = reviews::decide(&f.services, &f.owner, id, false, Some("late")).err().unwrap();
    assert_eq!(again.kind, ErrorKind::Conflict);
    let gone = query::collect_request(&f.services, &f.sam, id).await.err().unwrap();
    assert_eq!((gone.kind, gone.code), (ErrorKind::Gone, "delivered"));
    // Someone else's request id reads like a missing one.
    let other = query::collect_request(&f.services, &f.tess, id).await.err().unwrap();
    let missing = query::collect_request(&f.services, &f.tess, id + 100).await.err().unwrap();
    assert_eq!((other.kind, missing.kind), (ErrorKind::NotFound, ErrorKind::NotFound));
}

#[tokio::test]
async fn a_rejected_request_names_the_owner_and_its_id() {
    let f = fixture("review").await;
    let held = query::run(&f.services, &f.sam, "SELECT * FROM titanic", Duration::ZERO).await.unwrap();
    let Answer::Held { request_id, .. } = held else { panic!("not held") };
    reviews::decide(&f.services, &f.owner, request_id, false, Some("too detailed")).unwrap();
    let e = query::collect_request(&f.services, &f.sam, request_id).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::Rejected);
    assert_eq!(e.request_id(), Some(request_id));
    assert!(e.message.contains("too detailed") && e.message.contains("olivia"), "{}", e.message);
}

#[tokio::test]
async fn hidden_tables_read_like_missing_ones() {
    let f = fixture("reject").await;
    let store = &f.services.store;
    let policy = Policy::from_json(r#"{"safe_zone": true}"#).unwrap();
    let imported = store.import_table_file("private", TITANIC.as_ref(), TableFormat::Csv, None).await.unwrap();
    store.publish_table(&f.owner, "private", &policy, Some(&["tess".to_string()]), &imported).unwrap();

    let hidden = access::readable_table(store, &f.sam, "private").err().unwrap();
    let missing = access::readable_table(store, &f.sam, "nothing").err().unwrap();
    assert_eq!(hidden.kind, missing.kind);
    assert_eq!(hidden.message.replace("private", "X"), missing.message.replace("nothing", "X"));
    assert!(access::readable_table(store, &f.tess, "private").is_ok());
    assert_eq!(access::managed_table(store, &f.tess, "private").err().unwrap().kind, ErrorKind::Forbidden);
    assert!(access::managed_table(store, &f.owner, "private").is_ok());
    assert_eq!(access::require_table_creator(&f.sam).err().unwrap().kind, ErrorKind::Forbidden);
    let names: Vec<String> = access::readable_tables(store, &f.sam).unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["titanic"]);
    // In a query, the hidden table does not exist either.
    let e = query::run(&f.services, &f.sam, "SELECT COUNT(*) FROM private", Duration::ZERO).await.err().unwrap();
    assert_eq!(e.code, "invalid_query");
}

#[tokio::test]
async fn saved_results_inherit_the_policy_and_only_safe_results_are_saved() {
    let f = fixture("reject").await;
    let store = &f.services.store;
    // The fixture's table is not savable.
    let e = query::save_result(&f.services, &f.sam, "SELECT Pclass, COUNT(*) FROM titanic GROUP BY Pclass", "mine")
        .await
        .err()
        .unwrap();
    assert_eq!((e.kind, e.code), (ErrorKind::Forbidden, "not_savable"));

    let mut policy = store.guarded_table("titanic").unwrap().policy;
    policy.savable = true;
    store.set_table_policy("titanic", &policy, None).unwrap();
    let sql = "SELECT Pclass, COUNT(*) AS n, AVG(Age) AS age FROM titanic GROUP BY Pclass";
    let saved = query::save_result(&f.services, &f.sam, sql, "by_class").await.unwrap();
    assert_eq!((saved.rows, saved.owner.as_str()), (3, "olivia"));
    assert_eq!(saved.readers.as_deref(), Some(&["sam".to_string()][..]));
    assert!(access::readable_table(store, &f.tess, "by_class").is_err());
    let e = query::save_result(&f.services, &f.sam, "SELECT * FROM titanic", "rows").await.err().unwrap();
    assert_eq!(e.code, "not_savable");
}

#[tokio::test]
async fn publishing_checks_who_the_name_and_the_policy() {
    use milkglass_service::tables::{self, Publication};
    let f = fixture("reject").await;
    let policy = |json: &str| Policy::from_json(json).unwrap();
    let publication =
        |name, p| Publication { name, policy: p, readers: None, file: TITANIC.as_ref(), format: TableFormat::Csv };
    let e = tables::publish(&f.services, &f.sam, publication("mine", policy(r#"{"safe_zone": true}"#))).await;
    assert_eq!(e.err().unwrap().kind, ErrorKind::Forbidden);
    let missing = policy(r#"{"safe_zone": true, "sanitized_columns": ["Nope"]}"#);
    let e = tables::publish(&f.services, &f.owner, publication("other", missing)).await.err().unwrap();
    assert_eq!((e.kind, e.field.as_deref()), (ErrorKind::Invalid, Some("policy.sanitized_columns")));
    assert!(f.services.store.guarded_table("other").is_err(), "nothing half-published");
    let e = tables::publish(&f.services, &f.owner, publication("bad/name", policy(r#"{"safe_zone": true}"#))).await;
    assert_eq!(e.err().unwrap().field.as_deref(), Some("name"));

    // Another owner cannot take the name.
    f.services.store.add_user("oscar", Role::Owner).unwrap();
    let oscar = f.services.store.user_by_name("oscar").unwrap();
    let e = tables::publish(&f.services, &oscar, publication("titanic", policy(r#"{"safe_zone": true}"#))).await;
    assert_eq!(e.err().unwrap().kind, ErrorKind::Conflict);

    // A policy change is checked against the columns, and only by the owner.
    // (Oscar may not read olivia's table, so for him it does not exist.)
    let e = tables::set_policy(&f.services, &oscar, "titanic", serde_json::json!({"safe_zone": true}), None);
    assert_eq!(e.err().unwrap().kind, ErrorKind::NotFound);
    let bad = serde_json::json!({"safe_zone": true, "sanitized_columns": ["Nope"]});
    let e = tables::set_policy(&f.services, &f.owner, "titanic", bad, None).err().unwrap();
    assert_eq!(e.field.as_deref(), Some("policy.sanitized_columns"));
}

#[tokio::test]
async fn the_review_list_keeps_working_after_a_table_with_pending_requests_is_dropped() {
    use milkglass_service::tables;
    let f = fixture("review").await;
    let held = query::run(&f.services, &f.sam, "SELECT * FROM titanic", Duration::ZERO).await.unwrap();
    assert!(matches!(held, Answer::Held { .. }));
    tables::drop(&f.services, &f.owner, "titanic").unwrap();
    assert!(reviews::list(&f.services, &f.owner, None).unwrap().is_empty(), "no table, nothing to decide");
    assert_eq!(reviews::list(&f.services, &f.sam, None).unwrap().len(), 1, "the requester still sees theirs");
}
