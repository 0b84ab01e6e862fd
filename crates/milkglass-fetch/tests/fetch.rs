//! The fetcher against real HTTP servers on 127.0.0.1. Refusals of other addresses happen before
//! any connection, so no test sends a packet beyond loopback.

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use milkglass_fetch::{AllowList, FetchError, Fetcher, Limits, Probe, ProjectAccess, Refusal, Rules};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Seen {
    requests: AtomicU32,
    flaky_failures_left: AtomicU32,
    headers: Mutex<Vec<(String, HeaderMap)>>,
}

type Shared = Arc<Seen>;

async fn serve(failures_before_success: u32) -> (SocketAddr, Shared) {
    let seen = Arc::new(Seen { flaky_failures_left: AtomicU32::new(failures_before_success), ..Seen::default() });
    let app = Router::new()
        .route("/ok", get(|| async { ([(header::CONTENT_TYPE, "image/png")], "PNGDATA") }))
        .route("/redirect", get(redirect))
        .route("/loop", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }))
        .route("/big", get(|| async { vec![7u8; 1 << 20] }))
        .route("/big-chunked", get(big_chunked))
        .route("/flaky", get(flaky))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route("/signed", get(signed_only))
        .route("/sign", post(sign))
        .route("/forbidden", get(|| async { StatusCode::FORBIDDEN }))
        .layer(axum::middleware::from_fn_with_state(seen.clone(), record))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

async fn record(State(seen): State<Shared>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    seen.headers.lock().unwrap().push((request.uri().path().to_string(), request.headers().clone()));
    next.run(request).await
}

async fn redirect(Query(q): Query<HashMap<String, String>>) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, q["to"].clone())]).into_response()
}

async fn big_chunked() -> Body {
    let chunks = futures_chunks();
    Body::from_stream(chunks)
}

fn futures_chunks() -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::iter((0..64).map(|_| Ok(vec![1u8; 16 << 10])))
}

