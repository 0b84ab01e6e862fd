//! Backups on a real server: `milkglass backup` runs while uploads and guarded queries go on,
//! `milkglass restore` makes a new data directory from it, and a server on the restored directory
//! holds a consistent state (whole uploads only, every audit entry of the backup with its chain,
//! the table queryable, the secrets still sealed and still opening).

mod common;

use common::{Server, add_user, cli, frame};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const FRAMES_PER_UPLOAD: usize = 50;

fn titanic_csv() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv").to_string()
}

fn frames_of(status: &Value) -> usize {
    status["frames"].as_u64().unwrap() as usize
}

#[test]
fn a_backup_taken_during_writes_restores_to_a_consistent_store() {
    let (server, admin) = Server::start(&[]);
    let owner = add_user(&server.dir, "olivia", "owner");
    let scientist = add_user(&server.dir, "sam", "scientist");
    server.project_with_dataset(&admin, "p", "d");
    let policy = server.dir.join("policy.json");
    std::fs::write(
        &policy,
        json!({"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "reject"}).to_string(),
    )
    .unwrap();
    let policy = policy.to_str().unwrap().to_string();
    cli(&[
        "table",
        "upload",
        &titanic_csv(),
        "--name",
        "titanic",
        "--policy",
        &policy,
        "--server",
        &server.base,
        "--token",
        &owner,
    ]);
    let settings = json!({"headers": {"X-Shared-Secret": "backup-hdr-secret-41"}});
    let r = server.request(reqwest::Method::PUT, &admin, "/api/projects/p/fetch").json(&settings).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());

    let server = Arc::new(server);
    let stop = Arc::new(AtomicBool::new(false));
    let uploads = Arc::new(AtomicUsize::new(0));
    let uploader = {
        let (server, stop, uploads, admin) = (server.clone(), stop.clone(), uploads.clone(), admin.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let lines: Vec<Value> = (0..FRAMES_PER_UPLOAD).map(|i| frame(&format!("u{n}_{i}"), 2)).collect();
                let r = server.upload_lines(&admin, "/api/projects/p/datasets/d/frames", &lines);
                assert_eq!(r.status(), 200, "{}", r.text().unwrap());
                n += 1;
                uploads.store(n, Ordering::Relaxed);
            }
        })
    };
    let querier = {
        let (server, stop, scientist) = (server.clone(), stop.clone(), scientist.clone());
        std::thread::spawn(move || {
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                let sql = "SELECT Sex, COUNT(*) AS n FROM titanic GROUP BY Sex";
                let r = server.post_json(&scientist, "/api/query", &json!({ "sql": sql }));
                assert_eq!(r.status(), 200, "{}", r.text().unwrap());
                answered += 1;
            }
            answered
        })
    };
    while uploads.load(Ordering::Relaxed) < 3 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let temp = tempfile::tempdir().unwrap();
    let (backup, restored) = (temp.path().join("backup"), temp.path().join("restored"));
    let said = cli(&["backup", backup.to_str().unwrap(), "--data-dir", server.dir.to_str().unwrap()]);
    assert!(said.starts_with("backed up "), "{said}");
    // The writers went on during the backup and after it.
    let at_backup_end = uploads.load(Ordering::Relaxed);
    while uploads.load(Ordering::Relaxed) < at_backup_end + 2 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    uploader.join().unwrap();
    let answered = querier.join().unwrap();
    assert!(answered > 0);

    let said = cli(&["restore", backup.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()]);
    assert!(said.contains("chain verified"), "{said}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(backup.join("milkglass-backup.json")).unwrap()).unwrap();
    let live: Value = server.get(&admin, "/api/projects/p/datasets/d/status").json().unwrap();
    let live_audit = server.get(&admin, "/api/audit").json::<Value>().unwrap()["entries"].as_array().unwrap().len();
    let server = Arc::into_inner(server).expect("the writers are done");
    drop(server);

    let again = Server::start_on(&restored, &[]);
    let status: Value = again.get(&admin, "/api/projects/p/datasets/d/status").json().unwrap();
    let frames = frames_of(&status);
    assert_eq!(frames % FRAMES_PER_UPLOAD, 0, "whole uploads only: {frames}");
    assert!(frames >= 3 * FRAMES_PER_UPLOAD && frames < frames_of(&live), "{frames} of {}", frames_of(&live));
    assert_eq!(manifest["counts"]["frames"].as_u64().unwrap() as usize, frames, "{manifest}");
    // The audit log as it was at the backup, whole and chained.
    let verdict: Value = again.get(&admin, "/api/audit/verify").json().unwrap();
    assert_eq!(verdict["verified"], true, "{verdict}");
    let entries = verdict["entries"].as_u64().unwrap();
    assert_eq!(entries, manifest["counts"]["audit_log"].as_u64().unwrap());
    assert!(entries > 0 && (entries as usize) < live_audit, "{entries} of {live_audit}");
    // The table and its file came along; the labels and embeddings of the last frame too.
    let r = again.post_json(
        &scientist,
        "/api/query",
        &json!({"sql": "SELECT Sex, COUNT(*) AS n FROM titanic GROUP BY Sex"}),
    );
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let last = format!("u{}_{}", frames / FRAMES_PER_UPLOAD - 1, FRAMES_PER_UPLOAD - 1);
    let r = again.get(&admin, &format!("/api/projects/p/datasets/d/frames/{last}"));
    assert_eq!(r.status(), 200, "{last}: {}", r.text().unwrap());
    let got: Value = r.json().unwrap();
    assert_eq!(got["labels"].as_array().map(Vec::len), Some(2), "{got}");
    let shown: Value = again.get(&admin, "/api/projects/p/fetch").json().unwrap();
    assert_eq!(shown["headers"]["X-Shared-Secret"], "(set)", "the sealed secrets open with the restored key: {shown}");

    // A restore never writes over a directory in use.
    let refused = std::process::Command::new(common::BIN)
        .args(["restore", backup.to_str().unwrap(), "--data-dir", restored.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not empty"), "{refused:?}");
}
