//! The authorization matrix, walked: every route of docs/API.md's route index, called as every
//! role on a real server. A caller below a route's need is refused (401 without a token, else
//! 403 or 404) with the JSON error body, and a hidden thing reads exactly like a missing one; a
//! caller with the need is never refused; nobody gets a 5xx. The index must list exactly the
//! routes the server declares, so a new route cannot be added without being walked.

mod common;

use common::{Server, add_user};
use reqwest::Method;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{Value, json};
use std::collections::BTreeSet;

const DS: &str = "/api/projects/{project}/datasets/{dataset}";

/// (method, path, need) from the ```routes block of docs/API.md.
fn route_index() -> Vec<(String, String, String)> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md")).unwrap();
    let block = doc.split("```routes\n").nth(1).expect("docs/API.md has a ```routes block");
    let block = block.split("```").next().unwrap();
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "route index line {line:?}");
            (parts[0].to_string(), parts[1].replace("{ds}", DS), parts[2].to_string())
        })
        .collect()
}

/// (METHOD, path) of every `.route(...)` the server's routers declare, read from their source.
fn declared_routes() -> BTreeSet<(String, String)> {
    let vars = [
        ("{datasets}", DS.to_string()),
        ("{dataset}", DS.to_string()),
        ("{base}", format!("{DS}/insights")),
        ("{project}", "/api/projects/{project}".to_string()),
    ];
    let mut routes = BTreeSet::new();
    for file in ["routes", "tables", "users", "insight", "raw", "oidc"] {
        let path = format!("{}/../milkglass-server/src/{file}.rs", env!("CARGO_MANIFEST_DIR"));
        let source = std::fs::read_to_string(path).unwrap();
        for call in source.split(".route(").skip(1) {
            let call = call.split("\n}").next().unwrap();
            let call = call.split(".merge(").next().unwrap().split(".layer(").next().unwrap();
            let mut path = match call.find('"') {
                Some(start) if !call.trim_start().starts_with("datasets,") => {
                    let rest = &call[start + 1..];
                    rest[..rest.find('"').unwrap()].replace("{{", "\u{1}").replace("}}", "\u{2}")
                }
                _ => "{datasets}".to_string(),
            };
            for (var, value) in &vars {
                if let Some(rest) = path.strip_prefix(var) {
                    path = format!("{value}{rest}");
                    break;
                }
            }
            let path = path
                .replace('\u{1}', "{")
                .replace('\u{2}', "}")
                .replace("{*path}", "{path}")
                .replace("{*rest}", "{rest}");
            for method in ["get", "post", "put", "patch", "delete", "any"] {
                let called = call.contains(&format!("{method}(")) && !call.contains(&format!("_{method}("));
                if called || call.contains(&format!(".{method}(")) {
                    routes.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
    }
    routes
}

#[test]
fn the_route_index_lists_every_declared_route() {
    let documented: BTreeSet<(String, String)> = route_index().into_iter().map(|(m, p, _)| (m, p)).collect();
    let declared = declared_routes();
    let undocumented: Vec<_> = declared.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&declared).collect();
    assert!(undocumented.is_empty(), "routes missing from docs/API.md's route index: {undocumented:?}");
    assert!(stale.is_empty(), "route index lines with no route: {stale:?}");
}

struct Roles {
    admin: String,
    olivia: String,
    vic: String,
    sid: String,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Who {
    Nobody,
    Sid,
    Vic,
    Olivia,
    Admin,
}

/// Whether `who` has what a route needs. olivia (owner role) owns project p and table t; vic
/// (scientist) views p, reads t and made request 1; sid (scientist) has nothing.
fn allowed(who: Who, need: &str) -> bool {
    use Who::*;
    match need {
        "public" => true,
        "user" => who != Nobody,
        "creator" | "owner" | "table_owner" | "reviewer" => matches!(who, Olivia | Admin),
        "viewer" | "reader" => matches!(who, Vic | Olivia | Admin),
        "requester" => who == Vic,
        "admin" => who == Admin,
        other => panic!("unknown need {other:?} in the route index"),
    }
}

fn concrete(path: &str, missing: bool) -> String {
    let (project, table, id) = if missing { ("nope", "nope", "99999") } else { ("p", "t", "1") };
    path.replace("{project}", project)
        .replace("{dataset}", "d")
        .replace("{set}", "m")
        .replace("{frame}", "f0")
        .replace("{segment}", "s")
        .replace("{user}", "vic")
        .replace("{table}", table)
        .replace("{id}", id)
        .replace("{path}", "x.png")
        .replace("{rest}", "no/such/route")
}

/// A body each route accepts, so that what answers is the access check, not the parser.
fn body_for(method: &str, path: &str) -> Value {
    let ends = |suffix: &str| path.ends_with(suffix);
    match method {
        "POST" if path == "/api/projects" => json!({"name": "walked"}),
        "POST" if path == "/api/users" => json!({"name": "walked", "role": "scientist"}),
        "PATCH" if path.starts_with("/api/users/") => json!({"role": "scientist"}),
        "POST" if ends("/datasets") || ends("/inference_sets") => json!({"name": "walked"}),
        "POST" if ends("/assets/sign") => json!({"keys": ["a.png"]}),
        "POST" if ends("/assets/resolve") => json!({"urls": []}),
        "POST" if ends("/delete_frames") => json!({"frame_ids": []}),
        "POST" if ends("/similar") => json!({"frame_id": "f0"}),
        "POST" if ends("/dismiss") => json!({"kind": "missing_label", "label_id": "x"}),
        "POST" if ends("/segments") => json!({"name": "walked", "item_kind": "frames", "items": []}),
        "POST" if ends("/collect") => json!({"from_dataset": "d", "name": "walked"}),
        "POST" if path == "/api/query" => json!({"sql": "SELECT COUNT(*) FROM t", "wait_seconds": 0}),
        "POST" if ends("/reject") => json!({"reason": "walked"}),
        "PUT" if path.contains("/members/") => json!({"role": "viewer"}),
        "PUT" if ends("/publication") => json!({"policy": {"safe_zone": true}, "readers": ["vic"]}),
        "PUT" if ends("/policy") => {
            json!({"policy": {"safe_zone": {"aggregation": {"min_agg_size": 1000}}, "unsafe_handling": "review"}})
        }
        _ => json!({}),
    }
}

fn call(server: &Server, token: Option<&str>, method: &str, path: &str) -> (u16, String) {
    let verb = Method::from_bytes(method.as_bytes()).unwrap();
    let query = if path.ends_with("/label_errors") || path.ends_with("/metrics") { "?inference_set=m" } else { "" };
    let mut request = server.client.request(verb.clone(), server.url(&format!("{path}{query}")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request = if path == "/api/tables" && verb == Method::POST {
        request.multipart(Form::new())
    } else if matches!(verb, Method::POST | Method::PUT | Method::PATCH) {
        request.json(&body_for(method, path))
    } else {
        request
    };
    let response = request.send().unwrap();
    (response.status().as_u16(), response.text().unwrap())
}

fn setup() -> (Server, Roles) {
    let (server, admin) = Server::start(&[]);
    let roles = Roles {
        olivia: add_user(&server.dir, "olivia", "owner"),
        vic: add_user(&server.dir, "vic", "scientist"),
        sid: add_user(&server.dir, "sid", "scientist"),
        admin,
    };
    let o = &roles.olivia;
    server.project_with_dataset(o, "p", "d");
    let member = server.request(Method::PUT, o, "/api/projects/p/members/vic").json(&json!({"role": "viewer"}));
    assert_eq!(member.send().unwrap().status(), 200);
    assert_eq!(
        server.upload_lines(o, &format!("{}/frames", concrete(DS, false)), &[common::frame("f0", 1)]).status(),
        200
    );
    assert_eq!(
        server.post_json(o, &format!("{}/inference_sets", concrete(DS, false)), &json!({"name": "m"})).status(),
        201
    );
    let segment = json!({"name": "s", "item_kind": "frames", "items": ["f0"]});
    assert_eq!(server.post_json(o, &format!("{}/segments", concrete(DS, false)), &segment).status(), 201);
    let policy = json!({"safe_zone": {"aggregation": {"min_agg_size": 1000}}, "unsafe_handling": "review"});
    let form = Form::new()
        .text("name", "t")
        .text("policy", policy.to_string())
        .text("readers", "vic")
        .part("file", Part::bytes(b"age,city\n31,Paris\n42,Lyon\n".to_vec()).file_name("t.csv"));
    assert_eq!(server.request(Method::POST, o, "/api/tables").multipart(form).send().unwrap().status(), 201);
    let held = server.post_json(&roles.vic, "/api/query", &json!({"sql": "SELECT COUNT(*) FROM t", "wait_seconds": 0}));
    assert_eq!(held.json::<Value>().unwrap()["request_id"], 1);
    (server, roles)
}

#[test]
fn every_route_refuses_below_its_need_uniformly_and_never_fails() {
    let (server, roles) = setup();
    let callers = [
        (Who::Nobody, None),
        (Who::Sid, Some(roles.sid.as_str())),
        (Who::Vic, Some(roles.vic.as_str())),
        (Who::Olivia, Some(roles.olivia.as_str())),
        (Who::Admin, Some(roles.admin.as_str())),
    ];
    let mut checked = 0;
    for (method, path, need) in route_index() {
        if need == "signed" {
            continue; // The signature is the credential: tests/identity.rs and access_modes.rs.
        }
        let methods: Vec<&str> = if method == "ANY" { vec!["GET", "PUT"] } else { vec![method.as_str()] };
        for method in methods {
            for (who, token) in callers {
                let url = concrete(&path, false);
                let ok = allowed(who, &need);
                // What an allowed caller may destroy is left alone: deletions have their own tests.
                if ok && method == "DELETE" {
                    continue;
                }
                let (status, body) = call(&server, token, method, &url);
                checked += 1;
                let context = format!("{method} {url} as {who:?} ({need}): {status} {body}");
                assert!(status < 500, "{context}");
                if status >= 400 {
                    let error: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {context}"));
                    assert!(error["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{context}");
                }
                if ok {
                    assert!(![401, 403].contains(&status), "refused a caller with the need: {context}");
                    continue;
                }
                let expected: &[u16] = if who == Who::Nobody { &[401] } else { &[403, 404] };
                assert!(expected.contains(&status), "not refused: {context}");
                // An outsider learns nothing: the thing that exists reads like one that does not.
                if who == Who::Sid && url != concrete(&path, true) {
                    let (missing_status, missing_body) = call(&server, token, method, &concrete(&path, true));
                    // The error as the caller reads it, with the names it sent replaced.
                    let normal = |b: &str, p: &str, t: &str, i: &str| {
                        let error: Value = serde_json::from_str(b).unwrap();
                        error
                            .to_string()
                            .replace(&format!("\\\"{p}\\\""), "<name>")
                            .replace(&format!("\\\"{t}\\\""), "<name>")
                            .replace(i, "<id>")
                    };
                    assert_eq!(
                        (status, normal(&body, "p", "t", "request 1")),
                        (missing_status, normal(&missing_body, "nope", "nope", "request 99999")),
                        "a hidden thing reads unlike a missing one: {context}"
                    );
                }
            }
        }
    }
    assert!(checked > 250, "{checked} calls");
}
