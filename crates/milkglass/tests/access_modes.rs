//! Data-access modes end to end: a real server process, and a counting HTTP server on loopback
//! standing in for the user's image server. The server is started with `--fetch-allow
//! 127.0.0.1`, so whenever milkglass does not reach the counting server it is by design, not
//! because the SSRF rules stopped it.

mod common;

use common::{ImageServer, Server, cli, expect_error};
use serde_json::{Value, json};

fn image_bytes(path: &str) -> Vec<u8> {
    format!("\u{89}PNG bytes of {path}").into_bytes()
}

/// The user's image server: any path but one containing `missing` answers with bytes of its own.
fn image_server() -> ImageServer {
    ImageServer::start(|path| (!path.contains("missing")).then(|| image_bytes(path)))
}

fn create(server: &Server, token: &str, project: &str, mode: &str) {
    let r = server.post_json(
        token,
        "/api/projects",
        &json!({"name": project, "access_mode": mode, "classes": [{"id": 0, "name": "cat"}]}),
    );
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    assert_eq!(
        server.post_json(token, &format!("/api/projects/{project}/datasets"), &json!({"name": "d"})).status(),
        201
    );
}

fn frame_with(id: &str, url: &str) -> Value {
    json!({
        "frame_id": id,
        "sensors": [{"sensor_id": "cam", "kind": "image", "url": url}],
        "labels": [{"label_id": format!("{id}_l"), "class": "cat",
                    "geometry": {"kind": "box2d", "top": 1.0, "left": 2.0, "width": 10.0, "height": 12.0}}],
        "embedding": [0.1, 0.2, 0.3, 0.4],
    })
}

fn upload(server: &Server, token: &str, project: &str, frames: &[Value]) {
    let r = server.upload_lines(token, &format!("/api/projects/{project}/datasets/d/frames"), frames);
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
}

