//! Embedding generation end to end: a real server, the real model, and a counting HTTP server on loopback
//! serving the sample images. `milkglass embed` follows the job; every image is read once; anonymous
//! projects are refused without a request.

mod common;

use common::{ImageServer, Server, cli, expect_error};
use milkglass_sample::{DetectionConfig, render_png};
use serde_json::{Value, json};

/// Serves `/N.png` as the sample's frame N, counting requests.
fn png_server(config: DetectionConfig) -> ImageServer {
    ImageServer::start(move |path| {
        let index = path.trim_start_matches('/').trim_end_matches(".png").parse::<usize>().ok()?;
        Some(render_png(&config, index))
    })
}

fn project(server: &Server, token: &str, name: &str, mode: &str) {
    let classes = json!([{"id": 0, "name": "circle"}, {"id": 1, "name": "square"}]);
    let r = server.post_json(token, "/api/projects", &json!({"name": name, "access_mode": mode, "classes": classes}));
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let r = server.post_json(token, &format!("/api/projects/{name}/datasets"), &json!({"name": "d"}));
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
}

fn frames(base: &str, count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let url = if i == count - 1 { format!("{base}/missing.png") } else { format!("{base}/{i}.png") };
            json!({
                "frame_id": format!("f{i:02}"),
                "sensors": [{"kind": "image", "url": url}],
                "labels": [
                    {"label_id": format!("f{i:02}_a"), "class": "circle",
                     "geometry": {"kind": "box2d", "top": 10, "left": 20, "width": 80, "height": 60}},
                    {"label_id": format!("f{i:02}_b"), "class": "square",
                     "geometry": {"kind": "box2d", "top": 100, "left": 120, "width": 60, "height": 60}}
                ]
            })
        })
        .collect()
}

#[test]
fn embed_reads_each_image_once_and_attaches_frame_and_crop_vectors() {
    let images = png_server(DetectionConfig { frames: 10, ..Default::default() });
    let base = format!("http://{}", images.addr);
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    project(&server, &admin, "shapes", "public");
    let d = "/api/projects/shapes/datasets/d";
    let r = server.upload_lines(&admin, &format!("{d}/frames"), &frames(&base, 7));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());

    // Ingest probes each URL once in the background (the URL check); count what embedding itself reads.
    for _ in 0..100 {
        if server.get(&admin, &format!("{d}/url_report")).status() == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let before = images.count();
    assert_eq!(before, 7, "the URL check probes each image once");
    let out = cli(&["embed", "shapes", "d", "--batch", "4", "--server", &server.base, "--token", &admin]);
    assert!(out.contains("embedded 6 frames and 12 crops"), "{out}");
    assert!(out.contains("1 images could not be read") && out.contains("f06"), "{out}");
    assert_eq!(images.count() - before, 7, "each image is read exactly once");

    let status: Value = server.get(&admin, &format!("{d}/status")).json().unwrap();
    assert_eq!(status["frame_embeddings"], 6, "{status}");
    assert_eq!(status["label_embeddings"], 12, "{status}");
    let job = &status["jobs"][0];
    assert_eq!((job["kind"].as_str(), job["state"].as_str()), (Some("embed"), Some("done")), "{status}");
    assert_eq!(job["progress"], job["total"]);
    let dataset: Value = server.get(&admin, d).json().unwrap();
    assert_eq!(dataset["frame_embedding_dim"], 512, "{dataset}");

    let frame: Value = server.get(&admin, &format!("{d}/frames/f00")).json().unwrap();
    assert_eq!(frame["has_embedding"], true, "{frame}");
    assert_eq!(frame["labels"][1]["has_embedding"], true, "{frame}");
    let missing: Value = server.get(&admin, &format!("{d}/frames/f06")).json().unwrap();
    assert_eq!(missing["has_embedding"], false, "{missing}");
}

#[test]
fn embed_is_refused_for_anonymous_projects_without_a_request() {
    let images = png_server(DetectionConfig { frames: 3, ..Default::default() });
    let base = format!("http://{}", images.addr);
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    project(&server, &admin, "secret", "anonymous");
    let d = "/api/projects/secret/datasets/d";
    let mut lines = frames(&base, 3);
    for (i, line) in lines.iter_mut().enumerate() {
        line["embedding"] = json!([i as f32, 1.0, 2.0]);
    }
    assert_eq!(server.upload_lines(&admin, &format!("{d}/frames"), &lines).status(), 200);
    let error = expect_error(server.post_json(&admin, &format!("{d}/embed"), &json!({})), 409);
    assert_eq!(error["code"], "anonymous_project", "{error}");
    assert!(error["message"].as_str().unwrap().contains("never fetches"), "{error}");
    assert_eq!(images.count(), 0);
}

#[test]
fn embed_refuses_bad_requests_and_datasets_with_other_vectors() {
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    project(&server, &admin, "p", "public");
    let d = "/api/projects/p/datasets/d";
    let error = expect_error(server.post_json(&admin, &format!("{d}/embed"), &json!({"batch": 0})), 400);
    assert_eq!(error["field"], "batch", "{error}");
    let line = json!({"frame_id": "a", "sensors": [{"kind": "image", "url": "http://127.0.0.1:9/a.png"}],
                      "embedding": [0.5, 0.5, 0.5]});
    assert_eq!(server.upload_lines(&admin, &format!("{d}/frames"), &[line]).status(), 200);
    let error = expect_error(server.post_json(&admin, &format!("{d}/embed"), &json!({})), 409);
    assert!(error["message"].as_str().unwrap().contains("dimension 3"), "{error}");
}
