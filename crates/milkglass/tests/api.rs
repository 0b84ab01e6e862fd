//! The HTTP API end to end against a real server process.

mod common;

use common::{Server, add_user, expect_error, frame, snapshot};
use reqwest::Method;
use serde_json::{Value, json};

const D: &str = "/api/projects/p/datasets/d";

#[test]
fn upload_list_get_and_versions() {
    let (server, admin) = Server::start(&["--batch-size", "7"]);
    server.project_with_dataset(&admin, "p", "d");
    let frames: Vec<Value> = (0..20).map(|i| frame(&format!("f{i:02}"), i % 4)).collect();
    let r = server.upload_lines(&admin, &format!("{D}/frames"), &frames);
    assert_eq!(r.status(), 200);
    let summary: Value = r.json().unwrap();
    assert_eq!(summary["records"], 20);
    assert_eq!(summary["batches"], 3, "20 records in batches of 7");
    let v1 = summary["version"].as_i64().unwrap();

    // Keyset pagination walks every frame once, in id order.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = server.get(&admin, &format!("{D}/frames?limit=6{after}")).json().unwrap();
        seen.extend(page["frames"].as_array().unwrap().iter().map(|f| f["frame_id"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("f{i:02}")).collect();
    assert_eq!(seen, expected);

    // Filters: metadata, class present, label count, sensor kind.
    let ids = |query: &str| -> Vec<String> {
        let page: Value = server.get(&admin, &format!("{D}/frames?limit=100&{query}")).json().unwrap();
        assert!(page["frames"].is_array(), "{query}: {page}");
        page["frames"].as_array().unwrap().iter().map(|f| f["frame_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids("meta=weather:eq:rain"), ["f00", "f10"]);
    assert_eq!(ids("class=dog").len(), 10, "frames with 2 or 3 labels have a dog");
    assert_eq!(ids("min_labels=3"), ["f03", "f07", "f11", "f15", "f19"]);
    assert_eq!(ids("max_labels=0").len(), 5);
    assert_eq!(ids("sensor_kind=image").len(), 20);
    assert_eq!(ids("sensor_kind=point_cloud").len(), 0);
    assert_eq!(ids("meta=speed:gt:4&meta=weather:ne:rain").len(), 18);

    // Inferences on an inference set, then one frame with everything attached.
    let r = server.post_json(&admin, &format!("{D}/inference_sets"), &json!({"name": "model_a"}));
    assert_eq!(r.status(), 201);
    let inference = json!({"label_id": "p1", "frame_id": "f03", "class": "dog", "confidence": 0.75,
                           "geometry": {"kind": "box2d", "top": 1, "left": 2, "width": 9, "height": 11}});
    let r = server.upload_lines(&admin, &format!("{D}/inference_sets/model_a/inferences"), &[inference]);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let f: Value = server.get(&admin, &format!("{D}/frames/f03")).json().unwrap();
    assert_eq!(f["labels"].as_array().unwrap().len(), 3);
    assert_eq!(f["labels"][1]["class"], "dog");
    assert_eq!(f["inferences"]["model_a"][0]["confidence"], 0.75);
    assert_eq!(f["has_embedding"], true);

    // Upsert one frame with new labels; the old version stays readable.
    let r = server.upload_lines(&admin, &format!("{D}/frames"), &[frame("f03", 1)]);
    assert_eq!(r.status(), 200);
    let now: Value = server.get(&admin, &format!("{D}/frames/f03")).json().unwrap();
    assert_eq!(now["labels"].as_array().unwrap().len(), 1);
    let then: Value = server.get(&admin, &format!("{D}/frames/f03?version={v1}")).json().unwrap();
    assert_eq!(then["labels"].as_array().unwrap().len(), 3);

    // Delete, then the frame is gone from the latest version only.
    let r = server.request(Method::DELETE, &admin, &format!("{D}/frames/f05")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.get(&admin, &format!("{D}/frames/f05")).status(), 404);
    assert_eq!(server.get(&admin, &format!("{D}/frames/f05?version={v1}")).status(), 200);
    let (_, frames, _) = snapshot(&server, &admin, "p", "d");
    assert_eq!(frames, 19);
}

#[test]
fn labels_and_embeddings_attach_to_existing_frames() {
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let mut f = frame("a", 0);
    f.as_object_mut().unwrap().remove("embedding");
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &[f]).status(), 200);
    let label = json!({"label_id": "x", "frame_id": "a", "class": "cat",
                       "geometry": {"kind": "polygon_list", "polygons": [[[0, 0], [4, 0], [4, 4]]]}});
    assert_eq!(server.upload_lines(&admin, &format!("{D}/labels"), &[label]).status(), 200);
    let r = server.upload_lines(
        &admin,
        &format!("{D}/embeddings"),
        &[json!({"frame_id": "a", "embedding": [1, 2, 3]}), json!({"label_id": "x", "embedding": [1, 0]})],
    );
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let got: Value = server.get(&admin, &format!("{D}/frames/a")).json().unwrap();
    assert_eq!(got["label_count"], 1);
    assert_eq!(got["labels"][0]["geometry"]["kind"], "polygon_list");
    assert_eq!(got["has_embedding"], true);
    assert_eq!(got["labels"][0]["has_embedding"], true);
    let d: Value = server.get(&admin, D).json().unwrap();
    assert_eq!((d["frame_embedding_dim"].as_i64(), d["label_embedding_dim"].as_i64()), (Some(3), Some(2)));
}

#[test]
fn arrow_ipc_upload() {
    use arrow::array::{FixedSizeListBuilder, Float32Builder, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let schema = Arc::new(Schema::new(vec![
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("image_url", DataType::Utf8, false),
        Field::new(
            "embedding",
            DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, true)), 3),
            true,
        ),
    ]));
    let mut emb = FixedSizeListBuilder::new(Float32Builder::new(), 3);
    for i in 0..3 {
        emb.values().append_slice(&[i as f32, 1.0, 2.0]);
        emb.append(true);
    }
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(StringArray::from(vec!["s3://bucket/a.png", "gs://b/b.png", "https://x.example/c.png"])),
            Arc::new(emb.finish()),
        ],
    )
    .unwrap();
    let mut body = Vec::new();
    let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut body, &schema).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    drop(writer);
    let r = server
        .request(Method::POST, &admin, &format!("{D}/frames"))
        .header("content-type", "application/vnd.apache.arrow.stream")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let f: Value = server.get(&admin, &format!("{D}/frames/a")).json().unwrap();
    assert_eq!(f["sensors"][0]["url"], "s3://bucket/a.png");
    assert_eq!(f["has_embedding"], true);
}

