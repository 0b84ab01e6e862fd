//! The admin's routes on a real server: users, roles and tokens. A token is answered once,
//! works until revoked, and fails on the API afterwards; nobody but an admin gets anywhere.

mod common;

use common::{Server, add_user, expect_error};
use reqwest::Method;
use serde_json::{Value, json};

#[test]
fn an_admin_creates_a_user_mints_and_revokes_tokens() {
    let (server, admin) = Server::start(&[]);
    let created = server.post_json(&admin, "/api/users", &json!({"name": "rita", "role": "scientist"}));
    assert_eq!(created.status(), 201);
    let created: Value = created.json().unwrap();
    assert_eq!((created["user"]["name"].as_str(), created["user"]["role"].as_str()), (Some("rita"), Some("scientist")));
    let first = created["token"].as_str().unwrap().to_string();
    let whoami: Value = server.get(&first, "/api/whoami").json().unwrap();
    assert_eq!(whoami["name"], "rita");

    // A second token, shown once: the listing has its id and dates, never its text.
    let minted = server.request(Method::POST, &admin, "/api/users/rita/tokens").send().unwrap();
    assert_eq!(minted.status(), 201);
    let minted: Value = minted.json().unwrap();
    let second = minted["token"].as_str().unwrap().to_string();
    assert!(second.starts_with("mg_") && second != first);
    let listing = server.get(&admin, "/api/users/rita/tokens").text().unwrap();
    assert!(!listing.contains(&second) && !listing.contains(&first), "{listing}");
    let tokens: Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);

    // Revoked: that token fails, the other still works.
    let id = minted["id"].as_i64().unwrap();
    let revoke = server.request(Method::DELETE, &admin, &format!("/api/users/rita/tokens/{id}")).send().unwrap();
    assert_eq!(revoke.status(), 204);
    expect_error(server.get(&second, "/api/whoami"), 401);
    assert_eq!(server.get(&first, "/api/whoami").status(), 200);
    expect_error(server.request(Method::DELETE, &admin, &format!("/api/users/rita/tokens/{id}")).send().unwrap(), 404);

    // A role change takes effect on the next request.
    let patched = server.request(Method::PATCH, &admin, "/api/users/rita").json(&json!({"role": "owner"})).send();
    assert_eq!(patched.unwrap().json::<Value>().unwrap()["role"], "owner");
    assert_eq!(server.get(&first, "/api/whoami").json::<Value>().unwrap()["role"], "owner");

    // Revoking the user revokes every token of theirs.
    assert_eq!(server.request(Method::DELETE, &admin, "/api/users/rita").send().unwrap().status(), 204);
    expect_error(server.get(&first, "/api/whoami"), 401);
    let users: Value = server.get(&admin, "/api/users").json().unwrap();
    let rita = users["users"].as_array().unwrap().iter().find(|u| u["name"] == "rita").unwrap().clone();
    assert_eq!((rita["revoked"].clone(), rita["active_tokens"].clone()), (json!(true), json!(0)));
}

#[test]
fn bad_input_names_the_field_and_an_admin_keeps_their_own_role() {
    let (server, admin) = Server::start(&[]);
    let e = expect_error(server.post_json(&admin, "/api/users", &json!({"name": "rita", "role": "emperor"})), 400);
    assert_eq!(e["field"], "role");
    let e = expect_error(server.post_json(&admin, "/api/users", &json!({"name": "no spaces", "role": "viewer"})), 400);
    assert_eq!(e["field"], "name");
    let e = expect_error(server.post_json(&admin, "/api/users", &json!({"role": "viewer"})), 400);
    assert!(e["message"].as_str().unwrap().contains("name"), "{e}");
    add_user(&server.dir, "rita", "viewer");
    expect_error(server.post_json(&admin, "/api/users", &json!({"name": "rita", "role": "viewer"})), 409);
    expect_error(server.request(Method::POST, &admin, "/api/users/nobody/tokens").send().unwrap(), 404);

    let me: Value = server.get(&admin, "/api/whoami").json().unwrap();
    let mine = format!("/api/users/{}", me["name"].as_str().unwrap());
    let e = expect_error(
        server.request(Method::PATCH, &admin, &mine).json(&json!({"role": "viewer"})).send().unwrap(),
        400,
    );
    assert_eq!(e["field"], "role");
    let e = expect_error(server.request(Method::DELETE, &admin, &mine).send().unwrap(), 400);
    assert_eq!(e["field"], "user");
    assert_eq!(server.get(&admin, "/api/whoami").status(), 200);
}

