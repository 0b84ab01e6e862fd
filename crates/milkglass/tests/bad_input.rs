//! Every kind of bad input gets a 4xx JSON error naming the field and the problem,
//! and changes nothing. One test per case, each against a real server.

mod common;

use common::{Server, add_user, expect_error, frame, snapshot};
use reqwest::Method;
use serde_json::{Value, json};

const D: &str = "/api/projects/p/datasets/d";

/// A server with project p / dataset d holding one frame (with a 4-d embedding).
fn seeded(extra: &[&str]) -> (Server, String, (i64, i64, i64)) {
    let (server, admin) = Server::start(extra);
    server.project_with_dataset(&admin, "p", "d");
    assert_eq!(server.upload_lines(&admin, &format!("{D}/frames"), &[frame("seed", 1)]).status(), 200);
    let before = snapshot(&server, &admin, "p", "d");
    (server, admin, before)
}

fn raw_upload(
    server: &Server,
    token: &str,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::blocking::Body>,
) -> reqwest::blocking::Response {
    server.request(Method::POST, token, path).header("content-type", content_type).body(body).send().unwrap()
}

fn assert_unchanged(server: &Server, admin: &str, before: (i64, i64, i64)) {
    assert_eq!(snapshot(server, admin, "p", "d"), before, "a refused request must change nothing");
}

#[test]
fn malformed_json_line() {
    let (server, admin, before) = seeded(&[]);
    let body = format!("{}\n{{\"frame_id\": \"x\", \n", frame("ok", 0));
    let e = expect_error(raw_upload(&server, &admin, &format!("{D}/frames"), "application/x-ndjson", body), 400);
    assert_eq!(e["field"], "[1]");
    assert!(e["message"].as_str().unwrap().contains("line 2"), "{e}");
    assert_unchanged(&server, &admin, before);
}

#[test]
fn malformed_json_body() {
    let (server, admin, _) = seeded(&[]);
    let r = server
        .request(Method::POST, &admin, "/api/projects")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .unwrap();
    expect_error(r, 400);
}

#[test]
fn malformed_arrow() {
    let (server, admin, before) = seeded(&[]);
    let e = expect_error(
        raw_upload(
            &server,
            &admin,
            &format!("{D}/frames"),
            "application/vnd.apache.arrow.stream",
            b"not arrow at all".to_vec(),
        ),
        400,
    );
    assert_eq!(e["field"], "body");
    assert_unchanged(&server, &admin, before);
}

#[test]
fn unknown_field() {
    let (server, admin, before) = seeded(&[]);
    let mut f = frame("x", 0);
    f["colour"] = json!("red");
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &[f]), 400);
    assert!(e["message"].as_str().unwrap().contains("colour"), "{e}");
    assert_unchanged(&server, &admin, before);
    let e = expect_error(server.post_json(&admin, "/api/projects", &json!({"name": "q", "owner": "me"})), 400);
    assert!(e["message"].as_str().unwrap().contains("owner"), "{e}");
}

#[test]
fn wrong_type() {
    let (server, admin, before) = seeded(&[]);
    let mut f = frame("x", 1);
    f["labels"][0]["geometry"]["width"] = json!("wide");
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &[f]), 400);
    assert!(e["field"].as_str().unwrap().starts_with("[0].labels"), "{e}");
    assert_unchanged(&server, &admin, before);
    let e = expect_error(server.post_json(&admin, "/api/projects", &json!({"name": 5})), 400);
    assert_eq!(e["field"], "name");
}

#[test]
fn missing_id() {
    let (server, admin, before) = seeded(&[]);
    let mut f = frame("x", 0);
    f.as_object_mut().unwrap().remove("frame_id");
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &[f]), 400);
    assert!(e["message"].as_str().unwrap().contains("frame_id"), "{e}");
    let label = json!({"frame_id": "seed", "class": "cat", "geometry": {"kind": "classification"}});
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/labels"), &[label]), 400);
    assert!(e["message"].as_str().unwrap().contains("label_id"), "{e}");
    let empty = json!({"frame_id": "", "sensors": []});
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &[empty]), 400);
    assert_eq!(e["field"], "[0].frame_id");
    assert_unchanged(&server, &admin, before);
}

#[test]
fn duplicate_frame_ids_in_a_batch() {
    let (server, admin, before) = seeded(&[]);
    let e = expect_error(
        server.upload_lines(&admin, &format!("{D}/frames"), &[frame("x", 0), frame("y", 0), frame("x", 1)]),
        400,
    );
    assert_eq!(e["field"], "[2].frame_id");
    assert_unchanged(&server, &admin, before);
}