/// The report the server makes in the background after an upload of frames.
fn report_after_upload(server: &Server, token: &str, project: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let response = server.get(token, &format!("/api/projects/{project}/datasets/d/url_report"));
        if response.status() == 200 {
            return response.json().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no URL report after the upload");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn anonymous_projects_never_reach_the_users_server() {
    let images = image_server();
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    create(&server, &admin, "anon", "anonymous");
    let d = "/api/projects/anon/datasets/d";
    let mut frames: Vec<Value> =
        (0..5).map(|i| frame_with(&format!("f{i}"), &images.url(&format!("f{i}.png")))).collect();
    frames.push(frame_with("public", "https://images.example.com/public.png"));
    upload(&server, &admin, "anon", &frames);
    let at_upload = report_after_upload(&server, &admin, "anon");
    assert_eq!(at_upload["counts"]["browser_only"], 5, "{at_upload}");

    // Every read and write of the dataset API.
    for path in [
        "/api/whoami".to_string(),
        "/api/info".to_string(),
        "/api/projects".to_string(),
        "/api/projects/anon".to_string(),
        "/api/projects/anon/datasets".to_string(),
        d.to_string(),
        format!("{d}/status"),
        format!("{d}/frames"),
        format!("{d}/frames/f1"),
        format!("{d}/inference_sets"),
    ] {
        assert_eq!(server.get(&admin, &path).status(), 200, "{path}");
    }
    let label = json!({"label_id": "extra", "frame_id": "f1", "class": "cat",
                       "geometry": {"kind": "box2d", "top": 0.0, "left": 0.0, "width": 5.0, "height": 5.0}});
    assert_eq!(server.upload_lines(&admin, &format!("{d}/labels"), &[label]).status(), 200);
    assert_eq!(server.post_json(&admin, &format!("{d}/inference_sets"), &json!({"name": "m"})).status(), 201);
    let inference = json!({"label_id": "i1", "frame_id": "f1", "class": "cat", "confidence": 0.9,
                           "geometry": {"kind": "box2d", "top": 0.0, "left": 0.0, "width": 5.0, "height": 5.0}});
    assert_eq!(server.upload_lines(&admin, &format!("{d}/inference_sets/m/inferences"), &[inference]).status(), 200);

    // Every insight works from labels, inferences and embeddings alone.
    let insights = format!("{d}/insights");
    let similar = server.post_json(&admin, &format!("{insights}/similar"), &json!({"frame_id": "f1", "k": 3}));
    assert_eq!(similar.status(), 200, "{}", similar.text().unwrap());
    for path in ["label_errors?inference_set=m", "metrics?inference_set=m", "map?space=frames", "map/ids?space=frames"]
    {
        let r = server.get(&admin, &format!("{insights}/{path}"));
        assert_eq!(r.status(), 200, "{path}: {}", r.text().unwrap());
    }

    // The raw-data features answer with why, without trying.
    let error = expect_error(server.post_json(&admin, &format!("{d}/embed"), &json!({})), 409);
    assert_eq!(error["code"], "anonymous_project");
    let error = expect_error(server.post_json(&admin, &format!("{d}/mirror"), &json!({})), 409);
    assert_eq!(error["code"], "anonymous_project");
    assert!(error["message"].as_str().unwrap().contains("never fetches"), "{error}");
    let settings = json!({"headers": {"Authorization": "Bearer x"}});
    let r = server.request(reqwest::Method::PUT, &admin, "/api/projects/anon/fetch").json(&settings).send().unwrap();
    assert_eq!(expect_error(r, 409)["code"], "anonymous_project");
    expect_error(server.post_json(&admin, "/api/projects/anon/assets/sign", &json!({"keys": ["a.png"]})), 409);

    // URL checks say what they can offline and leave the rest to the browser.
    let report: Value = server.post_json(&admin, &format!("{d}/url_check"), &json!({})).json().unwrap();
    assert_eq!(report["counts"]["browser_only"], 5, "loopback is for the browser only: {report}");
    assert_eq!(report["counts"]["not_checked"], 1, "{report}");
    let stored: Value = server.get(&admin, &format!("{d}/url_report")).json().unwrap();
    assert_eq!(stored["counts"], report["counts"]);
    // The browser gets the URLs as given.
    let resolved: Value = server
        .post_json(&admin, "/api/projects/anon/assets/resolve", &json!({"urls": [images.url("f0.png")]}))
        .json()
        .unwrap();
    assert_eq!(resolved["urls"][0]["load_url"], images.url("f0.png"));

    let r = server.request(reqwest::Method::DELETE, &admin, &format!("{d}/frames/f4")).send().unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        images.count(),
        0,
        "milkglass sent requests for an anonymous project: {:?}",
        images.seen.lock().unwrap()
    );
}