#[test]
fn nobody_but_an_admin_manages_users() {
    let (server, _admin) = Server::start(&[]);
    let owner = add_user(&server.dir, "olivia", "owner");
    let scientist = add_user(&server.dir, "sam", "scientist");
    for token in [&owner, &scientist] {
        let e = expect_error(server.get(token, "/api/users"), 403);
        assert_eq!(e["code"], "forbidden");
        expect_error(server.post_json(token, "/api/users", &json!({"name": "mallory", "role": "admin"})), 403);
        expect_error(server.request(Method::POST, token, "/api/users/sam/tokens").send().unwrap(), 403);
        let raise = server.request(Method::PATCH, token, "/api/users/sam").json(&json!({"role": "admin"}));
        expect_error(raise.send().unwrap(), 403);
        expect_error(server.request(Method::DELETE, token, "/api/users/olivia").send().unwrap(), 403);
    }
    // Nothing happened: no user mallory, sam still a scientist with one token.
    assert_eq!(server.get(&scientist, "/api/whoami").json::<Value>().unwrap()["role"], "scientist");
    let out = common::cli(&["user", "list", "--data-dir", server.dir.to_str().unwrap()]);
    assert!(!out.contains("mallory"), "{out}");
    expect_error(server.client.get(server.url("/api/users")).send().unwrap(), 401);
}

#[test]
fn anyone_mints_expiring_personal_tokens_of_their_own_and_revokes_them() {
    let (server, _admin) = Server::start(&[]);
    let sam = add_user(&server.dir, "sam", "scientist");
    let other = add_user(&server.dir, "tess", "scientist");
    let minted = server.post_json(&sam, "/api/tokens", &json!({"expires_in_days": 30, "label": "notebook"}));
    assert_eq!(minted.status(), 201);
    let minted: Value = minted.json().unwrap();
    let personal = minted["token"].as_str().unwrap().to_string();
    let expires = minted["expires_at"].as_str().expect("personal tokens always expire");
    let days = (chrono_days(expires) - chrono_days(minted["created_at"].as_str().unwrap())).round();
    assert_eq!(days, 30.0, "{minted}");
    let whoami: Value = server.get(&personal, "/api/whoami").json().unwrap();
    assert_eq!(whoami["name"], "sam", "the token carries its owner's rights");
    // The default lasts 90 days; no token lasts over a year, or forever.
    let default: Value = server.post_json(&sam, "/api/tokens", &json!({})).json().unwrap();
    assert!(default["expires_at"].is_string(), "{default}");
    for bad in [json!({"expires_in_days": 0}), json!({"expires_in_days": 400}), json!({"label": "a\nb"})] {
        let e = expect_error(server.post_json(&sam, "/api/tokens", &bad), 400);
        assert!(e["field"] == "expires_in_days" || e["field"] == "label", "{e}");
    }
    let listed: Value = server.get(&sam, "/api/tokens").json().unwrap();
    let labels: Vec<&Value> = listed["tokens"].as_array().unwrap().iter().map(|t| &t["label"]).collect();
    assert_eq!(labels, [&Value::Null, &json!("notebook"), &Value::Null], "{listed}");
    assert!(!listed.to_string().contains(&personal), "a token's text is shown once");
    // Another user cannot revoke it; its owner can.
    let id = minted["id"].as_i64().unwrap();
    expect_error(server.request(Method::DELETE, &other, &format!("/api/tokens/{id}")).send().unwrap(), 404);
    assert_eq!(server.get(&personal, "/api/whoami").status(), 200);
    let r = server.request(Method::DELETE, &sam, &format!("/api/tokens/{id}")).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(server.get(&personal, "/api/whoami").status(), 401);
    assert_eq!(server.get(&sam, "/api/whoami").status(), 200, "the other tokens keep working");
}

/// Days since the epoch of an RFC 3339 time.
fn chrono_days(rfc3339: &str) -> f64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp() as f64 / 86_400.0
}