#[test]
fn label_with_unknown_class() {
    let (server, admin, before) = seeded(&[]);
    let mut f = frame("x", 1);
    f["labels"][0]["class"] = json!("unicorn");
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &[f]), 400);
    assert_eq!(e["field"], "[0].labels[0].class");
    assert!(e["message"].as_str().unwrap().contains("unicorn"));
    assert_unchanged(&server, &admin, before);
}

#[test]
fn label_with_unknown_frame() {
    let (server, admin, before) = seeded(&[]);
    let label = json!({"label_id": "l", "frame_id": "ghost", "class": "cat", "geometry": {"kind": "classification"}});
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/labels"), &[label]), 400);
    assert_eq!(e["field"], "[0].frame_id");
    assert!(e["message"].as_str().unwrap().contains("ghost"));
    assert_unchanged(&server, &admin, before);
}

#[test]
fn nan_and_infinite_numbers() {
    let (server, admin, before) = seeded(&[]);
    // JSON has no NaN; a literal is malformed and an overflowing exponent is infinite.
    let body = r#"{"frame_id": "x", "embedding": [NaN, 1, 2, 3]}"#.to_string() + "\n";
    expect_error(raw_upload(&server, &admin, &format!("{D}/frames"), "application/x-ndjson", body), 400);
    let body = r#"{"frame_id": "x", "embedding": [1e999, 1, 2, 3]}"#.to_string() + "\n";
    expect_error(raw_upload(&server, &admin, &format!("{D}/frames"), "application/x-ndjson", body), 400);
    let body = r#"{"frame_id": "x", "embedding": [1e39, 1, 2, 3]}"#.to_string() + "\n";
    let e = expect_error(raw_upload(&server, &admin, &format!("{D}/frames"), "application/x-ndjson", body), 400);
    assert_eq!(e["field"], "[0].embedding[0]");
    // Arrow can carry NaN; it is refused all the same.
    use arrow::array::{Float64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let schema = Arc::new(Schema::new(vec![
        Field::new("label_id", DataType::Utf8, false),
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("top", DataType::Float64, false),
        Field::new("left", DataType::Float64, false),
        Field::new("width", DataType::Float64, false),
        Field::new("height", DataType::Float64, false),
    ]));
    let f = |v: f64| Arc::new(Float64Array::from(vec![v])) as arrow::array::ArrayRef;
    let s = |v: &str| Arc::new(StringArray::from(vec![v])) as arrow::array::ArrayRef;
    let batch =
        RecordBatch::try_new(schema.clone(), vec![s("l"), s("seed"), s("cat"), f(f64::NAN), f(1.0), f(2.0), f(3.0)])
            .unwrap();
    let mut body = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut body, &schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    drop(w);
    let e = expect_error(
        raw_upload(&server, &admin, &format!("{D}/labels"), "application/vnd.apache.arrow.stream", body),
        400,
    );
    assert_eq!(e["field"], "[0].geometry.top");
    assert_unchanged(&server, &admin, before);
}

#[test]
fn box_with_negative_size() {
    let (server, admin, before) = seeded(&[]);
    let mut f = frame("x", 1);
    f["labels"][0]["geometry"]["height"] = json!(-3);
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &[f]), 400);
    assert_eq!(e["field"], "[0].labels[0].geometry.height");
    assert_unchanged(&server, &admin, before);
}

#[test]
fn embedding_of_the_wrong_dimension() {
    let (server, admin, before) = seeded(&[]);
    let mut f = frame("x", 0);
    f["embedding"] = json!([1.0, 2.0, 3.0]);
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &[f]), 400);
    assert_eq!(e["field"], "[0].embedding");
    assert!(e["message"].as_str().unwrap().contains("dimension 4"), "{e}");
    let e = expect_error(
        server.upload_lines(&admin, &format!("{D}/embeddings"), &[json!({"frame_id": "seed", "embedding": [1.0]})]),
        400,
    );
    assert_eq!(e["field"], "[0].embedding");
    assert_unchanged(&server, &admin, before);
}

