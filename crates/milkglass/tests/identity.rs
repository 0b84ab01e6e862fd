//! Names are not identities, tried on a real server as a hostile user would: nothing that
//! belonged to a deleted project or a dropped table passes to the next thing of that name, a
//! refusal reads the same whether the thing exists or not, and bad input is refused where it
//! is wrong, with the JSON error body.

mod common;

use common::{Server, add_user, expect_error};
use reqwest::Method;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{Value, json};

const CSV: &str = "age,city\n31,Paris\n42,Lyon\n35,Paris\n28,Nice\n";

fn publish(server: &Server, token: &str, name: &str, csv: &str, policy: &Value) -> reqwest::blocking::Response {
    let form = Form::new()
        .text("name", name.to_string())
        .text("policy", policy.to_string())
        .part("file", Part::bytes(csv.as_bytes().to_vec()).file_name("t.csv"));
    server.request(Method::POST, token, "/api/tables").multipart(form).send().unwrap()
}

/// Every query held for review: min 1000 rows, handling "review".
fn review_policy() -> Value {
    json!({"safe_zone": {"aggregation": {"min_agg_size": 1000}}, "unsafe_handling": "review"})
}

#[test]
fn a_stale_signed_url_after_delete_and_recreate_is_refused_and_changes_nothing() {
    let (server, admin) = Server::start(&[]);
    let other = add_user(&server.dir, "mallory", "owner");
    let create = |token: &str| {
        let r = server.post_json(token, "/api/projects", &json!({"name": "shared", "access_mode": "hosted"}));
        assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    };
    let sign = |token: &str| -> Value {
        let r = server.post_json(token, "/api/projects/shared/assets/sign", &json!({"keys": ["a.png"], "put": true}));
        assert_eq!(r.status(), 200);
        r.json::<Value>().unwrap()["urls"][0].clone()
    };
    create(&admin);
    let old = sign(&admin);
    let put = |url: &str, body: &'static [u8]| server.client.put(url).body(body).send().unwrap().status();
    assert_eq!(put(old["put_url"].as_str().unwrap(), b"old"), 201);
    assert_eq!(server.request(Method::DELETE, &admin, "/api/projects/shared").send().unwrap().status(), 204);

    // Someone else takes the name and uploads a file of the same key.
    create(&other);
    let new = sign(&other);
    assert_eq!(put(new["put_url"].as_str().unwrap(), b"new"), 201);
    let stale_get = server.client.get(old["get_url"].as_str().unwrap()).send().unwrap();
    assert_eq!(stale_get.status(), 403);
    let error: Value = stale_get.json().unwrap();
    assert_eq!(error["error"]["code"], "forbidden", "{error}");
    assert_eq!(put(old["put_url"].as_str().unwrap(), b"overwritten"), 403);
    let fresh = server.client.get(new["get_url"].as_str().unwrap()).send().unwrap();
    assert_eq!(fresh.bytes().unwrap().as_ref(), b"new", "the stale PUT changed nothing");
}

