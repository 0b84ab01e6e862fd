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
    // Id lists cut to `cell_ids` say so, and keep the counts of the whole lists.
    let cut: Value = demo
        .get(&format!("{INSIGHTS}/metrics?inference_set=detector_v1&iou=0.5&confidence=0.3&cell_ids=1"))
        .json()
        .unwrap();
    for (row, cut_row) in cells.iter().zip(cut["confusion"]["cells"].as_array().unwrap()) {
        for (whole, cut) in row.as_array().unwrap().iter().zip(cut_row.as_array().unwrap()) {
            assert_eq!(whole["ids_complete"], true);
            assert_eq!(
                (cut["count"].clone(), cut["frames"].clone()),
                (whole["count"].clone(), whole["frames"].clone())
            );
            assert_eq!(whole["frames"].as_u64().unwrap() as usize, whole["frame_ids"].as_array().unwrap().len());
            let lists = ["label_ids", "inference_ids", "frame_ids"];
            assert!(lists.iter().all(|l| cut[l].as_array().unwrap().len() <= 1));
            let longest = lists.iter().map(|l| whole[l].as_array().unwrap().len()).max().unwrap();
            assert_eq!(cut["ids_complete"], longest <= 1, "{cut}");
            assert_eq!(
                cut["frame_ids"].as_array().unwrap()[..],
                whole["frame_ids"].as_array().unwrap()[..cut["frame_ids"].as_array().unwrap().len()]
            );
        }
    }
    assert_eq!(
        field_of(demo.get(&format!("{INSIGHTS}/metrics?inference_set=detector_v1&cell_ids=10001")), 400),
        "cell_ids"
    );

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

/// Polls the dataset status until the preparation is idle and `ready` says it is done.
fn wait_for_preparation(server: &common::Server, token: &str, ds: &str, ready: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..1200 {
        let status: Value = server.get(token, &format!("{ds}/status")).json().unwrap();
        if status["preparation"]["version"] == "idle" && ready(&status["preparation"]) {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the preparation did not finish");
}

#[test]
fn label_errors_and_metrics_are_made_after_the_upload_and_equal_a_fresh_computation() {
    let (mut server, admin) = common::Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let ds = "/api/projects/p/datasets/d";
    let square = |top: u32| json!({"kind": "box2d", "top": top, "left": 20, "width": 50, "height": 40});
    let frames: Vec<Value> = (0..40)
        .map(|i| {
            json!({"frame_id": format!("f{i:02}"), "labels": [
                {"label_id": format!("f{i:02}_0"), "class": "cat", "geometry": square(10)},
                {"label_id": format!("f{i:02}_1"), "class": "dog", "geometry": square(200)},
            ]})
        })
        .collect();
    assert_eq!(server.upload_lines(&admin, &format!("{ds}/frames"), &frames).status(), 200);
    assert_eq!(server.post_json(&admin, &format!("{ds}/inference_sets"), &json!({"name": "m"})).status(), 201);
    // The model calls every seventh cat a dog.
    let inference = |i: usize, class: &str| {
        json!({"label_id": format!("f{i:02}_p0"), "frame_id": format!("f{i:02}"), "class": class,
               "confidence": 0.9, "geometry": square(11)})
    };
    let inferences: Vec<Value> = (0..40)
        .flat_map(|i| {
            let dog = json!({"label_id": format!("f{i:02}_p1"), "frame_id": format!("f{i:02}"), "class": "dog",
                             "confidence": 0.8, "geometry": square(201)});
            [inference(i, if i % 7 == 0 { "dog" } else { "cat" }), dog]
        })
        .collect();
    let path = format!("{ds}/inference_sets/m/inferences");
    assert_eq!(server.upload_lines(&admin, &path, &inferences).status(), 200);

    // Made by the upload, before anyone asks.
    let both_ready = |p: &Value| p["inference_sets"]["m"] == json!({"label_errors": "ready", "metrics": "ready"});
    wait_for_preparation(&server, &admin, ds, both_ready);
    let read = |server: &common::Server| -> (Value, Value) {
        let errors = server.get(&admin, &format!("{ds}/insights/label_errors?inference_set=m&limit=10000"));
        let metrics = server.get(&admin, &format!("{ds}/insights/metrics?inference_set=m"));
        (errors.json().unwrap(), metrics.json().unwrap())
    };
    let (prepared_errors, prepared_metrics) = read(&server);
    let confused: Vec<&Value> = (prepared_errors["issues"].as_array().unwrap().iter())
        .filter(|i| i["kind"] == "class_confusion")
        .map(|i| &i["label_id"])
        .collect();
    assert_eq!(confused.len(), 6, "{prepared_errors}");
    let cell = |m: &Value, row: usize, column: usize| m["confusion"]["cells"][row][column]["count"].clone();
    assert_eq!(cell(&prepared_metrics, 0, 1), 6, "cats called dogs");

    // A restarted server serves them from disk: the same answers, no new ranking or evaluation.
    let jobs = |server: &common::Server, kind: &str| -> usize {
        let status: Value = server.get(&admin, &format!("{ds}/status")).json().unwrap();
        status["jobs"].as_array().unwrap().iter().filter(|j| j["kind"] == kind && j["state"] == "done").count()
    };
    let made = (jobs(&server, "label_errors:m"), jobs(&server, "metrics:m"));
    // (One each per version prepared; the upload of the frames may have made one too.)
    assert!(made.0 >= 1 && made.1 >= 1, "{made:?}");
    server.kill();
    let dir = server.dir.clone();
    let mut server = common::Server::start_on(&dir, &[]);
    assert_eq!(read(&server), (prepared_errors.clone(), prepared_metrics.clone()));
    assert_eq!((jobs(&server, "label_errors:m"), jobs(&server, "metrics:m")), made, "read from disk, not recomputed");

    // Without the saved files a restarted server computes them afresh, and gets the same answers.
    server.kill();
    let saved: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("indexes"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(['l', 'm']))
        .collect();
    assert!(saved.len() >= 2, "{saved:?}");
    saved.iter().for_each(|p| std::fs::remove_file(p).unwrap());
    let server = common::Server::start_on(&dir, &[]);
    let status: Value = server.get(&admin, &format!("{ds}/status")).json().unwrap();
    assert_eq!(status["preparation"]["inference_sets"]["m"]["label_errors"], "none");
    let (fresh_errors, fresh_metrics) = read(&server);
    assert_eq!(fresh_errors, prepared_errors);
    assert_eq!(fresh_metrics, prepared_metrics);
    assert_eq!((jobs(&server, "label_errors:m"), jobs(&server, "metrics:m")), (made.0 + 1, made.1 + 1));

    // An upload that fixes one inference makes a new version whose answers reflect it.
    let fixed = [inference(7, "cat")];
    assert_eq!(server.upload_lines(&admin, &path, &fixed).status(), 200);
    let version = status["dataset"]["version"].as_i64().unwrap() + 1;
    wait_for_preparation(&server, &admin, ds, both_ready);
    let (errors, metrics) = read(&server);
    assert_eq!((errors["version"].as_i64(), metrics["version"].as_i64()), (Some(version), Some(version)));
    assert_eq!(cell(&metrics, 0, 1), 5);
    assert!(
        !errors["issues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["label_id"] == "f07_0" && i["kind"] == "class_confusion")
    );
}