#[test]
fn names_with_path_separators_or_control_characters() {
    let (server, admin, _) = seeded(&[]);
    for name in ["../escape", "a/b", "a\\b", "tab\tname", "new\nline", ".hidden"] {
        let e = expect_error(server.post_json(&admin, "/api/projects", &json!({"name": name})), 400);
        assert_eq!(e["field"], "name", "{name:?}");
        let e = expect_error(server.post_json(&admin, "/api/projects/p/datasets", &json!({"name": name})), 400);
        assert_eq!(e["field"], "name", "{name:?}");
    }
    let listed: Value = server.get(&admin, "/api/projects").json().unwrap();
    assert_eq!(listed["projects"].as_array().unwrap().len(), 1);
    let out = std::process::Command::new(common::BIN)
        .args(["user", "add", "../root", "--role", "admin", "--data-dir", server.dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("path separator"));
}

#[test]
fn body_over_the_size_limit() {
    let (server, admin, before) = seeded(&["--max-upload-bytes", "20000", "--max-json-bytes", "2000"]);
    let frames: Vec<Value> = (0..200).map(|i| frame(&format!("big{i}"), 3)).collect();
    let e = expect_error(server.upload_lines(&admin, &format!("{D}/frames"), &frames), 413);
    assert_eq!(e["code"], "too_large");
    // A chunked body without Content-Length is cut off at the limit too.
    let body: String = frames.iter().map(|f| format!("{f}\n")).collect();
    let stream = std::io::Cursor::new(body.into_bytes());
    let r = server
        .request(Method::POST, &admin, &format!("{D}/frames"))
        .header("content-type", "application/x-ndjson")
        .body(reqwest::blocking::Body::new(stream))
        .send();
    // The server answers as soon as the limit is crossed and closes the connection,
    // so a client still sending may see the close before the answer.
    if let Ok(r) = r {
        assert_eq!(r.status(), 413);
    }
    let big = json!({"name": "x", "metadata": {"blob": "y".repeat(5000)}});
    expect_error(server.post_json(&admin, "/api/projects", &big), 413);
    assert_unchanged(&server, &admin, before);
}

#[test]
fn missing_token() {
    let (server, admin, before) = seeded(&[]);
    let r = server.client.get(server.url("/api/projects")).send().unwrap();
    expect_error(r, 401);
    let r = server
        .client
        .post(server.url(&format!("{D}/frames")))
        .header("content-type", "application/x-ndjson")
        .body(format!("{}\n", frame("x", 0)))
        .send()
        .unwrap();
    expect_error(r, 401);
    assert_unchanged(&server, &admin, before);
}

#[test]
fn wrong_token() {
    let (server, admin, before) = seeded(&[]);
    expect_error(
        server.get("mg_0000000000000000000000000000000000000000000000000000000000000000", "/api/projects"),
        401,
    );
    let r = server
        .client
        .get(server.url("/api/projects"))
        .header("authorization", format!("Basic {admin}"))
        .send()
        .unwrap();
    expect_error(r, 401);
    expect_error(server.upload_lines("not-a-token", &format!("{D}/frames"), &[frame("x", 0)]), 401);
    assert_unchanged(&server, &admin, before);
}

#[test]
fn revoked_token() {
    let (server, admin, before) = seeded(&[]);
    let token = add_user(&server.dir, "leaver", "admin");
    assert_eq!(server.get(&token, "/api/projects").status(), 200);
    common::cli(&["user", "revoke", "leaver", "--data-dir", server.dir.to_str().unwrap()]);
    expect_error(server.get(&token, "/api/projects"), 401);
    expect_error(server.upload_lines(&token, &format!("{D}/frames"), &[frame("x", 0)]), 401);
    assert_unchanged(&server, &admin, before);
}

#[test]
fn token_for_another_project() {
    let (server, admin, before) = seeded(&[]);
    let other = add_user(&server.dir, "other", "owner");
    assert_eq!(server.post_json(&other, "/api/projects", &json!({"name": "theirs"})).status(), 201);
    expect_error(server.get(&other, D), 403);
    expect_error(server.get(&other, &format!("{D}/frames/seed")), 403);
    expect_error(server.upload_lines(&other, &format!("{D}/frames"), &[frame("x", 0)]), 403);
    expect_error(server.request(Method::DELETE, &other, "/api/projects/p").send().unwrap(), 403);
    assert_unchanged(&server, &admin, before);
}

/// A stream the upload_arrow fuzz target found: arrow-ipc panicked on it (a buffer pointing past
/// its message). Through the server it is a refused body, and nothing is written.
#[test]
fn arrow_that_made_the_decoder_panic() {
    let (server, admin, before) = seeded(&[]);
    let body = include_bytes!("../../../fuzz/corpus/upload_arrow/buffer_past_its_body").to_vec();
    let e = expect_error(
        raw_upload(&server, &admin, &format!("{D}/frames"), "application/vnd.apache.arrow.stream", body),
        400,
    );
    assert!(e["message"].as_str().unwrap().contains("malformed Arrow IPC"), "{e}");
    assert_unchanged(&server, &admin, before);
}