async fn flaky(State(seen): State<Shared>) -> Response {
    let left = seen.flaky_failures_left.load(Ordering::SeqCst);
    if left > 0 {
        seen.flaky_failures_left.store(left - 1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    "finally".into_response()
}

async fn signed_only(Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("sig").map(String::as_str) == Some("good") {
        "signed bytes".into_response()
    } else {
        StatusCode::FORBIDDEN.into_response()
    }
}

async fn sign(headers: HeaderMap, body: String) -> Response {
    let asked: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(asked["url"], "s3://bucket/cat.png");
    let host = headers[header::HOST].to_str().unwrap();
    axum::Json(serde_json::json!({ "url": format!("http://{host}/signed?sig=good") })).into_response()
}

fn fetcher(allow: &[&str], limits: Limits) -> Fetcher {
    Fetcher::new(Rules { allow: AllowList::parse(allow).unwrap() }, limits, None).unwrap()
}

fn quick() -> Limits {
    Limits { backoff_base: Duration::from_millis(10), backoff_max: Duration::from_millis(40), ..Limits::default() }
}

fn refusal(result: Result<milkglass_fetch::Fetched, FetchError>) -> (String, Refusal) {
    match result {
        Err(FetchError::Refused { url, rule }) => (url, rule),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn refuses_loopback_metadata_and_private_addresses_by_default() {
    let (addr, seen) = serve(0).await;
    let fetch = fetcher(&[], quick());
    let access = ProjectAccess::default();
    for (url, name) in [
        (format!("http://{addr}/ok"), "loopback"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "link-local (cloud metadata)"),
        ("http://10.0.0.1/".to_string(), "private"),
        ("http://192.168.0.10/".to_string(), "private"),
        ("http://100.64.0.1/".to_string(), "carrier-grade NAT"),
        ("http://0.0.0.0/".to_string(), "this-network"),
        ("http://2130706433/".to_string(), "loopback"),
        (format!("http://[::1]:{}/ok", addr.port()), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{}/ok", addr.port()), "loopback"),
        ("http://[fd00::1]/".to_string(), "unique-local (private)"),
    ] {
        let (_, rule) = refusal(fetch.fetch(&url, &access).await);
        match rule {
            Refusal::Address { name: got, .. } => assert_eq!(got, name, "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0, "refused before connecting");
}

#[tokio::test]
async fn error_names_the_url_and_the_rule() {
    let fetch = fetcher(&[], quick());
    let err = fetch.fetch("http://169.254.169.254/latest/meta-data/?token=x", &ProjectAccess::default()).await;
    assert_eq!(
        err.unwrap_err().to_string(),
        "http://169.254.169.254/latest/meta-data/?…: refused: address 169.254.169.254 is link-local (cloud metadata) \
         (169.254.0.0/16); an admin can allow it with the fetch allow-list"
    );
}

#[tokio::test]
async fn refuses_names_that_resolve_to_loopback() {
    let (addr, seen) = serve(0).await;
    let fetch = fetcher(&[], quick());
    let (url, rule) =
        refusal(fetch.fetch(&format!("http://localhost:{}/ok", addr.port()), &ProjectAccess::default()).await);
    assert!(url.starts_with("http://localhost:"));
    assert!(matches!(rule, Refusal::Address { name: "loopback", .. }), "{rule:?}");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn refuses_other_schemes() {
    let fetch = fetcher(&["0.0.0.0/0", "::/0"], quick());
    for url in ["file:///etc/passwd", "ftp://example.com/a", "gopher://127.0.0.1/"] {
        let (_, rule) = refusal(fetch.fetch(url, &ProjectAccess::default()).await);
        assert!(matches!(rule, Refusal::Scheme(_)), "{url}: {rule:?}");
    }
    // A bucket path is read only with the project's S3 access or signing endpoint, and the error
    // says which to set.
    match fetch.fetch("s3://bucket/key", &ProjectAccess::default()).await {
        Err(FetchError::Unsupported { reason, .. }) => assert!(reason.contains("S3 access"), "{reason}"),
        other => panic!("expected an explanation, got {other:?}"),
    }
}

#[tokio::test]
async fn checks_every_redirect() {
    let (addr, seen) = serve(0).await;
    // Only this one server is allowed; everything it redirects to must pass the rules again.
    let fetch = fetcher(&["127.0.0.1/32"], quick());
    let port = addr.port();
    for (target, expect) in [
        ("http://169.254.169.254/latest/meta-data/".to_string(), "link-local"),
        ("http://10.0.0.1/".to_string(), "private"),
        ("file:///etc/passwd".to_string(), "scheme"),
        (format!("http://127.0.0.2:{port}/ok"), "loopback"),
    ] {
        let url = format!("http://{addr}/redirect?to={}", urlencode(&target));
        let (refused_url, rule) = refusal(fetch.fetch(&url, &ProjectAccess::default()).await);
        match expect {
            "scheme" => assert_eq!(rule, Refusal::Scheme("file".into())),
            name => assert!(rule.to_string().contains(name), "{target}: {rule}"),
        }
        assert!(!refused_url.contains("/redirect"), "the error names the refused hop, not the first URL");
    }
    // One request per redirect, none to the refused targets.
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
}

/// A query value, form-encoded.
fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn allow_list_permits_loopback_by_range_and_by_host() {
    let (addr, _) = serve(0).await;
    let fetched = fetcher(&["127.0.0.0/8"], quick())
        .fetch(&format!("http://{addr}/ok"), &ProjectAccess::default())
        .await
        .unwrap();
    assert_eq!(&fetched.bytes[..], b"PNGDATA");
    assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
    assert_eq!(fetched.requests, 1);
    let by_host = fetcher(&["localhost"], quick());
    let fetched =
        by_host.fetch(&format!("http://localhost:{}/ok", addr.port()), &ProjectAccess::default()).await.unwrap();
    assert_eq!(&fetched.bytes[..], b"PNGDATA");
    // Allowing a host name does not allow its address written out.
    refusal(by_host.fetch(&format!("http://{addr}/ok"), &ProjectAccess::default()).await);
}

#[tokio::test]
async fn sends_project_headers_to_the_asset_origin_only() {
    let (addr, seen) = serve(0).await;
    let fetch = fetcher(&["127.0.0.0/8"], quick());
    let access =
        ProjectAccess::with_headers(&[("Authorization", "Bearer project-secret"), ("X-Shared-Secret", "s3cr3t")])
            .unwrap();
    fetch.fetch(&format!("http://{addr}/ok"), &access).await.unwrap();
    // A redirect to another origin (127.0.0.2 is another host) does not carry the credentials.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let other = format!("http://{}/ok", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/ok", get(|| async { "other" }))
        .layer(axum::middleware::from_fn_with_state(seen.clone(), record))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/redirect?to={}", urlencode(&other));
    let fetched = fetch.fetch(&url, &access).await.unwrap();
    assert_eq!(&fetched.bytes[..], b"other");
    let headers = seen.headers.lock().unwrap();
    let (path, first) = &headers[0];
    assert_eq!(path, "/ok");
    assert_eq!(first["authorization"], "Bearer project-secret");
    assert_eq!(first["x-shared-secret"], "s3cr3t");
    assert!(first["user-agent"].to_str().unwrap().starts_with("milkglass/"));
    assert_eq!(headers.len(), 3);
    assert_eq!(headers[1].1["authorization"], "Bearer project-secret", "same origin gets them");
    assert!(headers[2].1.get("authorization").is_none(), "another origin does not");
    assert!(headers[2].1.get("x-shared-secret").is_none());
    assert!(ProjectAccess::with_headers(&[("bad header", "x")]).is_err());
}

#[tokio::test]
async fn stops_at_the_size_cap() {
    let (addr, _) = serve(0).await;
    let limits = Limits { max_bytes: 64 << 10, ..quick() };
    let fetch = fetcher(&["127.0.0.1"], limits);
    for path in ["big", "big-chunked"] {
        match fetch.fetch(&format!("http://{addr}/{path}"), &ProjectAccess::default()).await {
            Err(FetchError::TooLarge { limit, .. }) => assert_eq!(limit, 64 << 10),
            other => panic!("{path}: {other:?}"),
        }
    }
    let roomy = fetcher(&["127.0.0.1"], quick());
    assert_eq!(
        roomy.fetch(&format!("http://{addr}/big-chunked"), &ProjectAccess::default()).await.unwrap().bytes.len(),
        1 << 20
    );
}

#[tokio::test]
async fn retries_5xx_with_backoff() {
    let (addr, seen) = serve(2).await;
    let started = std::time::Instant::now();
    let fetched = fetcher(&["127.0.0.1"], quick())
        .fetch(&format!("http://{addr}/flaky"), &ProjectAccess::default())
        .await
        .unwrap();
    assert_eq!(&fetched.bytes[..], b"finally");
    assert_eq!(fetched.requests, 3);
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert!(started.elapsed() >= Duration::from_millis(30), "waited 10 ms then 20 ms");

    let (addr, seen) = serve(5).await;
    let limits = Limits { retries: 1, ..quick() };
    match fetcher(&["127.0.0.1"], limits).fetch(&format!("http://{addr}/flaky"), &ProjectAccess::default()).await {
        Err(FetchError::Status { status: 503, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2, "one attempt and one retry");
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let (addr, seen) = serve(0).await;
    match fetcher(&["127.0.0.1"], quick()).fetch(&format!("http://{addr}/forbidden"), &ProjectAccess::default()).await {
        Err(FetchError::Status { status: 403, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn times_out_per_attempt_and_in_total() {
    let (addr, seen) = serve(0).await;
    let limits = Limits { attempt_timeout: Duration::from_millis(150), retries: 1, ..quick() };
    match fetcher(&["127.0.0.1"], limits).fetch(&format!("http://{addr}/slow"), &ProjectAccess::default()).await {
        Err(FetchError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(150)),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2, "a timed-out attempt is retried");

    let limits = Limits { total_timeout: Duration::from_millis(200), ..quick() };
    let started = std::time::Instant::now();
    match fetcher(&["127.0.0.1"], limits).fetch(&format!("http://{addr}/slow"), &ProjectAccess::default()).await {
        Err(FetchError::Timeout { after, .. }) => assert_eq!(after, Duration::from_millis(200)),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn limits_redirects() {
    let (addr, seen) = serve(0).await;
    let limits = Limits { max_redirects: 3, ..quick() };
    match fetcher(&["127.0.0.1"], limits).fetch(&format!("http://{addr}/loop"), &ProjectAccess::default()).await {
        Err(FetchError::TooManyRedirects { limit: 3, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn asks_the_signing_endpoint_first() {
    let (addr, seen) = serve(0).await;
    let fetch = fetcher(&["127.0.0.1"], quick());
    let mut access = ProjectAccess::with_headers(&[("X-Shared-Secret", "s3cr3t")]).unwrap();
    access.signing_endpoint = Some(format!("http://{addr}/sign").parse().unwrap());
    let fetched = fetch.fetch("s3://bucket/cat.png", &access).await.unwrap();
    assert_eq!(&fetched.bytes[..], b"signed bytes");
    assert_eq!(fetched.requests, 2);
    {
        let headers = seen.headers.lock().unwrap();
        assert_eq!(headers[0].0, "/sign");
        assert_eq!(headers[0].1["x-shared-secret"], "s3cr3t");
    }

    // The signing endpoint is itself a URL the rules check.
    let blocked =
        ProjectAccess { signing_endpoint: Some("http://169.254.169.254/sign".parse().unwrap()), ..Default::default() };
    refusal(fetch.fetch("s3://bucket/cat.png", &blocked).await);
}

#[tokio::test]
async fn probes_reachability() {
    let (addr, _) = serve(0).await;
    let open = fetcher(&["127.0.0.1"], quick());
    assert_eq!(open.probe(&format!("http://{addr}/ok"), &ProjectAccess::default()).await, Probe::Reachable);
    assert!(matches!(
        open.probe(&format!("http://{addr}/missing"), &ProjectAccess::default()).await,
        Probe::Invalid(_)
    ));
    assert!(matches!(
        open.probe(&format!("http://{addr}/forbidden"), &ProjectAccess::default()).await,
        Probe::BrowserOnly(_)
    ));
    assert!(matches!(open.probe("not a url", &ProjectAccess::default()).await, Probe::Invalid(_)));
    let closed = fetcher(&[], quick());
    match closed.probe(&format!("http://{addr}/ok"), &ProjectAccess::default()).await {
        Probe::BrowserOnly(why) => assert!(why.contains("loopback"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn https_without_tls_says_how_to_get_it() {
    let fetch = fetcher(&[], quick());
    match fetch.fetch("https://images.example.com/a.png", &ProjectAccess::default()).await {
        Err(FetchError::Unsupported { url, reason }) => {
            assert_eq!(url, "https://images.example.com/a.png");
            assert!(reason.contains("`tls` feature"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