#[test]
fn a_recreated_table_shows_its_new_owner_nothing_of_the_old_one() {
    let (server, admin) = Server::start(&[]);
    let olivia = add_user(&server.dir, "olivia", "owner");
    let mallory = add_user(&server.dir, "mallory", "owner");
    let sam = add_user(&server.dir, "sam", "scientist");
    assert_eq!(publish(&server, &olivia, "people", CSV, &review_policy()).status(), 201);
    // Held (too few rows for min 1000): a pending request, plus audit entries.
    let held = server.post_json(
        &sam,
        "/api/query",
        &json!({"sql": "SELECT city, COUNT(*) FROM people GROUP BY city", "wait_seconds": 0}),
    );
    assert_eq!(held.status(), 202, "{}", held.text().unwrap());
    let request_id = held.json::<Value>().unwrap()["request_id"].as_i64().unwrap();
    let olivia_audit: Value = server.get(&olivia, "/api/audit?table=people").json().unwrap();
    assert!(!olivia_audit["entries"].as_array().unwrap().is_empty());

    // Dropping closes the pending request; the review list keeps working for everyone.
    assert_eq!(server.request(Method::DELETE, &olivia, "/api/tables/people").send().unwrap().status(), 204);
    for token in [&olivia, &sam, &mallory, &admin] {
        let r = server.get(token, "/api/reviews");
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }
    let collected = expect_error(server.get(&sam, &format!("/api/query/requests/{request_id}")), 403);
    assert_eq!(collected["code"], "rejected");
    assert!(collected["message"].as_str().unwrap().contains("dropped"), "{collected}");

    // Mallory publishes a table of the same name: none of it is hers.
    assert_eq!(publish(&server, &mallory, "people", CSV, &review_policy()).status(), 201);
    let audit: Value = server.get(&mallory, "/api/audit?table=people").json().unwrap();
    assert_eq!(audit["entries"], json!([]), "{audit}");
    let all: Value = server.get(&mallory, "/api/audit").json().unwrap();
    assert_eq!(all["entries"], json!([]), "{all}");
    let reviews: Value = server.get(&mallory, "/api/reviews").json().unwrap();
    assert_eq!(reviews["requests"], json!([]), "{reviews}");
    // Deciding on sam's old request reads exactly like deciding on a missing one.
    let hidden = server.post_json(&mallory, &format!("/api/reviews/{request_id}/approve"), &json!({}));
    let missing = server.post_json(&mallory, "/api/reviews/99999/approve", &json!({}));
    assert_eq!(hidden.status(), 404);
    assert_eq!(
        hidden.text().unwrap().replace(&request_id.to_string(), "N"),
        missing.text().unwrap().replace("99999", "N")
    );
    // The old owner and admins still read the old entries.
    let kept: Value = server.get(&olivia, "/api/audit").json().unwrap();
    assert!(!kept["entries"].as_array().unwrap().is_empty(), "{kept}");
    let admin_view: Value = server.get(&admin, "/api/audit?table=people").json().unwrap();
    assert!(!admin_view["entries"].as_array().unwrap().is_empty(), "{admin_view}");
}