#[test]
fn mirrored_projects_fetch_each_asset_once_then_serve_it() {
    let images = image_server();
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    create(&server, &admin, "mirror", "mirrored");
    let d = "/api/projects/mirror/datasets/d";
    let settings = json!({"headers": {"X-Shared-Secret": "s3cr3t"}});
    let r = server.request(reqwest::Method::PUT, &admin, "/api/projects/mirror/fetch").json(&settings).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let shown: Value = server.get(&admin, "/api/projects/mirror/fetch").json().unwrap();
    assert_eq!(shown["headers"]["X-Shared-Secret"], "(set)", "header values are write-only");

    // Four frames, three distinct images (two frames share one), and one cloud-metadata URL.
    let frames = vec![
        frame_with("a", &images.url("a.png")),
        frame_with("b", &images.url("b.jpg")),
        frame_with("c", &images.url("a.png")),
        frame_with("d", &images.url("c.png?sig=short-lived")),
        frame_with("e", "http://169.254.169.254/latest/meta-data/"),
    ];
    upload(&server, &admin, "mirror", &frames);
    // The upload mirrors in the background, then checks the URLs against the copies.
    let at_upload = report_after_upload(&server, &admin, "mirror");
    assert_eq!(at_upload["counts"]["reachable"], 3, "{at_upload}");
    let report: Value = server.post_json(&admin, &format!("{d}/mirror"), &json!({})).json().unwrap();
    assert_eq!(report["assets"], 4, "{report}");
    assert_eq!(report["already_mirrored"], 3, "{report}");
    assert_eq!(report["failed_count"], 1, "the metadata URL is refused on every run: {report}");
    assert!(report["failed"][0]["error"].as_str().unwrap().contains("link-local"), "{report}");
    assert_eq!(images.count(), 3, "exactly one request per asset");
    // Each run is a job in the dataset status: the upload's and this one, finished, with a summary.
    let status: Value = server.get(&admin, &format!("{d}/status")).json().unwrap();
    let runs: Vec<&Value> = status["jobs"].as_array().unwrap().iter().filter(|j| j["kind"] == "mirror").collect();
    assert_eq!(runs.len(), 2, "{status}");
    let last = runs.iter().find(|j| j["id"] == report["job"]).expect("the route's job is listed");
    assert_eq!((&last["state"], &last["progress"], &last["total"]), (&json!("done"), &json!(4), &json!(4)), "{last}");
    assert_eq!(last["message"], "0 fetched, 3 already mirrored, 1 failed", "{last}");
    assert!(
        images.seen.lock().unwrap().iter().all(|head| head.to_ascii_lowercase().contains("x-shared-secret: s3cr3t"))
    );

    // New frames are mirrored by their upload; known URLs are not fetched again.
    upload(
        &server,
        &admin,
        "mirror",
        &[frame_with("f", &images.url("a.png")), frame_with("g", &images.url("new.png"))],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while images.count() < 4 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let again: Value = server.post_json(&admin, &format!("{d}/mirror"), &json!({})).json().unwrap();
    assert_eq!(again["already_mirrored"], 4, "{again}");
    assert_eq!(images.count(), 4, "one more request, for the one new URL");

    // Served from the store through signed URLs, without another request upstream.
    let urls = json!({"urls": [images.url("a.png"), images.url("c.png?sig=short-lived"), images.url("never.png")]});
    let resolved: Value = server.post_json(&admin, "/api/projects/mirror/assets/resolve", &urls).json().unwrap();
    let client = reqwest::blocking::Client::new();
    for (i, name) in ["/a.png", "/c.png?sig=short-lived"].iter().enumerate() {
        let entry = &resolved["urls"][i];
        assert_eq!(entry["via"], "mirror", "{entry}");
        let response = client.get(entry["load_url"].as_str().unwrap()).send().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/png");
        assert_eq!(response.bytes().unwrap().to_vec(), image_bytes(name));
    }
    assert!(resolved["urls"][2]["load_url"].is_null());
    assert_eq!(images.count(), 4);

    let check: Value = server.post_json(&admin, &format!("{d}/url_check"), &json!({})).json().unwrap();
    assert_eq!(check["counts"]["reachable"], 4, "{check}");
    assert_eq!(check["counts"]["browser_only"], 1, "{check}");
    assert_eq!(images.count(), 4, "mirrored URLs are checked in the store");
}

#[test]
fn hosted_files_need_a_valid_unexpired_signature() {
    let (server, admin) = Server::start(&[]);
    create(&server, &admin, "host", "hosted");
    let client = reqwest::blocking::Client::new();
    let signed: Value = server
        .post_json(&admin, "/api/projects/host/assets/sign", &json!({"keys": ["cats/a_b.png"], "put": true}))
        .json()
        .unwrap();
    let entry = &signed["urls"][0];
    assert_eq!(entry["data_url"], "hosted:cats/a_b.png");
    let put_url = entry["put_url"].as_str().unwrap();
    let get_url = entry["get_url"].as_str().unwrap();
    let bytes: Vec<u8> = (0..=255u8).collect();

    let r = client.put(put_url).body(bytes.clone()).send().unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().unwrap());
    let r = client.get(get_url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r.headers()["cache-control"].to_str().unwrap().starts_with("private, max-age="));
    assert_eq!(r.bytes().unwrap().to_vec(), bytes);
    let r = client.get(get_url).header("range", "bytes=16-31").send().unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().to_vec(), (16..32u8).collect::<Vec<_>>());
    let r = client.get(get_url).header("range", "bytes=999-").send().unwrap();
    assert_eq!(r.status(), 416);
    let preflight = client
        .request(reqwest::Method::OPTIONS, put_url)
        .header("origin", "http://ui.example")
        .header("access-control-request-method", "PUT")
        .send()
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(preflight.headers()["access-control-allow-methods"].to_str().unwrap().contains("PUT"));

    // Tampering with the signature, the path, the expiry or the method: 403, and not a byte.
    let tampered_sig = format!("{}{}", &get_url[..get_url.len() - 1], if get_url.ends_with('0') { '1' } else { '0' });
    let other_path = get_url.replace("cats/a_b.png", "cats/b.png");
    let later = {
        let expires: u64 = get_url.split("expires=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
        get_url.replace(&format!("expires={expires}"), &format!("expires={}", expires + 3600))
    };
    let unsigned = get_url.split('?').next().unwrap().to_string();
    for url in [tampered_sig, other_path, later, unsigned] {
        let r = client.get(&url).send().unwrap();
        assert_eq!(r.status(), 403, "{url}");
        assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "forbidden");
    }
    assert_eq!(client.put(get_url).body("overwrite").send().unwrap().status(), 403, "a GET URL does not PUT");

    let short: Value = server
        .post_json(&admin, "/api/projects/host/assets/sign", &json!({"keys": ["cats/a_b.png"], "expires_in": 1}))
        .json()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let r = client.get(short["urls"][0]["get_url"].as_str().unwrap()).send().unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("expired"));

    // Frames refer to hosted files by key; the URL check finds them in the store.
    upload(&server, &admin, "host", &[frame_with("a", "hosted:cats/a_b.png"), frame_with("b", "hosted:nope.png")]);
    let check: Value = server.post_json(&admin, "/api/projects/host/datasets/d/url_check", &json!({})).json().unwrap();
    assert_eq!(check["counts"]["reachable"], 1, "{check}");
    assert_eq!(check["counts"]["invalid"], 1, "{check}");
    expect_error(server.post_json(&admin, "/api/projects/host/assets/sign", &json!({"keys": ["../x"]})), 400);

    // Deleting the project ends its URLs at once (they are bound to it, not to its name), and
    // deletes its files.
    let r = server.request(reqwest::Method::DELETE, &admin, "/api/projects/host").send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(client.get(get_url).send().unwrap().status(), 403);
    assert!(!server.dir.join("assets").join("1").exists(), "the project's directory is gone");
}

