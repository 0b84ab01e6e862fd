//! Datasets as SQL tables on a real server: members query their datasets' frames, labels and
//! inferences; a query on version N sees version N's rows; an outside analyst reads a
//! published dataset under its policy, counted in the unit the owner named, and is refused
//! what the policy sanitizes, however the query reaches for it, with audit entries.

mod common;

use common::{Server, add_user, expect_error};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;

fn query(server: &Server, token: &str, sql: &str) -> reqwest::blocking::Response {
    server.post_json(token, "/api/query", &json!({ "sql": sql }))
}

/// The rows of an answered query; panics with the body otherwise.
fn rows(server: &Server, token: &str, sql: &str) -> Vec<Value> {
    let response = query(server, token, sql);
    let status = response.status();
    let body: Value = response.json().unwrap();
    assert_eq!(status, 200, "{sql}: {body}");
    body["rows"].as_array().unwrap().clone()
}

fn count(server: &Server, token: &str, sql: &str) -> i64 {
    rows(server, token, sql)[0]["n"].as_i64().unwrap()
}

/// A frame driven by one of `drivers` drivers, with two boxes (cat, dog).
fn driven_frame(i: usize, drivers: usize) -> Value {
    let mut frame = common::frame(&format!("f{i:03}"), 2);
    frame["metadata"]["driver_id"] = json!(format!("driver{}", i % drivers));
    // Every frame of driver0 is foggy: many frames, one person.
    frame["metadata"]["weather"] = json!(if i.is_multiple_of(drivers) { "fog" } else { "sun" });
    frame
}

