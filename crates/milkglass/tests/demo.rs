//! `milkglass demo` end to end: sample data loaded, served, and the sample route safe.

mod common;

use common::{BIN, start_demo};
use reqwest::blocking::Client;
use serde_json::Value;
use std::process::Command;

#[test]
fn demo_serves_the_sample_data() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("demo");
    let (mut child, base, tokens) = start_demo(&dir, "60", &[]);
    let admin = tokens["admin"]["token"].as_str().unwrap();
    let viewer = tokens["victor"]["token"].as_str().unwrap();
    let client = Client::new();
    let get = |token: &str, path: &str| client.get(format!("{base}{path}")).bearer_auth(token).send().unwrap();

    let status: Value = get(admin, "/api/projects/shapes/datasets/shapes/status").json().unwrap();
    assert_eq!(status["frames"], 60);
    assert_eq!(status["frame_embeddings"], 60);
    assert!(status["labels"].as_i64().unwrap() > 60);
    assert!(status["inferences"].as_i64().unwrap() > 60);
    // The viewer was added to the project and reads it.
    let frame: Value = get(viewer, "/api/projects/shapes/datasets/shapes/frames/frame_0003").json().unwrap();
    assert!(frame["inferences"]["detector_v1"].is_array());
    let url = frame["sensors"][0]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&base), "sample URLs point at this server: {url}");

    // The image the frame points at is served, as a PNG.
    let image = client.get(&url).send().unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    assert_eq!(&image.bytes().unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let errors: Value =
        client.get(format!("{base}/sample/shapes/injected_errors.json")).send().unwrap().json().unwrap();
    assert!(!errors.as_array().unwrap().is_empty());

    // Nothing outside the sample directory is reachable.
    for path in [
        "/sample/../catalog.db",
        "/sample/%2e%2e/catalog.db",
        "/sample/shapes/..%2f..%2fcatalog.db",
        "/sample/..%5ccatalog.db",
    ] {
        let r = client.get(format!("{base}{path}")).send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Running the demo again replaces its own directory, but never a foreign one.
    let foreign = temp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), "keep me").unwrap();
    let out = Command::new(BIN).args(["demo", "--no-serve", "--data-dir", foreign.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a milkglass demo directory"));
    assert!(foreign.join("precious.txt").exists());
    let out = Command::new(BIN)
        .args([
            "demo",
            "--no-serve",
            "--frames",
            "10",
            "--data-dir",
            dir.to_str().unwrap(),
            "--http-addr",
            "127.0.0.1:0",
            "--flight-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
