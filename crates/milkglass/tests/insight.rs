//! The insight routes against a real server on the demo data (the drawn-shapes sample with its
//! detector's inferences, frame and crop embeddings, and injected label errors).

mod common;

use common::start_demo;
use reqwest::blocking::Client;
use serde_json::{Value, json};

struct Demo {
    child: std::process::Child,
    base: String,
    admin: String,
    client: Client,
    _temp: tempfile::TempDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn demo(frames: &str, exact_search_limit: Option<&str>) -> Demo {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("demo");
    let envs: Vec<(&str, &str)> =
        exact_search_limit.map(|limit| ("MILKGLASS_EXACT_SEARCH_LIMIT", limit)).into_iter().collect();
    let (child, base, tokens) = start_demo(&dir, frames, &envs);
    let admin = tokens["admin"]["token"].as_str().unwrap().to_string();
    Demo { child, base, admin, client: Client::new(), _temp: temp }
}

const INSIGHTS: &str = "/api/projects/shapes/datasets/shapes/insights";

impl Demo {
    fn get(&self, path: &str) -> reqwest::blocking::Response {
        self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.admin).send().unwrap()
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.admin).json(body).send().unwrap()
    }
}

fn field_of(response: reqwest::blocking::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    let body: Value = response.json().unwrap();
    body["error"]["field"].as_str().unwrap_or_default().to_string()
}