#[test]
fn refusals_for_hidden_and_missing_things_are_byte_identical() {
    let (server, admin) = Server::start(&[]);
    let outsider = add_user(&server.dir, "sid", "scientist");
    let olivia = add_user(&server.dir, "olivia", "owner");
    server.project_with_dataset(&admin, "secret", "d");
    assert_eq!(
        publish(
            &server,
            &olivia,
            "hidden",
            CSV,
            &json!({"safe_zone": {"aggregation": {"min_agg_size": 2}}, "unsafe_handling": "reject"})
        )
        .status(),
        201
    );
    let r = server.request(Method::PUT, &olivia, "/api/tables/hidden/policy")
        .json(&json!({"policy": {"safe_zone": {"aggregation": {"min_agg_size": 2}}, "unsafe_handling": "reject"}, "readers": ["nobody"]}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let same = |existing: &str, missing: &str, name: &str| {
        let (a, b) = (server.get(&outsider, existing), server.get(&outsider, missing));
        assert_eq!(a.status(), b.status(), "{existing}");
        let (a, b) = (a.text().unwrap(), b.text().unwrap());
        assert_eq!(a.replace(name, "NAME"), b.replace("nope", "NAME"), "{existing}");
    };
    same("/api/projects/secret", "/api/projects/nope", "secret");
    same("/api/projects/secret/datasets", "/api/projects/nope/datasets", "secret");
    same("/api/projects/secret/datasets/d/frames", "/api/projects/nope/datasets/d/frames", "secret");
    same("/api/tables/hidden", "/api/tables/nope", "hidden");
    let query = |table: &str| {
        server
            .post_json(&outsider, "/api/query", &json!({"sql": format!("SELECT COUNT(*) FROM {table}")}))
            .text()
            .unwrap()
    };
    assert_eq!(query("hidden").replace("hidden", "NAME"), query("nope").replace("nope", "NAME"));
}

#[test]
fn settings_refuse_every_ssrf_form_when_saved() {
    let (server, admin) = Server::start(&[]);
    let r = server.post_json(&admin, "/api/projects", &json!({"name": "m", "access_mode": "mirrored"}));
    assert_eq!(r.status(), 201);
    for endpoint in [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://0177.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://0.0.0.0/",
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://[fd00::1]/",
        "http://100.64.0.1/",
        "http://localhost/",
        "http://nas/",
        "http://metadata.internal/",
        "http://printer.local/",
        "file:///etc/passwd",
        "gopher://x/",
    ] {
        for body in [
            json!({"signing_endpoint": endpoint}),
            json!({"s3": {"region": "us-east-1", "endpoint": endpoint, "access_key_id": "k", "secret_access_key": "s"}}),
        ] {
            let r = server.request(Method::PUT, &admin, "/api/projects/m/fetch").json(&body).send().unwrap();
            let error = expect_error(r, 400);
            assert!(
                error["field"].as_str().is_some_and(|f| f == "signing_endpoint" || f == "s3.endpoint"),
                "{endpoint}: {error}"
            );
        }
    }
    let saved: Value = server.get(&admin, "/api/projects/m/fetch").json().unwrap();
    assert_eq!(
        (saved["signing_endpoint"].clone(), saved["s3"].clone()),
        (Value::Null, Value::Null),
        "nothing was saved"
    );
    let ok = server
        .request(Method::PUT, &admin, "/api/projects/m/fetch")
        .json(&json!({"signing_endpoint": "https://sign.example.com/"}))
        .send()
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[test]
fn bad_input_is_refused_with_the_json_error_body() {
    let (server, admin) = Server::start(&[]);
    server.project_with_dataset(&admin, "p", "d");
    let json_error = |r: reqwest::blocking::Response, status: u16| expect_error(r, status);
    // `%ZZ` is no escape, so it is a (missing) name; `%C3%28` decodes to no UTF-8 at all.
    json_error(server.get(&admin, "/api/projects/%ZZ"), 404);
    json_error(server.get(&admin, "/api/projects/p/datasets/%C3%28"), 400);
    json_error(server.get(&admin, "/api/query/requests/abc"), 400);
    json_error(server.post_json(&admin, "/api/reviews/1.5/approve", &json!({})), 400);
    json_error(server.get(&admin, "/api/reviews?colour=red"), 400);
    json_error(server.get(&admin, "/api/audit?table=a&table=b&x=1"), 400);
    json_error(server.request(Method::POST, &admin, "/api/tables").body("not multipart").send().unwrap(), 400);
    json_error(server.request(Method::PATCH, &admin, "/api/whoami").send().unwrap(), 405);
    // Integers past 64 bits are refused, not rounded.
    let big = json!({"frame_id": "f", "metadata": {"n": 1}}).to_string().replace("1}", "18446744073709551616}");
    let r = server
        .client
        .post(server.url("/api/projects/p/datasets/d/frames"))
        .bearer_auth(&admin)
        .header("content-type", "application/x-ndjson")
        .body(big)
        .send()
        .unwrap();
    let error = json_error(r, 400);
    assert!(error["message"].as_str().unwrap().contains("64 bits"), "{error}");
    // Control characters in names and ids.
    json_error(server.post_json(&admin, "/api/projects", &json!({"name": "a\u{0}b"})), 400);
    json_error(server.post_json(&admin, "/api/projects/p/datasets", &json!({"name": "d\u{7}"})), 400);
    let r = server.upload_lines(&admin, "/api/projects/p/datasets/d/frames", &[json!({"frame_id": "f\u{0}"})]);
    json_error(r, 400);
    let r = server.post_json(
        &admin,
        "/api/projects/p/datasets/d/segments",
        &json!({"name": "s\u{0}", "item_kind": "frames", "items": []}),
    );
    json_error(r, 400);
    // An empty table is refused with a message.
    let empty = publish(
        &server,
        &admin,
        "empty",
        "age,city\n",
        &json!({"safe_zone": {"aggregation": {"min_agg_size": 2}}, "unsafe_handling": "reject"}),
    );
    let error = json_error(empty, 400);
    assert_eq!(error["field"], "file", "{error}");
    let nothing = publish(
        &server,
        &admin,
        "nothing",
        "",
        &json!({"safe_zone": {"aggregation": {"min_agg_size": 2}}, "unsafe_handling": "reject"}),
    );
    json_error(nothing, 400);
    assert_eq!(server.get(&admin, "/api/tables").json::<Value>().unwrap()["tables"], json!([]));
}
