//! Classification datasets end to end on a real server: inferences carry class probabilities
//! (checked when uploaded), and the label-error queue ranks the labels the model contradicts
//! with confident learning.

mod common;

use common::{Server, expect_error};
use serde_json::{Value, json};

const D: &str = "/api/projects/p/datasets/d";

#[test]
fn confident_learning_finds_flipped_labels_from_the_models_probabilities() {
    let (server, admin) = Server::start(&[]);
    let classes = json!([{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 2, "name": "bird"}]);
    assert_eq!(server.post_json(&admin, "/api/projects", &json!({"name": "p", "classes": classes})).status(), 201);
    assert_eq!(server.post_json(&admin, "/api/projects/p/datasets", &json!({"name": "d"})).status(), 201);
    assert_eq!(server.post_json(&admin, &format!("{D}/inference_sets"), &json!({"name": "m"})).status(), 201);
    let names = ["cat", "dog", "bird"];
    let n = 150;
    let frames: Vec<Value> = (0..n)
        .map(|i| json!({"frame_id": format!("f{i:03}"), "sensors": [{"kind": "image", "url": format!("https://x/{i}.png")}]}))
        .collect();
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &frames).status(), 200);
    // Every 15th frame's label is flipped to the next class; the model still sees the truth.
    let flipped: Vec<String> = (0..n).filter(|i| i % 15 == 7).map(|i| format!("f{i:03}")).collect();
    let mut labels = Vec::new();
    let mut inferences = Vec::new();
    for i in 0..n {
        let truth = i % 3;
        let given = if i % 15 == 7 { (truth + 1) % 3 } else { truth };
        let frame_id = format!("f{i:03}");
        labels.push(json!({"label_id": format!("{frame_id}_gt"), "frame_id": frame_id, "class": names[given],
                           "geometry": {"kind": "classification"}}));
        // Probabilities as a list in class-map order for half the frames, as a map for the rest.
        let mut p = [0.05, 0.05, 0.05];
        p[truth] = 0.9;
        let probabilities = if i % 2 == 0 { json!(p) } else { json!({"cat": p[0], "dog": p[1], "bird": p[2]}) };
        inferences.push(json!({"label_id": format!("{frame_id}_m"), "frame_id": frame_id, "class": names[truth],
                               "confidence": 0.9, "probabilities": probabilities,
                               "geometry": {"kind": "classification"}}));
    }
    assert_eq!(server.upload_lines(&admin, &format!("{D}/labels"), &labels).status(), 200);
    let r = server.upload_lines(&admin, &format!("{D}/inference_sets/m/inferences"), &inferences);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());

    let errors: Value =
        server.get(&admin, &format!("{D}/insights/label_errors?inference_set=m&limit=20")).json().unwrap();
    let found: Vec<&str> =
        errors["issues"].as_array().unwrap().iter().map(|i| i["frame_id"].as_str().unwrap()).collect();
    assert_eq!(errors["total"].as_u64(), Some(flipped.len() as u64), "{errors}");
    let mut sorted = found.clone();
    sorted.sort();
    assert_eq!(sorted, flipped, "exactly the flipped labels, {errors}");
    let first = &errors["issues"][0];
    assert_eq!(first["kind"], "class_confusion");
    let i: usize = first["frame_id"].as_str().unwrap()[1..].parse().unwrap();
    assert_eq!(first["suggested_class"], names[i % 3], "the model's class is suggested");
    // Classification metrics: accuracy, top-k, the class report, the confusion matrix with its
    // frames, and calibration (every prediction says 0.9; 140 of 150 agree with their label).
    let metrics: Value = server.get(&admin, &format!("{D}/insights/metrics?inference_set=m")).json().unwrap();
    assert_eq!(metrics["task"], "classification");
    assert_eq!(metrics["examples"], n);
    let accuracy = metrics["accuracy"].as_f64().unwrap();
    assert!((accuracy - 140.0 / 150.0).abs() < 1e-9, "{metrics}");
    assert_eq!(metrics["top_k"], json!({"k": 3, "accuracy": 1.0}));
    let ece = metrics["calibration"]["ece"].as_f64().unwrap();
    assert!((ece - (140.0 / 150.0 - 0.9)).abs() < 1e-9, "{ece}");
    let bin = &metrics["calibration"]["bins"][9];
    assert_eq!(bin["count"], n);
    // Flipped cats were labelled dog: the (dog, cat) cell holds exactly those frames.
    let cell = &metrics["confusion"]["cells"][1][0];
    let expected: Vec<String> = (0..n).filter(|i| i % 15 == 7 && i % 3 == 0).map(|i| format!("f{i:03}")).collect();
    assert_eq!(cell["frame_ids"], json!(expected), "{cell}");
    assert_eq!(cell["count"], expected.len());
    let given_cat = (0..n).filter(|i| if i % 15 == 7 { (i % 3 + 1) % 3 == 0 } else { i % 3 == 0 }).count();
    let cat = &metrics["classes"][0];
    assert_eq!((cat["class"].as_str(), cat["support"].as_u64()), (Some("cat"), Some(given_cat as u64)), "{cat}");
    // Every cat the model predicts is a true cat; the flipped birds labelled cat are its misses.
    let recall = cat["recall"].as_f64().unwrap();
    let true_cats = (0..n).filter(|i| i % 3 == 0 && i % 15 != 7).count();
    assert!((recall - true_cats as f64 / given_cat as f64).abs() < 1e-9, "{cat}");
    // The frame shows the stored probabilities, in class-map order.
    let frame: Value = server.get(&admin, &format!("{D}/frames/f001")).json().unwrap();
    assert_eq!(frame["inferences"]["m"][0]["probabilities"], json!([0.05, 0.9, 0.05]));
    // Dismissed, an issue leaves the queue.
    let dismiss =
        json!({"kind": "class_confusion", "label_id": first["label_id"], "inference_id": first["inference_id"]});
    assert_eq!(server.post_json(&admin, &format!("{D}/insights/label_errors/dismiss"), &dismiss).status(), 200);
    let after: Value = server.get(&admin, &format!("{D}/insights/label_errors?inference_set=m")).json().unwrap();
    assert_eq!(after["total"].as_u64(), Some(flipped.len() as u64 - 1));
    // The ranking is kept per version: fixing a label is a new version, ranked afresh.
    let fixed = &flipped[flipped.len() - 1];
    let i: usize = fixed[1..].parse().unwrap();
    let label = json!({"label_id": format!("{fixed}_gt"), "frame_id": fixed, "class": names[i % 3],
                       "geometry": {"kind": "classification"}});
    assert_eq!(server.upload_lines(&admin, &format!("{D}/labels"), &[label]).status(), 200);
    let fresh: Value = server.get(&admin, &format!("{D}/insights/label_errors?inference_set=m")).json().unwrap();
    assert_eq!(fresh["total"].as_u64(), Some(flipped.len() as u64 - 2), "{fresh}");
    assert!(fresh["issues"].as_array().unwrap().iter().all(|issue| issue["frame_id"] != fixed.as_str()));
}

