//! The crash test: an upload killed with SIGKILL mid-stream, then a restart on the
//! same directory. Every earlier batch is intact, no partial batch is visible, and
//! SQLite's integrity check passes.

mod common;

use common::{Server, add_user, frame, snapshot};
use serde_json::Value;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

const D: &str = "/api/projects/p/datasets/d";
const BATCH: usize = 50;

#[test]
fn sigkill_mid_upload_loses_at_most_the_open_batch() {
    let dir = tempfile::tempdir().unwrap();
    let admin = add_user(dir.path(), "admin", "admin");
    let mut server = Server::start_on(dir.path(), &["--batch-size", &BATCH.to_string()]);
    server.project_with_dataset(&admin, "p", "d");

    // Two complete uploads before the crash.
    for upload in 0..2 {
        let frames: Vec<Value> = (0..120).map(|i| frame(&format!("u{upload}_{i:04}"), 2)).collect();
        assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &frames).status(), 200);
    }
    let (_, frames_before, labels_before) = snapshot(&server, &admin, "p", "d");
    assert_eq!((frames_before, labels_before), (240, 480));

    // A third upload, streamed by hand with chunked encoding, stalls after 3.5 batches.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut stream = TcpStream::connect(&addr).unwrap();
    write!(
        stream,
        "POST {D}/frames HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {admin}\r\n\
         Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let sent = BATCH * 3 + BATCH / 2;
    for i in 0..sent {
        let line = format!("{}\n", frame(&format!("crash_{i:04}"), 3));
        write!(stream, "{:x}\r\n{line}\r\n", line.len()).unwrap();
    }
    stream.flush().unwrap();

    // Wait until the server has committed the three whole batches, then kill it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, frames, _) = snapshot(&server, &admin, "p", "d");
        if frames >= frames_before + (BATCH * 3) as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the server never committed the streamed batches");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = server.child.id();
    let status = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    let _ = server.child.wait();
    drop(stream);

    // The store on disk is consistent.
    let conn = rusqlite::Connection::open(dir.path().join("catalog.db")).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    drop(conn);

    // Restart: earlier uploads intact, whole batches only, the upload marked interrupted.
    let server = Server::start_on(dir.path(), &[]);
    let status: Value = server.get(&admin, &format!("{D}/status")).json().unwrap();
    let frames = status["frames"].as_i64().unwrap();
    let crashed = frames - frames_before;
    assert_eq!(crashed % BATCH as i64, 0, "a partial batch is visible: {crashed} frames");
    assert_eq!(crashed, (BATCH * 3) as i64, "the committed batches survive");
    assert_eq!(status["labels"].as_i64().unwrap(), labels_before + crashed * 3);
    assert_eq!(status["uploads"][0]["state"], "interrupted");
    assert_eq!(status["uploads"][0]["records"], (BATCH * 3) as i64);
    for id in ["u0_0000", "u1_0119", "crash_0000", "crash_0149"] {
        assert_eq!(server.get(&admin, &format!("{D}/frames/{id}")).status(), 200, "{id}");
    }
    assert_eq!(server.get(&admin, &format!("{D}/frames/crash_0150")).status(), 404);
    // Embeddings of committed frames are readable after the restart, and new uploads work.
    let page: Value = server.get(&admin, &format!("{D}/frames?limit=1000&after=crash_")).json().unwrap();
    assert!(page["frames"].as_array().unwrap().iter().all(|f| f["has_embedding"] == true));
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &[frame("after", 1)]).status(), 200);
}