#[test]
fn members_query_the_demo_dataset_and_the_counts_equal_the_apis() {
    let (server, tokens) = Server::demo("60");
    let viewer = tokens["victor"]["token"].as_str().unwrap();
    let status: Value = server.get(viewer, "/api/projects/shapes/datasets/shapes/status").json().unwrap();
    assert_eq!(count(&server, viewer, "SELECT COUNT(*) AS n FROM shapes.frames"), status["frames"].as_i64().unwrap());
    assert_eq!(count(&server, viewer, "SELECT COUNT(*) AS n FROM shapes.labels"), status["labels"].as_i64().unwrap());
    assert_eq!(
        count(&server, viewer, "SELECT COUNT(*) AS n FROM shapes.inferences_detector_v1"),
        status["inferences"].as_i64().unwrap()
    );
    // Per class, against the labels the frame listing shows.
    let page: Value =
        server.get(viewer, "/api/projects/shapes/datasets/shapes/frames?limit=1000&labels=true").json().unwrap();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for frame in page["frames"].as_array().unwrap() {
        for label in frame["labels"].as_array().unwrap() {
            *expected.entry(label["class"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    let by_class: BTreeMap<String, i64> =
        rows(&server, viewer, "SELECT class, COUNT(*) AS n FROM shapes.labels GROUP BY class")
            .iter()
            .map(|r| (r["class"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap()))
            .collect();
    assert_eq!(by_class, expected);
    assert!(expected.len() > 1, "{expected:?}");
    // A member's read is audited like any query, under the table's identity.
    let audit: Value = server.get(tokens["admin"]["token"].as_str().unwrap(), "/api/audit").json().unwrap();
    let entry = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["user"] == "victor" && e["query"].as_str().unwrap().contains("GROUP BY class"))
        .expect("the member's query in the audit log")
        .clone();
    assert_eq!(entry["tables"], json!(["shapes/shapes/labels"]), "{entry}");
    // Inferences carry their match against the labels.
    let matched = count(
        &server,
        viewer,
        "SELECT COUNT(*) AS n FROM shapes.inferences_detector_v1 WHERE true_positive AND iou >= 0.5",
    );
    assert!(matched > 0, "the demo detector finds some shapes");
    // The listing names every table with its columns.
    let listing: Value = server.get(viewer, "/api/projects/shapes/datasets/shapes/tables").json().unwrap();
    let names: Vec<&str> =
        listing["tables"].as_array().unwrap().iter().map(|t| t["sql_name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "shapes.frames",
            "shapes.labels",
            "shapes.inferences_detector_v1",
            "shapes.frame_scores",
            "shapes.label_scores",
            "shapes.issues_detector_v1"
        ]
    );
}

#[test]
fn a_query_on_version_n_sees_version_ns_rows() {
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let frames = "/api/projects/p/datasets/d/frames";
    let first: Vec<Value> = (0..5).map(|i| common::frame(&format!("a{i}"), 1)).collect();
    assert_eq!(server.upload_lines(&admin, frames, &first).status(), 200);
    let second: Vec<Value> = (0..3).map(|i| common::frame(&format!("b{i}"), 2)).collect();
    assert_eq!(server.upload_lines(&admin, frames, &second).status(), 200);
    assert_eq!(count(&server, &admin, "SELECT COUNT(*) AS n FROM \"d@v1\".frames"), 5);
    assert_eq!(count(&server, &admin, "SELECT COUNT(*) AS n FROM \"d@v1\".labels"), 5);
    assert_eq!(count(&server, &admin, "SELECT COUNT(*) AS n FROM d.frames"), 8);
    assert_eq!(count(&server, &admin, "SELECT COUNT(*) AS n FROM \"d@v2\".labels"), 11);
    // The name as the issue writes it, unquoted (`@` is an identifier character in the SQL dialect).
    assert_eq!(count(&server, &admin, "SELECT COUNT(*) AS n FROM d@v1.frames"), 5);
    assert_eq!(count(&server, &admin, "SELECT COUNT(*) AS n FROM p.d@v2.labels"), 11);
    // Both versions in one query: what changed between them.
    let added = count(
        &server,
        &admin,
        "SELECT COUNT(*) AS n FROM d.frames f WHERE f.frame_id NOT IN (SELECT frame_id FROM \"d@v1\".frames)",
    );
    assert_eq!(added, 3);
    let error = expect_error(query(&server, &admin, "SELECT COUNT(*) FROM \"d@v9\".frames"), 400);
    assert_eq!(error["field"], "version", "{error}");
    // A version of a dataset the caller cannot read reads like a table that does not exist.
    let stranger = add_user(&server.dir, "stranger", "viewer");
    let refused = expect_error(query(&server, &stranger, "SELECT COUNT(*) FROM \"d@v1\".frames"), 400);
    let unknown = expect_error(query(&server, &stranger, "SELECT COUNT(*) FROM \"nope@v1\".frames"), 400);
    assert_eq!(
        refused["message"].as_str().unwrap().replace("d@v1", "X"),
        unknown["message"].as_str().unwrap().replace("nope@v1", "X")
    );
}

/// p/d with 40 frames of 4 drivers, published to sam under a minimum of 3 drivers.
fn published() -> (Server, String, String, String) {
    let (server, admin) = Server::start(&[]);
    let owner = add_user(&server.dir, "olivia", "owner");
    let scientist = add_user(&server.dir, "sam", "scientist");
    let frames: Vec<Value> = (0..40).map(|i| driven_frame(i, 4)).collect();
    common::dataset_of(&server, &owner, &frames);
    let publication = json!({
        "policy": {
            "safe_zone": {"aggregation": {"min_agg_size": 3}},
            "unsafe_handling": "reject",
            "sanitized_columns": ["frame_id", "urls", "label_id", "driver_id"],
        },
        "readers": ["sam"],
        "unit": "driver_id",
    });
    let r = server
        .request(Method::PUT, &owner, "/api/projects/p/datasets/d/publication")
        .json(&publication)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    (server, admin, owner, scientist)
}

#[test]
fn an_outside_analyst_gets_class_counts_but_never_ids_urls_or_a_sanitized_key() {
    let (server, _admin, owner, scientist) = published();
    // Aggregates over enough drivers are answered, equal to the owner's own answer.
    let sql = "SELECT class, COUNT(*) AS n FROM d.labels GROUP BY class ORDER BY class";
    assert_eq!(rows(&server, &scientist, sql), rows(&server, &owner, sql));
    assert_eq!(
        rows(&server, &scientist, sql),
        vec![json!({"class": "cat", "n": 40}), json!({"class": "dog", "n": 40})]
    );
    // Every way of reaching for an identifier is refused or reads as NULL.
    let attacks = [
        "SELECT frame_id, COUNT(*) AS n FROM d.frames GROUP BY frame_id",
        "SELECT COUNT(*) AS n FROM d.labels WHERE frame_id = 'f001'",
        "SELECT COUNT(*) AS n FROM d.labels WHERE label_id LIKE 'f00%'",
        "SELECT driver_id, COUNT(*) AS n FROM d.frames GROUP BY driver_id",
        "SELECT COUNT(*) AS n FROM d.frames WHERE driver_id = 'driver1'",
        "SELECT length(urls[1]) AS n, COUNT(*) AS c FROM d.frames GROUP BY length(urls[1])",
        "SELECT COUNT(*) AS n FROM d.frames WHERE substr(driver_id, 7, 1) = '1'",
        "SELECT COUNT(*) AS n FROM d.labels l JOIN d.frames f ON l.frame_id = f.frame_id",
        "SELECT frame_id FROM d.frames",
    ];
    for sql in attacks {
        let response = query(&server, &scientist, sql);
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap();
        if status == 200 {
            // Answered only with the sanitized outputs nulled.
            for row in body["rows"].as_array().unwrap() {
                for column in ["frame_id", "driver_id", "urls", "label_id"] {
                    assert!(row.get(column).is_none_or(Value::is_null), "{sql} leaked {column}: {body}");
                }
            }
            assert!(!body.to_string().contains("f00") && !body.to_string().contains("driver"), "{sql}: {body}");
        } else {
            assert_eq!(status, 403, "{sql}: {body}");
        }
    }
    // The score tables are counted in drivers too: every frame is scored, and a filter that
    // matches none of them (they share one embedding, so none is unscored) is refused.
    assert_eq!(count(&server, &scientist, "SELECT COUNT(*) AS n FROM d.frame_scores"), 40);
    assert_eq!(count(&server, &scientist, "SELECT COUNT(uniqueness) AS n FROM d.frame_scores"), 40);
    let none = query(&server, &scientist, "SELECT COUNT(*) AS n FROM d.frame_scores WHERE uniqueness IS NULL");
    expect_error(none, 403);
    // Counted in drivers, not frames: the foggy frames are 10 frames of one driver.
    let fog = query(&server, &scientist, "SELECT COUNT(*) AS n FROM d.frames WHERE weather = 'fog'");
    let error = expect_error(fog, 403);
    assert!(error["message"].as_str().unwrap().contains("at least 3"), "{error}");
    assert_eq!(count(&server, &owner, "SELECT COUNT(*) AS n FROM d.frames WHERE weather = 'fog'"), 10);
    // The owner's audit log shows the analyst's refusals under the table's identity.
    let audit: Value = server.get(&owner, "/api/audit").json().unwrap();
    let refused: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["user"] == "sam" && e["decision"] == "refused")
        .collect();
    assert!(refused.len() >= 5, "{audit}");
    assert!(
        refused.iter().all(|e| e["tables"].as_array().unwrap().iter().all(|t| t.as_str().unwrap().starts_with("p/d/")))
    );
}

#[test]
fn only_readers_see_a_publication_and_it_ends_when_withdrawn() {
    let (server, _admin, owner, scientist) = published();
    let other = add_user(&server.dir, "eve", "scientist");
    let sql = "SELECT class, COUNT(*) AS n FROM d.labels GROUP BY class";
    expect_error(query(&server, &other, sql), 400);
    let listing: Value = server.get(&other, "/api/dataset_tables").json().unwrap();
    assert_eq!(listing["tables"], json!([]));
    let listing: Value = server.get(&scientist, "/api/dataset_tables").json().unwrap();
    let labels = listing["tables"].as_array().unwrap().iter().find(|t| t["table"] == "labels").unwrap().clone();
    assert_eq!(labels["units"], 4, "four drivers: {labels}");
    assert_eq!(labels["member"], false);
    assert!(labels["columns"].as_array().unwrap().iter().any(|c| c["name"] == "frame_id" && c["sanitized"] == true));
    // Neither a scientist nor a viewer may publish; a sanitized column must exist.
    let bad = json!({"policy": {"safe_zone": true, "sanitized_columns": ["no_such_column"]}});
    let r = server.request(Method::PUT, &owner, "/api/projects/p/datasets/d/publication").json(&bad).send().unwrap();
    let error = expect_error(r, 400);
    assert_eq!(error["field"], "policy.sanitized_columns[0]", "{error}");
    let r =
        server.request(Method::PUT, &scientist, "/api/projects/p/datasets/d/publication").json(&bad).send().unwrap();
    expect_error(r, 403);
    let put = |body: &Value| {
        server.request(Method::PUT, &owner, "/api/projects/p/datasets/d/publication").json(body).send().unwrap()
    };
    let unknown_unit = json!({"policy": {"safe_zone": true}, "unit": "no_such_key"});
    assert_eq!(expect_error(put(&unknown_unit), 400)["field"], "unit");
    let owner_as_reader = json!({"policy": {"safe_zone": true}, "readers": ["olivia"]});
    assert_eq!(expect_error(put(&owner_as_reader), 400)["field"], "readers[0]");
    // None of the refused changes took: the publication is the one made first.
    let publication: Value = server.get(&owner, "/api/projects/p/datasets/d/publication").json().unwrap();
    assert_eq!(publication["publication"]["unit"], "driver_id", "{publication}");
    assert_eq!(publication["publication"]["readers"], json!(["sam"]));
    let r = server.request(Method::DELETE, &owner, "/api/projects/p/datasets/d/publication").send().unwrap();
    assert_eq!(r.status(), 204);
    expect_error(query(&server, &scientist, sql), 400);
}

#[test]
fn a_held_dataset_query_is_decided_by_the_projects_owner() {
    let (server, _admin, owner, scientist) = published();
    let review = json!({
        "policy": {"safe_zone": {"aggregation": {"min_agg_size": 100}}, "unsafe_handling": "review"},
        "readers": ["sam"],
    });
    let r = server.request(Method::PUT, &owner, "/api/projects/p/datasets/d/publication").json(&review).send().unwrap();
    assert_eq!(r.status(), 200);
    let held = server.post_json(
        &scientist,
        "/api/query",
        &json!({"sql": "SELECT weather, COUNT(*) AS n FROM d.frames GROUP BY weather", "wait_seconds": 0}),
    );
    assert_eq!(held.status(), 202);
    let id = held.json::<Value>().unwrap()["request_id"].as_i64().unwrap();
    // Another owner of the server is no owner of this project.
    let stranger = add_user(&server.dir, "mallory", "owner");
    let r = server.post_json(&stranger, &format!("/api/reviews/{id}/approve"), &json!({}));
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = server.post_json(&owner, &format!("/api/reviews/{id}/approve"), &json!({}));
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let released: Value = server.get(&scientist, &format!("/api/query/requests/{id}")).json().unwrap();
    assert_eq!(released["rows"].as_array().unwrap().len(), 2, "{released}");
}

#[test]
fn a_filtered_frame_listing_comes_from_the_versions_index_once_built_and_matches_the_scan() {
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let frames: Vec<Value> = (0..200).map(|i| driven_frame(i, 7)).collect();
    assert_eq!(server.upload_lines(&admin, "/api/projects/p/datasets/d/frames", &frames).status(), 200);
    let filters = [
        "meta=weather:eq:fog&count=true",
        "meta=driver_id:ne:driver3&class=dog&count=true&limit=7&offset=4",
        "meta=speed:ge:6&min_labels=2&count=true&after=f050",
        "meta=weather:eq:nothing&count=true",
    ];
    let list = |query: &str| -> Value {
        server.get(&admin, &format!("/api/projects/p/datasets/d/frames?{query}")).json().unwrap()
    };
    // The index is built in the background after the upload; until then the scan answers.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !list(filters[0])["from_index"].as_bool().unwrap() {
        assert!(std::time::Instant::now() < deadline, "the index was never built");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    for query in filters {
        let indexed = list(query);
        // Naming the version reads the rows themselves.
        let scanned = list(&format!("{query}&version=1"));
        assert_eq!(indexed["from_index"], true, "{query}");
        assert_eq!(scanned["from_index"], false, "{query}");
        assert_eq!(indexed["frames"], scanned["frames"], "{query}");
        assert_eq!(indexed["total"], scanned["total"], "{query}");
        assert_eq!(indexed["next"], scanned["next"], "{query}");
    }
    assert_eq!(list(filters[3])["total"], 0);
    // A new version: the old index no longer answers, and the listing is right at once.
    let more: Vec<Value> = (200..210).map(|i| driven_frame(i, 7)).collect();
    assert_eq!(server.upload_lines(&admin, "/api/projects/p/datasets/d/frames", &more).status(), 200);
    let all = list("count=true&limit=1");
    assert_eq!(all["total"], 210, "{all}");
}

#[test]
fn an_upload_prepares_the_filter_and_similarity_indexes_without_any_query_asking() {
    let (server, admin) = Server::start_with_env(&[], &[("MILKGLASS_EXACT_SEARCH_LIMIT", "50")]);
    server.project_with_dataset(&admin, "p", "d");
    let frames: Vec<Value> = (0..300)
        .map(|i| {
            let mut frame = driven_frame(i, 5);
            let angle = i as f64 * 0.37;
            frame["embedding"] = json!([angle.cos(), angle.sin(), (i % 7) as f64 / 7.0, 1.0]);
            frame
        })
        .collect();
    assert_eq!(server.upload_lines(&admin, "/api/projects/p/datasets/d/frames", &frames).status(), 200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let status: Value = server.get(&admin, "/api/projects/p/datasets/d/status").json().unwrap();
        let preparation = &status["preparation"];
        if preparation["filter_index"] == "ready" && preparation["similarity_index"] == "ready" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not prepared: {status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The first query of each kind is answered from its index.
    let similar: Value = server
        .post_json(&admin, "/api/projects/p/datasets/d/insights/similar", &json!({"frame_id": "f007", "k": 5}))
        .json()
        .unwrap();
    assert_eq!(similar["method"], "hnsw", "{similar}");
    let page: Value =
        server.get(&admin, "/api/projects/p/datasets/d/frames?meta=weather:eq:fog&count=true").json().unwrap();
    assert_eq!(page["from_index"], true);
    assert_eq!(page["total"], 60);
}

#[test]
fn map_points_come_as_arrow_with_the_same_ids_and_attributes_as_json() {
    use arrow::array::{Array, AsArray};
    let (server, tokens) = Server::demo("40");
    let viewer = tokens["victor"]["token"].as_str().unwrap();
    let path = "/api/projects/shapes/datasets/shapes/insights/map/ids?space=frames\
                &attributes=class,label_count,meta.split,agreement&inference_set=detector_v1";
    let json: Value = server.get(viewer, path).json().unwrap();
    let response = server
        .request(Method::GET, viewer, path)
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/vnd.apache.arrow.stream");
    let bytes = response.bytes().unwrap();
    let batches: Vec<_> = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(batches.len(), 1);
    let batch = &batches[0];
    let ids: Vec<&str> = batch.column(0).as_string::<i32>().iter().map(Option::unwrap).collect();
    let expected: Vec<&str> = json["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ids, expected);
    assert_eq!(ids.len(), 40);
    let attributes = json["attributes"].as_object().unwrap();
    assert_eq!(batch.num_columns(), 1 + attributes.len());
    for (name, values) in attributes {
        let column = batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
        let as_json: Vec<Value> = (0..column.len())
            .map(|i| {
                if column.is_null(i) {
                    return Value::Null;
                }
                match column.data_type() {
                    arrow::datatypes::DataType::Float64 => {
                        json!(column.as_primitive::<arrow::datatypes::Float64Type>().value(i))
                    }
                    arrow::datatypes::DataType::Boolean => json!(column.as_boolean().value(i)),
                    _ => {
                        let dictionary = column.as_dictionary::<arrow::datatypes::Int32Type>();
                        let keys = dictionary.keys();
                        json!(dictionary.values().as_string::<i32>().value(keys.value(i) as usize))
                    }
                }
            })
            .collect();
        let expected: Vec<Value> = values
            .as_array()
            .unwrap()
            .iter()
            .map(|v| if v.is_number() { json!(v.as_f64().unwrap()) } else { v.clone() })
            .collect();
        assert_eq!(as_json, expected, "{name}");
    }
}

#[test]
fn insight_scores_are_tables_equal_to_the_insight_routes_and_guarded_for_analysts() {
    let (server, tokens) = Server::demo("60");
    let viewer = tokens["victor"]["token"].as_str().unwrap();
    let base = "/api/projects/shapes/datasets/shapes";
    // Listed beside the other tables, with their columns.
    let listed: Value = server.get(viewer, &format!("{base}/tables")).json().unwrap();
    let names: Vec<&str> = listed["tables"].as_array().unwrap().iter().map(|t| t["table"].as_str().unwrap()).collect();
    for table in ["frame_scores", "label_scores", "issues_detector_v1"] {
        assert!(names.contains(&table), "{table} not in {names:?}");
    }
    // One score row per frame, each frame with an embedding scored.
    let frames = count(&server, viewer, "SELECT COUNT(*) AS n FROM shapes.frames");
    assert_eq!(count(&server, viewer, "SELECT COUNT(*) AS n FROM shapes.frame_scores"), frames);
    assert_eq!(count(&server, viewer, "SELECT COUNT(uniqueness) AS n FROM shapes.frame_scores"), frames);
    assert_eq!(
        count(&server, viewer, "SELECT COUNT(*) AS n FROM shapes.label_scores"),
        count(&server, viewer, "SELECT COUNT(*) AS n FROM shapes.labels")
    );
    // The issues table holds what the label-error queue ranks: the same counts per kind and
    // the same top issue.
    let queue: Value = server
        .get(viewer, &format!("{base}/insights/label_errors?inference_set=detector_v1&limit=10000"))
        .json()
        .unwrap();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for issue in queue["issues"].as_array().unwrap_or_else(|| panic!("{queue}")) {
        *expected.entry(issue["kind"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(!expected.is_empty(), "the demo injects label errors: {queue}");
    let by_kind: BTreeMap<String, i64> =
        rows(&server, viewer, "SELECT kind, COUNT(*) AS n FROM shapes.issues_detector_v1 GROUP BY kind")
            .iter()
            .map(|r| (r["kind"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap()))
            .collect();
    assert_eq!(by_kind, expected);
    let top = &rows(
        &server,
        viewer,
        "SELECT frame_id, label_id, inference_id, score FROM shapes.issues_detector_v1 ORDER BY score DESC, frame_id LIMIT 1",
    )[0];
    let first = &queue["issues"][0];
    assert_eq!(top["score"].as_f64().unwrap(), first["score"].as_f64().unwrap(), "{top} vs {first}");
    // The most isolated frame by SQL is the neighbour route's first outlier.
    let outliers: Value =
        server.get(viewer, &format!("{base}/insights/neighbors?kind=outliers&min_score=-1000&limit=1")).json().unwrap();
    let isolated =
        &rows(&server, viewer, "SELECT frame_id FROM shapes.frame_scores ORDER BY outlier_score DESC LIMIT 1")[0];
    assert_eq!(isolated["frame_id"], outliers["items"][0]["frame_id"], "{outliers}");
    // Scores join the frames they describe, for members.
    let joined = count(
        &server,
        viewer,
        "SELECT COUNT(*) AS n FROM shapes.frame_scores s JOIN shapes.frames f ON s.frame_id = f.frame_id",
    );
    assert_eq!(joined, frames);

    // An outside analyst reads the published scores as aggregates over at least 5 frames ...
    let sam = tokens["sam"]["token"].as_str().unwrap();
    let response = query(&server, sam, "SELECT COUNT(*) AS n, AVG(uniqueness) AS u FROM shapes.frame_scores");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().unwrap();
    assert_eq!(answer["rows"][0]["n"].as_i64().unwrap(), frames, "{answer}");
    // ... and never which frame, label or inference an issue or a score is about.
    let attacks = [
        "SELECT frame_id FROM shapes.frame_scores ORDER BY outlier_score DESC LIMIT 1",
        "SELECT frame_id, COUNT(*) AS n FROM shapes.issues_detector_v1 GROUP BY frame_id",
        "SELECT inference_id, COUNT(*) AS n FROM shapes.issues_detector_v1 GROUP BY inference_id",
        "SELECT other_label_id, COUNT(*) AS n FROM shapes.issues_detector_v1 GROUP BY other_label_id",
        "SELECT COUNT(*) AS n FROM shapes.label_scores WHERE label_id LIKE 'a%'",
        "SELECT MAX(uniqueness) AS u FROM shapes.frame_scores s JOIN shapes.frames f ON s.frame_id = f.frame_id",
        "SELECT score FROM shapes.issues_detector_v1",
    ];
    for sql in attacks {
        let response = query(&server, sam, sql);
        let status = response.status().as_u16();
        assert_eq!(status, 403, "{sql}: {}", response.text().unwrap());
    }
    // Small groups of issues are refused: the threshold counts frames here as everywhere.
    let top_score = top["score"].as_f64().unwrap();
    let rare =
        query(&server, sam, &format!("SELECT COUNT(*) AS n FROM shapes.issues_detector_v1 WHERE score >= {top_score}"));
    let error = expect_error(rare, 403);
    assert!(error["message"].as_str().unwrap().contains("at least 5"), "{error}");
}