#[test]
fn url_checks_report_what_milkglass_and_the_browser_can_load() {
    let images = image_server();
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    create(&server, &admin, "pub", "public");
    upload(
        &server,
        &admin,
        "pub",
        &[
            frame_with("a", &images.url("ok.png")),
            frame_with("b", &images.url("missing.png")),
            frame_with("c", "s3://bucket/c.png"),
            frame_with("d", "http://10.0.0.1/d.png"),
            frame_with("e", "http://nas/e.png"),
        ],
    );
    // Checked at upload time, in the background...
    let at_upload = report_after_upload(&server, &admin, "pub");
    assert_eq!(images.count(), 2, "one probe each for the two loopback URLs");
    // ...and again on request.
    let report: Value = server.post_json(&admin, "/api/projects/pub/datasets/d/url_check", &json!({})).json().unwrap();
    assert_eq!(report["counts"], at_upload["counts"]);
    let counts = &report["counts"];
    assert_eq!(counts["reachable"], 1, "{report}");
    assert_eq!(counts["invalid"], 1, "{report}");
    assert_eq!(counts["bucket_path"], 1, "{report}");
    assert_eq!(counts["browser_only"], 2, "{report}");
    assert_eq!(images.count(), 4);
    // A public project has nothing to mirror or host.
    expect_error(server.post_json(&admin, "/api/projects/pub/datasets/d/mirror", &json!({})), 409);
    expect_error(server.post_json(&admin, "/api/projects/pub/assets/sign", &json!({"keys": ["a.png"]})), 409);
}

