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

    // One page carries its frames' labels and one inference set's boxes, and counts the filter.
    let page: Value = get(
        viewer,
        "/api/projects/shapes/datasets/shapes/frames?limit=5&offset=10&count=true&labels=true&inference_set=detector_v1",
    )
    .json()
    .unwrap();
    assert_eq!(page["total"], 60, "{page}");
    assert_eq!(page["frames"].as_array().unwrap().len(), 5);
    assert_eq!(page["frames"][0]["frame_id"], "frame_0010", "offset skips the first ten");
    let first = &page["frames"][0];
    assert_eq!(first["labels"].as_array().unwrap().len() as i64, first["label_count"].as_i64().unwrap());
    let one: Value = get(viewer, "/api/projects/shapes/datasets/shapes/frames/frame_0010").json().unwrap();
    assert_eq!(first["labels"], one["labels"], "the page's labels are the frame's");
    assert_eq!(first["inferences"], one["inferences"]["detector_v1"]);
    let cat: Value =
        get(viewer, "/api/projects/shapes/datasets/shapes/frames?class=circle&count=true&limit=1").json().unwrap();
    assert!(cat["total"].as_i64().unwrap() < 60, "{cat}");
    // A confusion-matrix cell names its frames, and the listing shows exactly those.
    let metrics: Value =
        get(viewer, "/api/projects/shapes/datasets/shapes/insights/metrics?inference_set=detector_v1").json().unwrap();
    let cell = metrics["confusion"]["cells"][0][0].clone();
    let frame_ids: Vec<&str> = cell["frame_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!frame_ids.is_empty(), "{cell}");
    let query: String = frame_ids.iter().map(|id| format!("&id={id}")).collect();
    let listed: Value =
        get(viewer, &format!("/api/projects/shapes/datasets/shapes/frames?limit=1000&count=true{query}"))
            .json()
            .unwrap();
    let listed_ids: Vec<&str> =
        listed["frames"].as_array().unwrap().iter().map(|f| f["frame_id"].as_str().unwrap()).collect();
    assert_eq!(listed_ids, frame_ids);
    assert_eq!(listed["total"].as_u64().unwrap() as usize, frame_ids.len());
    // A segment of frames is a filter too.
    let segment = serde_json::json!({"name": "pair", "item_kind": "frames", "items": ["frame_0005", "frame_0001"]});
    let created = client
        .post(format!("{base}/api/projects/shapes/datasets/shapes/segments"))
        .bearer_auth(admin)
        .json(&segment)
        .send()
        .unwrap();
    assert_eq!(created.status(), 201);
    let in_segment: Value = get(viewer, "/api/projects/shapes/datasets/shapes/frames?segment=pair").json().unwrap();
    let ids: Vec<&str> =
        in_segment["frames"].as_array().unwrap().iter().map(|f| f["frame_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["frame_0001", "frame_0005"]);
    assert_eq!(get(viewer, "/api/projects/shapes/datasets/shapes/frames?segment=none").status(), 404);
    // A segment of a big selection (100k ids, beyond the 1 MiB limit of other JSON bodies) is saved.
    let many: Vec<String> = (0..100_000).map(|i| format!("frame_{i:07}")).collect();
    let big = serde_json::json!({"name": "lassoed", "item_kind": "frames", "items": many});
    let saved = client
        .post(format!("{base}/api/projects/shapes/datasets/shapes/segments"))
        .bearer_auth(admin)
        .json(&big)
        .send()
        .unwrap();
    assert_eq!(saved.status(), 201);
    // The map's points carry how far the model agrees with the labels, frame by frame.
    let points: Value = get(
        viewer,
        "/api/projects/shapes/datasets/shapes/insights/map/ids?attributes=agreement,class&inference_set=detector_v1",
    )
    .json()
    .unwrap();
    let agreement = points["attributes"]["agreement"].as_array().unwrap();
    assert_eq!(agreement.len(), points["ids"].as_array().unwrap().len());
    assert!(agreement.iter().all(|a| a.is_null() || (0.0..=1.0).contains(&a.as_f64().unwrap())));
    assert!(agreement.iter().any(|a| a.as_f64().is_some_and(|x| x > 0.5)), "the demo model mostly agrees");
    assert_eq!(get(viewer, "/api/projects/shapes/datasets/shapes/insights/map/ids?attributes=agreement").status(), 400);
    let missing = get(viewer, "/api/projects/shapes/datasets/shapes/frames?inference_set=nope");
    assert_eq!(missing.status(), 404);
    // JSON is compressed for clients that ask.
    let gzipped = client
        .get(format!("{base}/api/projects/shapes/datasets/shapes/frames?limit=100&labels=true"))
        .bearer_auth(viewer)
        .header("accept-encoding", "gzip")
        .send()
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");

    // `/` is the web app (or, in a build without it, a page that says how to build it), with
    // a CSP; unknown API paths stay JSON 404s; the app's routes fall back to it.
    for path in ["/", "/projects/shapes/datasets/shapes?class=circle"] {
        let page = client.get(format!("{base}{path}")).send().unwrap();
        assert_eq!(page.status(), 200, "{path}");
        assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
        assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("script-src 'self'"));
        assert!(page.text().unwrap().contains("milkglass"));
    }
    let api = client.get(format!("{base}/api/nope")).send().unwrap();
    assert_eq!(api.status(), 404);
    assert_eq!(api.json::<Value>().unwrap()["error"]["code"], "not_found");

    // Nothing outside the sample directory is reachable.
    for path in [
        "/sample/../catalog.db",
        "/sample/%2e%2e/catalog.db",
        "/sample/shapes/..%2f..%2fcatalog.db",
        "/sample/..%5ccatalog.db",
    ] {
        // A path the client normalizes out of /sample/ lands on the web app, never on a file.
        let r = client.get(format!("{base}{path}")).send().unwrap();
        let status = r.status();
        let html = r.headers().get("content-type").is_some_and(|t| t.to_str().unwrap().starts_with("text/html"));
        let body = r.bytes().unwrap();
        assert!(status == 404 || (status == 200 && html), "{path}: {status}");
        assert!(!body.starts_with(b"SQLite format"), "{path} served the catalog");
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
