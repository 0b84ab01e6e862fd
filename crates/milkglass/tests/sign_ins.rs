//! Authentication abuse on a real server: each failed sign-in (a wrong token, a revoked one, a
//! malformed header; over HTTP and Flight SQL) is audited with who tried and from where, and an
//! address past its limit is refused for the rest of the minute, right tokens too, while other
//! addresses are not.

mod common;

use common::{Server, add_user, cli};
use reqwest::blocking::Client;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

/// A client whose requests come from `local` (any 127.x.y.z reaches the loopback server).
fn client_from(local: &str) -> Client {
    let local: IpAddr = local.parse().unwrap();
    Client::builder().local_address(local).timeout(Duration::from_secs(30)).build().unwrap()
}

fn whoami(client: &Client, server: &Server, authorization: &str) -> reqwest::blocking::Response {
    client.get(server.url("/api/whoami")).header("authorization", authorization).send().unwrap()
}

fn audit(server: &Server, admin: &str) -> Vec<Value> {
    let from_elsewhere = client_from("127.0.0.9");
    let r = from_elsewhere.get(server.url("/api/audit")).bearer_auth(admin).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["entries"].as_array().unwrap().clone()
}

#[test]
fn failed_sign_ins_are_audited_and_an_address_past_its_limit_is_refused() {
    let (server, admin) = Server::start(&["--failed-sign-ins-per-minute", "3"]);
    let eve = add_user(&server.dir, "eve", "scientist");
    cli(&["user", "revoke", "eve", "--data-dir", server.dir.to_str().unwrap()]);
    let attacker = client_from("127.0.0.2");

    // Three failures of three kinds, each answered 401 ...
    for authorization in ["Bearer mg_0000".to_string(), format!("Bearer {eve}"), "Basic YWRtaW46eA==".into()] {
        let r = whoami(&attacker, &server, &authorization);
        assert_eq!(r.status(), 401, "{authorization}");
    }
    // ... after which the address is refused, even with a right token (or a refusal would tell a
    // guesser which guess was right), and says for how long.
    let refused = whoami(&attacker, &server, &format!("Bearer {admin}"));
    assert_eq!(refused.status(), 429);
    let wait: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let body: Value = refused.json().unwrap();
    assert_eq!(body["error"]["code"], "too_many_failed_sign_ins", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("127.0.0.2"), "{body}");
    for _ in 0..5 {
        assert_eq!(whoami(&attacker, &server, "Bearer mg_1111").status(), 429);
    }
    // Another address signs in as usual.
    assert_eq!(whoami(&client_from("127.0.0.3"), &server, &format!("Bearer {admin}")).status(), 200);

    let entries = audit(&server, &admin);
    let failures: Vec<&Value> = entries.iter().filter(|e| e["decision"] != "answered").collect();
    let seen: Vec<(&str, &str, &str)> = failures
        .iter()
        .map(|e| (e["user"].as_str().unwrap(), e["decision"].as_str().unwrap(), e["query"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("(unknown)", "unauthenticated", "GET /api/whoami"),
            ("eve", "unauthenticated", "GET /api/whoami"),
            ("(unknown)", "unauthenticated", "GET /api/whoami"),
            // One entry for the whole refusal, not one per refused request.
            ("(unknown)", "rate_limited", "GET /api/whoami"),
        ],
        "{entries:?}"
    );
    let reasons: Vec<&str> = failures.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().all(|r| r.ends_with("from 127.0.0.2")), "{reasons:?}");
    assert!(reasons[1].starts_with("revoked token"), "{reasons:?}");
    // No entry quotes the credential that was tried.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("mg_0000") && !text.contains(&eve) && !text.contains("YWRtaW46eA"), "{text}");

    // The entries are part of the chain, which still verifies.
    let verdict: Value = client_from("127.0.0.9")
        .get(server.url("/api/audit/verify"))
        .bearer_auth(&admin)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(verdict["verified"], true, "{verdict}");
}

#[test]
fn an_author_does_not_read_the_failed_sign_ins_of_others() {
    let (server, admin) = Server::start(&[]);
    let sam = add_user(&server.dir, "sam", "scientist");
    assert_eq!(whoami(&server.client, &server, "Bearer mg_wrong").status(), 401);
    let mine: Value = server.get(&sam, "/api/audit").json().unwrap();
    assert!(
        mine["entries"].as_array().unwrap().iter().all(|e| e["user"] == "sam"),
        "a scientist reads only their own entries: {mine}"
    );
    assert!(audit(&server, &admin).iter().any(|e| e["user"] == "(unknown)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_over_flight_sql_is_audited_with_its_address() {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    let (server, admin) = tokio::task::spawn_blocking(|| Server::start(&[])).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(server.flight.clone()).unwrap().connect().await.unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_token("mg_not_a_token".into());
    let e = client.execute("SELECT 1".into(), None).await.unwrap_err();
    assert!(e.to_string().contains("invalid or revoked token"), "{e}");
    let entries = tokio::task::spawn_blocking(move || {
        let entries = audit(&server, &admin);
        drop(server);
        entries
    })
    .await
    .unwrap();
    let entry = entries.iter().find(|e| e["decision"] == "unauthenticated").expect("an entry for the attempt");
    assert_eq!(entry["user"], "(unknown)");
    assert!(entry["query"].as_str().unwrap().starts_with("Flight "), "{entry}");
    assert!(entry["reason"].as_str().unwrap().ends_with("from 127.0.0.1"), "{entry}");
}