#[test]
fn the_fetcher_refuses_loopback_unless_the_admin_allows_it() {
    let images = image_server();
    let (server, admin) = Server::start(&[]);
    create(&server, &admin, "m", "mirrored");
    upload(&server, &admin, "m", &[frame_with("a", &images.url("a.png"))]);
    report_after_upload(&server, &admin, "m");
    let report: Value = server.post_json(&admin, "/api/projects/m/datasets/d/mirror", &json!({})).json().unwrap();
    assert_eq!(report["failed_count"], 1, "{report}");
    assert!(report["failed"][0]["error"].as_str().unwrap().contains("loopback"), "{report}");
    assert_eq!(images.count(), 0);
}

/// Whether any file in the data directory holds `needle` as bytes.
fn data_dir_holds(dir: &std::path::Path, needle: &str) -> bool {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            return true;
        }
    }
    false
}

#[test]
fn fetch_secrets_are_sealed_at_rest_and_a_rotated_key_keeps_them_working() {
    let images = image_server();
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    create(&server, &admin, "mirror", "mirrored");
    let (header_secret, s3_secret) = ("hdr-5ecret-9f2c41", "s3-5ecret-77ab03");
    let settings = json!({
        "headers": {"X-Shared-Secret": header_secret},
        "s3": {"region": "eu-west-1", "access_key_id": "AKIAEXAMPLE", "secret_access_key": s3_secret},
    });
    let r = server.request(reqwest::Method::PUT, &admin, "/api/projects/mirror/fetch").json(&settings).send().unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    // The catalog, its write-ahead log and every other file, read directly: no secret in clear.
    assert!(!data_dir_holds(&server.dir, header_secret) && !data_dir_holds(&server.dir, s3_secret));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(server.dir.join("catalog-secrets.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Rotated while the server runs: the server opens them under the new key.
    let said = cli(&["secrets", "rotate", "--data-dir", server.dir.to_str().unwrap()]);
    assert!(said.starts_with("sealed 2 stored secrets under the new key"), "{said}");
    assert!(server.dir.join("catalog-secrets.key.previous").exists());
    upload(&server, &admin, "mirror", &[frame_with("a", &images.url("a.png"))]);
    report_after_upload(&server, &admin, "mirror");
    let seen = images.seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the mirror fetched the image");
    let expected = format!("x-shared-secret: {header_secret}");
    assert!(seen.iter().all(|head| head.to_ascii_lowercase().contains(&expected)), "{seen:?}");
    // A second rotation drops the first key; the settings still read back (write-only values).
    cli(&["secrets", "rotate", "--data-dir", server.dir.to_str().unwrap()]);
    let shown: Value = server.get(&admin, "/api/projects/mirror/fetch").json().unwrap();
    assert_eq!(shown["headers"]["X-Shared-Secret"], "(set)", "{shown}");
    assert_eq!(shown["s3"]["secret_access_key"], "(set)", "{shown}");
    assert!(!data_dir_holds(&server.dir, header_secret) && !data_dir_holds(&server.dir, s3_secret));
}

/// The URL check after an upload is coalesced: uploads that land while one check runs ask for one
/// more check, not one each. Checked with a slow image server, so that twenty uploads land during
/// the first check: one check per upload would probe 1 + 2 + ... + 20 = 210 URLs.
#[test]
fn a_burst_of_uploads_costs_one_more_url_check_not_one_each() {
    let images = ImageServer::start(|path| {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        Some(image_bytes(path))
    });
    let (server, admin) = Server::start(&["--fetch-allow", "127.0.0.1"]);
    create(&server, &admin, "burst", "public");
    for i in 0..20 {
        upload(&server, &admin, "burst", &[frame_with(&format!("f{i}"), &images.url(&format!("f{i}.png")))]);
    }
    // The last check reports all twenty frames once it is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let r = server.get(&admin, "/api/projects/burst/datasets/d/url_report");
        if r.status() == 200 && r.json::<Value>().unwrap()["counts"]["reachable"] == 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no report of the twenty frames");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    let probes = images.count();
    assert!((20..=60).contains(&probes), "{probes} probes for 20 uploads (210 if each upload had its own check)");
}