#[test]
fn label_errors_metrics_similarity_and_map_over_http() {
    let demo = demo("120", None);

    // Label errors: ranked, scored in [0, 1], and the injected errors near the top.
    let queue: Value =
        demo.get(&format!("{INSIGHTS}/label_errors?inference_set=detector_v1&limit=1000")).json().unwrap();
    let issues = queue["issues"].as_array().unwrap();
    assert!(!issues.is_empty());
    let scores: Vec<f64> = issues.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "ranked by score");
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    assert_eq!(queue["used_embeddings"], true);
    let injected: Value =
        demo.client.get(format!("{}/sample/shapes/injected_errors.json", demo.base)).send().unwrap().json().unwrap();
    let injected = injected.as_array().unwrap();
    let wrong_labels: Vec<&str> = injected
        .iter()
        .filter(|e| e["kind"] == "wrong_class" || e["kind"] == "duplicate_label")
        .filter_map(|e| e["label_id"].as_str())
        .collect();
    let top = &issues[..(2 * injected.len()).min(issues.len())];
    let found = wrong_labels
        .iter()
        .filter(|id| top.iter().any(|i| i["label_id"] == **id || i["other_label_id"] == **id))
        .count();
    assert!(
        found * 10 >= wrong_labels.len() * 9,
        "{found} of {} wrong-class and duplicate labels in the top",
        wrong_labels.len()
    );
    let only: Value =
        demo.get(&format!("{INSIGHTS}/label_errors?inference_set=detector_v1&kind=duplicate_label")).json().unwrap();
    assert!(only["issues"].as_array().unwrap().iter().all(|i| i["kind"] == "duplicate_label"));
    assert_eq!(field_of(demo.get(&format!("{INSIGHTS}/label_errors")), 400), "inference_set");
    assert_eq!(field_of(demo.get(&format!("{INSIGHTS}/label_errors?inference_set=detector_v1&limit=x")), 400), "limit");
    assert_eq!(
        field_of(demo.get(&format!("{INSIGHTS}/label_errors?inference_set=detector_v1&colour=red")), 400),
        "colour"
    );
    assert_eq!(demo.get(&format!("{INSIGHTS}/label_errors?inference_set=nope")).status(), 404);

    // Metrics: mAP in range, a confusion matrix with background whose cells name their objects.
    let metrics: Value =
        demo.get(&format!("{INSIGHTS}/metrics?inference_set=detector_v1&iou=0.5&confidence=0.3")).json().unwrap();
    let map50 = metrics["map50"].as_f64().unwrap();
    let map = metrics["map"].as_f64().unwrap();
    assert!(map50 > 0.5 && map50 <= 1.0 && map < map50, "mAP {map}, mAP@0.5 {map50}");
    let rows = metrics["confusion"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[4], "background");
    let cells = metrics["confusion"]["cells"].as_array().unwrap();
    let diagonal = &cells[0][0];
    assert!(diagonal["count"].as_u64().unwrap() > 0);
    assert_eq!(diagonal["label_ids"].as_array().unwrap().len() as u64, diagonal["count"].as_u64().unwrap());
    assert_eq!(metrics["classes"][0]["pr_curve_iou50"].as_array().unwrap().len(), 101);
    assert_eq!(field_of(demo.get(&format!("{INSIGHTS}/metrics?inference_set=detector_v1&iou=2")), 400), "iou");

    // Similarity: by frame (never itself), with a metadata filter, by label, by vector.
    let near: Value =
        demo.post(&format!("{INSIGHTS}/similar"), &json!({"frame_id": "frame_0003", "k": 5})).json().unwrap();
    let neighbors = near["neighbors"].as_array().unwrap();
    assert_eq!(neighbors.len(), 5);
    assert!(neighbors.iter().all(|n| n["frame_id"] != "frame_0003"));
    assert_eq!(near["method"], "exact");
    let distances: Vec<f64> = neighbors.iter().map(|n| n["distance"].as_f64().unwrap()).collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1]));
    let filtered: Value = demo
        .post(&format!("{INSIGHTS}/similar"), &json!({"frame_id": "frame_0003", "k": 50, "filter": {"split": "val"}}))
        .json()
        .unwrap();
    for n in filtered["neighbors"].as_array().unwrap() {
        let frame: Value = demo
            .get(&format!("/api/projects/shapes/datasets/shapes/frames/{}", n["frame_id"].as_str().unwrap()))
            .json()
            .unwrap();
        assert_eq!(frame["metadata"]["split"], "val");
    }
    let some_label = diagonal["label_ids"][0].as_str().unwrap();
    let crops: Value = demo
        .post(
            &format!("{INSIGHTS}/similar"),
            &json!({"space": "labels", "label_id": some_label, "k": 3, "metric": "l2"}),
        )
        .json()
        .unwrap();
    assert_eq!(crops["neighbors"].as_array().unwrap().len(), 3);
    assert!(crops["neighbors"][0]["label_id"].is_string());
    let by_vector = demo.post(&format!("{INSIGHTS}/similar"), &json!({"vector": [0.5, 0.5], "k": 3}));
    assert_eq!(field_of(by_vector, 400), "vector");
    let both = demo.post(&format!("{INSIGHTS}/similar"), &json!({"frame_id": "frame_0003", "vector": [0.1]}));
    assert_eq!(field_of(both, 400), "frame_id");
    assert_eq!(
        field_of(demo.post(&format!("{INSIGHTS}/similar"), &json!({"frame_id": "frame_0003", "k": 0})), 400),
        "k"
    );

    // The map: packed f32 pairs, one per frame, in the order of map/ids.
    let response = demo.get(&format!("{INSIGHTS}/map?space=frames"));
    assert_eq!(response.headers()["content-type"], "application/octet-stream");
    let points: usize = response.headers()["x-milkglass-points"].to_str().unwrap().parse().unwrap();
    let bytes = response.bytes().unwrap();
    assert_eq!(points, 120);
    assert_eq!(bytes.len(), points * 8);
    let ids: Value = demo.get(&format!("{INSIGHTS}/map/ids?space=frames")).json().unwrap();
    assert_eq!(ids["ids"].as_array().unwrap().len(), points);
    let umap = demo.get(&format!("{INSIGHTS}/map?space=labels&layout=umap")).bytes().unwrap();
    let floats: Vec<f32> = umap.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert!(!floats.is_empty() && floats.iter().all(|x| x.is_finite()));
    assert_eq!(field_of(demo.get(&format!("{INSIGHTS}/map?layout=tsne")), 400), "layout");
}