#[test]
fn roles_decide_who_reads_and_writes() {
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let viewer = add_user(&server.dir, "vic", "viewer");
    let owner = add_user(&server.dir, "olga", "owner");
    let scientist = add_user(&server.dir, "sam", "scientist");

    // Not a member yet: no access.
    expect_error(server.get(&viewer, D), 403);
    let r = server
        .request(Method::PUT, &admin, "/api/projects/p/members/vic")
        .json(&json!({"role": "viewer"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.get(&viewer, D).status(), 200);
    // A viewer reads but never writes.
    let before = snapshot(&server, &admin, "p", "d");
    expect_error(server.upload_lines(&viewer, &format!("{D}/frames"), &[frame("v", 1)]), 403);
    assert_eq!(snapshot(&server, &admin, "p", "d"), before);
    // Only admins and owners create projects; owners own what they create and nobody else's.
    expect_error(server.post_json(&scientist, "/api/projects", &json!({"name": "s"})), 403);
    assert_eq!(server.post_json(&owner, "/api/projects", &json!({"name": "mine"})).status(), 201);
    expect_error(server.get(&owner, "/api/projects/p"), 403);
    let listed: Value = server.get(&owner, "/api/projects").json().unwrap();
    let names: Vec<&str> = listed["projects"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mine"]);
}

#[test]
fn project_and_dataset_lifecycle() {
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &[frame("a", 2)]).status(), 200);
    // Classes are appended; renaming one is refused.
    let r = server
        .request(Method::PATCH, &admin, "/api/projects/p")
        .json(&json!({"classes": [{"id": 2, "name": "bird", "color": [1, 2, 3]}]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let p: Value = r.json().unwrap();
    assert_eq!(p["classes"].as_array().unwrap().len(), 3);
    let r = server
        .request(Method::PATCH, &admin, "/api/projects/p")
        .json(&json!({"classes": [{"id": 0, "name": "lynx"}]}))
        .send()
        .unwrap();
    assert_eq!(expect_error(r, 400)["field"], "classes[0].name");
    expect_error(server.post_json(&admin, "/api/projects/p/datasets", &json!({"name": "d"})), 409);
    let r = server.request(Method::DELETE, &admin, D).send().unwrap();
    assert_eq!(r.status(), 204);
    expect_error(server.get(&admin, D), 404);
    let r = server.request(Method::DELETE, &admin, "/api/projects/p").send().unwrap();
    assert_eq!(r.status(), 204);
    expect_error(server.get(&admin, "/api/projects/p"), 404);
}

#[test]
fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let admin = add_user(dir.path(), "admin", "admin");
    {
        let server = Server::start_on(dir.path(), &[]);
        server.project_with_dataset(&admin, "p", "d");
        let frames: Vec<Value> = (0..50).map(|i| frame(&format!("f{i}"), 2)).collect();
        assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &frames).status(), 200);
    }
    let server = Server::start_on(dir.path(), &[]);
    let (_, frames, labels) = snapshot(&server, &admin, "p", "d");
    assert_eq!((frames, labels), (50, 100));
}

#[test]
fn timestamps_versions_and_missing_things() {
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let mut lines = Vec::new();
    for (id, seen) in [("a", "2024-05-01T12:00:00Z"), ("b", "2024-05-01T14:00:00+02:00"), ("c", "2024-06-01T00:00:00Z")]
    {
        let mut f = frame(id, 0);
        f["metadata"]["seen"] = json!({"timestamp": seen});
        lines.push(f);
    }
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &lines).status(), 200);
    let ids = |query: &str| -> Vec<String> {
        let page: Value = server.get(&admin, &format!("{D}/frames?{query}")).json().unwrap();
        page["frames"].as_array().unwrap().iter().map(|f| f["frame_id"].as_str().unwrap().to_string()).collect()
    };
    // 14:00+02:00 is the same instant as 12:00Z.
    assert_eq!(ids("meta=seen:eq:2024-05-01T12:00:00Z"), ["a", "b"]);
    assert_eq!(ids("meta=seen:gt:2024-05-15T00:00:00%2B00:00"), ["c"]);

    let e = expect_error(server.get(&admin, &format!("{D}/frames?version=99")), 400);
    assert_eq!(e["field"], "version");
    let e = expect_error(server.get(&admin, &format!("{D}/frames/a?version=abc")), 400);
    assert_eq!(e["field"], "version");
    expect_error(server.request(Method::DELETE, &admin, &format!("{D}/frames/ghost")).send().unwrap(), 404);
    let r = server.post_json(&admin, &format!("{D}/delete_frames"), &json!({"frame_ids": []}));
    assert_eq!(expect_error(r, 400)["field"], "frame_ids");
    // A frame may be called "delete".
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &[frame("delete", 0)]).status(), 200);
    assert_eq!(server.get(&admin, &format!("{D}/frames/delete")).status(), 200);

    // Non-admins cannot tell a missing project from someone else's.
    let owner = add_user(&server.dir, "olga", "owner");
    let missing = expect_error(server.get(&owner, "/api/projects/nope"), 403);
    let hidden = expect_error(server.get(&owner, "/api/projects/p"), 403);
    assert_eq!(missing["code"], hidden["code"]);
    expect_error(server.get(&admin, "/api/projects/nope"), 404);
}
