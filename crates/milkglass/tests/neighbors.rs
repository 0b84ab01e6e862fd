//! Neighbour analytics through `GET {ds}/insights/neighbors` on a real server, on a dataset with
//! planted near-duplicates (exact and slightly changed copies), off-distribution frames and
//! flipped labels: each is found.

mod common;

use common::Server;
use serde_json::{Value, json};
use std::collections::BTreeSet;

const DIM: usize = 16;
const CLUSTERS: usize = 4;

/// A small deterministic generator, so the planted data is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    fn vector(&mut self, scale: f32) -> Vec<f32> {
        (0..DIM).map(|_| self.next() * scale).collect()
    }
}

fn frame(id: &str, class: usize, embedding: &[f32]) -> Value {
    json!({
        "frame_id": id,
        "sensors": [{"kind": "image", "url": format!("https://img.example.com/{id}.png")}],
        "labels": [{"label_id": format!("{id}_l"), "class": format!("c{class}"),
                    "geometry": {"kind": "box2d", "top": 1, "left": 1, "width": 5, "height": 5}}],
        "embedding": embedding,
    })
}

#[test]
fn planted_copies_outliers_and_flipped_labels_are_found() {
    let (server, admin) = Server::start(&[]);
    let classes: Vec<Value> = (0..CLUSTERS).map(|c| json!({"id": c, "name": format!("c{c}")})).collect();
    let r = server.post_json(&admin, "/api/projects", &json!({"name": "p", "classes": classes}));
    assert_eq!(r.status(), 201);
    assert_eq!(server.post_json(&admin, "/api/projects/p/datasets", &json!({"name": "d"})).status(), 201);

    let mut rng = Lcg(7);
    let centers: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| rng.vector(1.0)).collect();
    let mut frames = Vec::new();
    let mut vectors = Vec::new();
    for i in 0..240 {
        let class = i % CLUSTERS;
        let v: Vec<f32> = centers[class].iter().zip(rng.vector(0.25)).map(|(c, n)| c + n).collect();
        vectors.push(v.clone());
        // Frames 0, 1 and 2 carry a class their neighbours do not.
        let given = if i < 3 { (class + 1) % CLUSTERS } else { class };
        frames.push(frame(&format!("f{i:03}"), given, &v));
    }
    let mut planted_pairs = Vec::new();
    for k in 0..10 {
        let original = 10 + k * 7;
        // An exact copy, and one changed a little (what resizing does to an embedding).
        let exact = vectors[original].clone();
        let resized: Vec<f32> = vectors[original].iter().map(|x| x * (1.0 + rng.next() * 0.002)).collect();
        for (kind, v) in [("exact", exact), ("resized", resized)] {
            let id = format!("copy_{kind}_{k}");
            frames.push(frame(&id, original % CLUSTERS, &v));
            planted_pairs.push((format!("f{original:03}"), id));
        }
    }
    let outliers: Vec<String> = (0..5).map(|k| format!("odd_{k}")).collect();
    for id in &outliers {
        frames.push(frame(id, 0, &rng.vector(3.0)));
    }
    let r = server.upload_lines(&admin, "/api/projects/p/datasets/d/frames", &frames);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let ask = |query: &str| -> Value {
        let r = server.get(&admin, &format!("/api/projects/p/datasets/d/insights/neighbors?{query}"));
        assert_eq!(r.status(), 200, "{query}");
        r.json().unwrap()
    };

    let groups = ask("kind=near_duplicates&max_distance=0.001&limit=1000");
    let grouped: Vec<BTreeSet<String>> = groups["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_string()).collect())
        .collect();
    for (original, copy) in &planted_pairs {
        assert!(
            grouped.iter().any(|g| g.contains(original) && g.contains(copy)),
            "{copy} is not grouped with {original}: {groups}"
        );
    }
    assert!(grouped.iter().all(|g| g.len() <= 3), "only the planted copies are near-duplicates: {groups}");

    let odd = ask("kind=outliers&limit=5");
    let found: BTreeSet<&str> =
        odd["items"].as_array().unwrap().iter().map(|o| o["frame_id"].as_str().unwrap()).collect();
    assert_eq!(found, outliers.iter().map(String::as_str).collect::<BTreeSet<_>>(), "{odd}");
    let unique = ask("kind=uniqueness&limit=5");
    let most_unique: BTreeSet<&str> =
        unique["items"].as_array().unwrap().iter().map(|o| o["frame_id"].as_str().unwrap()).collect();
    assert_eq!(most_unique, found, "the outliers are the most unique frames");
    assert_eq!(unique["total"].as_u64(), Some(frames.len() as u64));

    let disagree = ask("kind=disagreement&limit=3");
    let flipped: BTreeSet<&str> =
        disagree["items"].as_array().unwrap().iter().map(|o| o["frame_id"].as_str().unwrap()).collect();
    assert_eq!(flipped, BTreeSet::from(["f000", "f001", "f002"]), "{disagree}");
    assert_eq!(disagree["items"][0]["neighbor_class"].as_str().map(|c| c.starts_with('c')), Some(true));
    // Crops too: the labels space has no embeddings here, which is said plainly.
    let r = server.get(&admin, "/api/projects/p/datasets/d/insights/neighbors?space=labels");
    assert_eq!(r.status(), 400);
    let r = server.get(&admin, "/api/projects/p/datasets/d/insights/neighbors?kind=nope");
    assert_eq!(r.status(), 400);
}