/// Waits until the dataset's newest `index:frames:cosine` job is done and has the id after
/// `after`; returns it.
fn wait_for_index_job(demo: &Demo, after: i64) -> Value {
    for _ in 0..600 {
        let status: Value = demo.get("/api/projects/shapes/datasets/shapes/status").json().unwrap();
        let job = status["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "index:frames:cosine" && j["id"].as_i64().unwrap() > after)
            .cloned();
        if let Some(job) = job.filter(|j| j["state"] == "done") {
            return job;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the index job did not finish");
}

#[test]
fn the_index_is_built_in_the_background_and_updated_not_rebuilt_per_upload() {
    // Force the index path on 80 frames.
    let demo = demo("80", Some("20"));
    let similar = |body: Value| -> Value { demo.post(&format!("{INSIGHTS}/similar"), &body).json().unwrap() };
    let first = similar(json!({"frame_id": "frame_0003", "k": 5}));
    assert_eq!(first["method"], "exact", "answered exactly while the index builds");
    let job = wait_for_index_job(&demo, 0);
    assert_eq!(job["message"], "built from scratch");
    assert_eq!(job["progress"], 80);
    let indexed = similar(json!({"frame_id": "frame_0003", "k": 5}));
    assert_eq!(indexed["method"], "hnsw");
    assert_eq!(indexed["neighbors"], first["neighbors"], "on 80 points the index finds the exact answer");

    // A new frame: a new version, and the index is updated from the previous one.
    let mut vector = vec![0.0f32; 64];
    vector[0] = 1.0;
    let frame = json!({
        "frame_id": "frame_new",
        "sensors": [{"sensor_id": "DEFAULT", "kind": "image", "url": "https://img.example.com/new.png"}],
        "embedding": vector,
    });
    let response = demo
        .client
        .post(format!("{}/api/projects/shapes/datasets/shapes/frames", demo.base))
        .bearer_auth(&demo.admin)
        .header("content-type", "application/x-ndjson")
        .body(format!("{frame}\n"))
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{}", response.text().unwrap());
    let meanwhile = similar(json!({"vector": vector, "k": 1}));
    assert_eq!(meanwhile["neighbors"][0]["frame_id"], "frame_new");
    let job = wait_for_index_job(&demo, job["id"].as_i64().unwrap());
    let message = job["message"].as_str().unwrap();
    assert!(message.contains("1 added, 0 removed"), "{message}");
    let after = similar(json!({"vector": vector, "k": 1}));
    assert_eq!(after["method"], "hnsw");
    assert_eq!(after["neighbors"][0]["frame_id"], "frame_new");
    assert!(after["neighbors"][0]["distance"].as_f64().unwrap() < 1e-5);

    // A deleted frame becomes a tombstone: never returned.
    let deleted = demo
        .client
        .delete(format!("{}/api/projects/shapes/datasets/shapes/frames/frame_new", demo.base))
        .bearer_auth(&demo.admin)
        .send()
        .unwrap();
    assert!(deleted.status().is_success());
    let _ = similar(json!({"vector": vector, "k": 1}));
    let job = wait_for_index_job(&demo, job["id"].as_i64().unwrap());
    assert!(job["message"].as_str().unwrap().contains("0 added, 1 removed"), "{}", job["message"]);
    let gone = similar(json!({"vector": vector, "k": 80}));
    assert_eq!(gone["method"], "hnsw");
    let ids: Vec<&str> =
        gone["neighbors"].as_array().unwrap().iter().map(|n| n["frame_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 80);
    assert!(!ids.contains(&"frame_new"));
}

#[test]
fn not_an_issue_marks_segments_export_and_collection() {
    let demo = demo("60", None);
    let queue = |extra: &str| -> Value {
        demo.get(&format!("{INSIGHTS}/label_errors?inference_set=detector_v1&limit=1000{extra}")).json().unwrap()
    };
    let before = queue("");
    let first = before["issues"][0].clone();
    let mark = json!({"kind": first["kind"], "label_id": first["label_id"], "inference_id": first["inference_id"]});
    let response = demo.post(&format!("{INSIGHTS}/label_errors/dismiss"), &mark);
    assert_eq!(response.status(), 200);
    let after = queue("");
    assert_eq!(after["total"].as_u64().unwrap(), before["total"].as_u64().unwrap() - 1);
    assert_ne!(after["issues"][0], first, "the dismissed issue left the queue");
    assert_eq!(
        field_of(
            demo.post(&format!("{INSIGHTS}/label_errors/dismiss"), &json!({"kind": "typo", "label_id": "x"})),
            400
        ),
        "kind"
    );

    let segments = "/api/projects/shapes/datasets/shapes/segments";
    let spec = json!({"name": "hard", "description": "to relabel", "item_kind": "frames", "items": ["frame_0001", "frame_0002"]});
    let created = demo.post(segments, &spec);
    assert_eq!(created.status(), 201);
    let created: Value = created.json().unwrap();
    assert_eq!(created["state"], "open");
    assert_eq!(demo.post(segments, &spec).status(), 409);
    assert_eq!(field_of(demo.post(segments, &json!({"name": "x", "state": "done"})), 400), "state");
    let listed: Value = demo.get(segments).json().unwrap();
    assert_eq!(listed["segments"].as_array().unwrap().len(), 1);
    let patched: Value = demo
        .client
        .patch(format!("{}{segments}/hard", demo.base))
        .bearer_auth(&demo.admin)
        .json(&json!({"state": "in_review"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(patched["state"], "in_review");
    assert_eq!(patched["items"], json!(["frame_0001", "frame_0002"]));
    let jsonl = demo.get(&format!("{segments}/hard/export?format=jsonl")).text().unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    assert_eq!(serde_json::from_str::<Value>(jsonl.lines().next().unwrap()).unwrap()["frame_id"], "frame_0001");
    let csv = demo.get(&format!("{segments}/hard/export?format=csv")).text().unwrap();
    assert_eq!(csv, "frame_id\nframe_0001\nframe_0002\n");
    assert_eq!(field_of(demo.get(&format!("{segments}/hard/export?format=xml")), 400), "format");

    // Collection into a pool dataset of the same project.
    let pool = demo.post("/api/projects/shapes/datasets", &json!({"name": "pool"}));
    assert!(pool.status().is_success(), "{}", pool.text().unwrap());
    let lines: String = (0..5)
        .map(|i| {
            let vector: Vec<f32> = (0..64).map(|d| ((i * 7 + d) % 11) as f32 - 5.0).collect();
            let frame = json!({
                "frame_id": format!("pool_{i}"),
                "sensors": [{"sensor_id": "DEFAULT", "kind": "image", "url": format!("https://img.example.com/p{i}.png")}],
                "embedding": vector,
            });
            format!("{frame}\n")
        })
        .collect();
    let uploaded = demo
        .client
        .post(format!("{}/api/projects/shapes/datasets/pool/frames", demo.base))
        .bearer_auth(&demo.admin)
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .unwrap();
    assert!(uploaded.status().is_success(), "{}", uploaded.text().unwrap());
    let collected =
        demo.post(&format!("{segments}/hard/collect"), &json!({"from_dataset": "pool", "name": "pick", "k": 2}));
    assert_eq!(collected.status(), 201);
    let collected: Value = collected.json().unwrap();
    let items = collected["items"].as_array().unwrap();
    assert!((2..=4).contains(&items.len()), "{items:?}");
    assert!(items.iter().all(|i| i.as_str().unwrap().starts_with("pool_")));
    let saved: Value = demo.get("/api/projects/shapes/datasets/pool/segments/pick").json().unwrap();
    assert_eq!(saved["items"], collected["items"]);

    let deleted = demo.client.delete(format!("{}{segments}/hard", demo.base)).bearer_auth(&demo.admin).send().unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(demo.get(&format!("{segments}/hard")).status(), 404);
}