#[test]
fn probabilities_are_checked_when_uploaded() {
    let (server, admin) = Server::start(&[]);
    let classes = json!([{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]);
    assert_eq!(server.post_json(&admin, "/api/projects", &json!({"name": "p", "classes": classes})).status(), 201);
    assert_eq!(server.post_json(&admin, "/api/projects/p/datasets", &json!({"name": "d"})).status(), 201);
    assert_eq!(server.post_json(&admin, &format!("{D}/inference_sets"), &json!({"name": "m"})).status(), 201);
    let frame = json!({"frame_id": "f", "sensors": [{"kind": "image", "url": "https://x/f.png"}]});
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &[frame]).status(), 200);
    let inference = |probabilities: Value| {
        json!({"label_id": "m1", "frame_id": "f", "class": "cat", "confidence": 0.7, "probabilities": probabilities,
               "geometry": {"kind": "classification"}})
    };
    for (probabilities, field) in [
        (json!([0.7, 0.7]), "probabilities"),
        (json!([0.7]), "probabilities"),
        (json!([1.5, -0.5]), "probabilities[0]"),
        (json!({"cat": 0.7, "horse": 0.3}), "probabilities.horse"),
    ] {
        let r = server.upload_lines(&admin, &format!("{D}/inference_sets/m/inferences"), &[inference(probabilities)]);
        let error = expect_error(r, 400);
        assert!(error["field"].as_str().unwrap().ends_with(field), "{error}");
    }
    let label = json!({"label_id": "l1", "frame_id": "f", "class": "cat", "probabilities": [1.0, 0.0],
                       "geometry": {"kind": "classification"}});
    let error = expect_error(server.upload_lines(&admin, &format!("{D}/labels"), &[label]), 400);
    assert!(error["field"].as_str().unwrap().ends_with("probabilities"), "{error}");
}
