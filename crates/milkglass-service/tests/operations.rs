//! The dataset face's operations on a temporary store, with no server: catalog access,
//! uploads, insights and the raw-data boundary, as every front end gets them.

use milkglass_core::{DatasetSpec, ProjectRole, ProjectSpec, Role};
use milkglass_service::ingest::{self, Format, UploadTarget};
use milkglass_service::insights::{self, Layout, PointAttribute, SimilarRequest};
use milkglass_service::raw::signer::{self, SignRequest, SignedMethod};
use milkglass_service::raw::{self, FetchSettingsBody};
use milkglass_service::{ErrorKind, ServiceConfig, Services, datasets};
use milkglass_store::{Space, Store, UploadKind, User};
use serde_json::json;
use std::sync::Arc;

struct Fixture {
    _dir: tempfile::TempDir,
    services: Arc<Services>,
    owner: User,
    viewer: User,
    stranger: User,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (name, role) in [("olivia", Role::Owner), ("vic", Role::Scientist), ("sid", Role::Scientist)] {
        store.add_user(name, role).unwrap();
    }
    let [owner, viewer, stranger] = ["olivia", "vic", "sid"].map(|n| store.user_by_name(n).unwrap());
    let services = Arc::new(Services::new(store, ServiceConfig::default()).unwrap());
    Fixture { _dir: dir, services, owner, viewer, stranger }
}

fn project(f: &Fixture, name: &str, mode: &str) {
    let spec: ProjectSpec =
        serde_json::from_value(json!({"name": name, "access_mode": mode, "classes": [{"id": 0, "name": "cat"}]}))
            .unwrap();
    datasets::create_project(&f.services, &f.owner, &spec).unwrap();
    datasets::set_member(&f.services, &f.owner, name, "vic", ProjectRole::Viewer).unwrap();
    let dataset: DatasetSpec = serde_json::from_value(json!({"name": "d"})).unwrap();
    datasets::create_dataset(&f.services, &f.owner, name, &dataset).unwrap();
}

fn upload(f: &Fixture, project: &str, kind: UploadKind, lines: &[serde_json::Value]) -> ingest::UploadSummary {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let target = UploadTarget { project, dataset: "d", inference_set: None, kind };
    ingest::upload(&f.services, &f.owner, target, Format::JsonLines, body.as_bytes()).unwrap()
}

#[test]
fn catalog_operations_check_the_project_role() {
    let f = fixture();
    project(&f, "p", "anonymous");
    assert_eq!(datasets::list_datasets(&f.services, &f.viewer, "p").unwrap().len(), 1);
    let change = datasets::delete_dataset(&f.services, &f.viewer, "p", "d").unwrap_err();
    assert_eq!(change.kind, ErrorKind::Forbidden);
    // A stranger is told the same about a project that exists and one that does not.
    let hidden = datasets::list_datasets(&f.services, &f.stranger, "p").unwrap_err();
    let missing = datasets::list_datasets(&f.services, &f.stranger, "q").unwrap_err();
    assert_eq!((hidden.kind, missing.kind), (ErrorKind::Forbidden, ErrorKind::Forbidden));
    assert_eq!(hidden.message.replace("\"p\"", "\"q\""), missing.message);
    let creator = datasets::create_project(
        &f.services,
        &f.viewer,
        &serde_json::from_value(json!({"name": "mine", "access_mode": "anonymous"})).unwrap(),
    )
    .unwrap_err();
    assert_eq!(creator.kind, ErrorKind::Forbidden);
}

#[test]
fn uploads_commit_batches_and_name_the_bad_line() {
    let f = fixture();
    project(&f, "p", "anonymous");
    let frames: Vec<_> = (0..3)
        .map(|i| json!({"frame_id": format!("f{i}"), "sensors": [{"kind": "image", "url": format!("https://x/{i}.png")}]}))
        .collect();
    let summary = upload(&f, "p", UploadKind::Frames, &frames);
    assert_eq!((summary.records, summary.version), (3, Some(1)));

    let body = format!("{}\n{{\"frame_id\": 5}}\n", frames[0]);
    let target = UploadTarget { project: "p", dataset: "d", inference_set: None, kind: UploadKind::Frames };
    let bad = ingest::upload(&f.services, &f.owner, target, Format::JsonLines, body.as_bytes()).unwrap_err();
    assert_eq!(bad.kind, ErrorKind::Invalid);
    assert!(bad.message.starts_with("line 2:"), "{}", bad.message);
    assert!(bad.details.unwrap()["committed"].is_object());

    let target = UploadTarget { project: "p", dataset: "d", inference_set: None, kind: UploadKind::Frames };
    let refused = ingest::upload(&f.services, &f.viewer, target, Format::JsonLines, body.as_bytes()).unwrap_err();
    assert_eq!(refused.kind, ErrorKind::Forbidden);
    let unsupported = Format::from_content_type(Some("text/csv")).unwrap_err();
    assert_eq!(unsupported.kind, ErrorKind::Unsupported);
}

#[test]
fn insights_answer_typed_values() {
    let f = fixture();
    project(&f, "p", "anonymous");
    let frames: Vec<_> =
        (0..20).map(|i| json!({"frame_id": format!("f{i:02}"), "sensors": [], "metadata": {"split": i % 2}})).collect();
    upload(&f, "p", UploadKind::Frames, &frames);
    let embeddings: Vec<_> = (0..20)
        .map(|i| json!({"frame_id": format!("f{i:02}"), "embedding": [1.0, i as f32, (i * i) as f32 / 10.0]}))
        .collect();
    upload(&f, "p", UploadKind::Embeddings, &embeddings);

    let request: SimilarRequest = serde_json::from_value(json!({"frame_id": "f05", "k": 2, "metric": "l2"})).unwrap();
    let similar = insights::similar(&f.services, &f.viewer, "p", "d", &request).unwrap();
    let ids: Vec<&str> = similar.neighbors.iter().map(|n| n.frame_id.as_str()).collect();
    assert_eq!(ids, ["f04", "f06"]);
    let answer = serde_json::to_value(&similar).unwrap();
    assert_eq!((answer["space"].as_str(), answer["method"].as_str()), (Some("frames"), Some("exact")));
    assert!(answer["neighbors"][0].get("label_id").is_none(), "frames carry no label id");

    let bad: Result<SimilarRequest, _> = serde_json::from_value(json!({"frame_id": "f05", "space": "pixels"}));
    assert!(bad.is_err(), "an unknown space is refused when parsed");
    let map = || insights::embedding_map(&f.services, &f.viewer, "p", "d", Space::Frames, Layout::Pca).unwrap();
    let (points, bytes) = map();
    assert_eq!((points, bytes.len()), (20, 20 * 8));
    assert_eq!(map().1, bytes, "the version's map is kept");
    let attributes = [PointAttribute::Meta("split".into()), PointAttribute::LabelCount, PointAttribute::Class];
    let points = insights::map_ids(&f.services, &f.viewer, "p", "d", Space::Frames, &attributes, None).unwrap();
    assert_eq!(points.ids.len(), 20);
    let split = &points.attributes["meta.split"];
    for (id, value) in points.ids.iter().zip(split) {
        let n: i64 = id[1..].parse().unwrap();
        assert_eq!(value, &json!(n % 2), "{id}: attributes are aligned with the points");
    }
    assert!(points.attributes["class"].iter().all(serde_json::Value::is_null), "no labels, no class");
    assert!(PointAttribute::parse("meta.bad key").is_err());
    // A new version's map has the new point, never the kept one.
    upload(&f, "p", UploadKind::Frames, &[json!({"frame_id": "f20", "sensors": [], "embedding": [1.0, 20.0, 40.0]})]);
    assert_eq!(map().0, 21);
    let hidden = insights::similar(&f.services, &f.stranger, "p", "d", &request).unwrap_err();
    assert_eq!(hidden.kind, ErrorKind::Forbidden);
}

#[tokio::test]
async fn signed_urls_die_with_their_project() {
    let f = fixture();
    project(&f, "h", "hosted");
    let sign = SignRequest { keys: vec!["cats/a.png".into()], expires_in: None, put: true };
    let urls = signer::sign(&f.services, &f.owner, "h", "http://x", &sign).unwrap();
    let split = |url: &str| {
        let (path, query) = url.trim_start_matches("http://x").split_once('?').unwrap();
        (path.to_string(), query.to_string())
    };
    let (put_path, put_query) = split(urls[0].put_url.as_deref().unwrap());
    let asset = signer::authorize(&f.services, SignedMethod::Put, &put_path, &put_query).await.unwrap();
    let body = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"png"))]);
    assert_eq!(signer::store(&f.services, &asset, body).await.unwrap().bytes, 3);
    // The GET URL does not sign a PUT, and a tampered expiry fails.
    let (get_path, get_query) = split(&urls[0].get_url);
    assert!(signer::authorize(&f.services, SignedMethod::Put, &get_path, &get_query).await.is_err());
    let tampered = get_query.replace("expires=", "expires=9");
    assert!(signer::authorize(&f.services, SignedMethod::Get, &get_path, &tampered).await.is_err());
    signer::authorize(&f.services, SignedMethod::Get, &get_path, &get_query).await.unwrap();

    // Deleted and re-created under the same name: the old URLs are refused like forged ones.
    datasets::delete_project(&f.services, &f.owner, "h").await.unwrap();
    project(&f, "h", "hosted");
    for (method, path, query) in
        [(SignedMethod::Get, &get_path, &get_query), (SignedMethod::Put, &put_path, &put_query)]
    {
        let stale = signer::authorize(&f.services, method, path, query).await.err().unwrap();
        assert_eq!(stale.kind, ErrorKind::Forbidden, "{method:?}");
    }
}

#[test]
fn fetch_settings_refuse_what_the_fetcher_would() {
    let f = fixture();
    project(&f, "m", "mirrored");
    for endpoint in [
        "http://127.0.0.1/sign",
        "http://2130706433/sign",
        "http://[::ffff:127.0.0.1]/sign",
        "http://169.254.169.254/latest",
        "http://10.1.2.3/",
        "http://localhost:8080/",
        "http://signer.internal/",
        "ftp://example.com/",
    ] {
        let body = FetchSettingsBody { headers: Default::default(), signing_endpoint: Some(endpoint.into()), s3: None };
        let refused = raw::set_fetch_settings(&f.services, &f.owner, "m", body).unwrap_err();
        assert_eq!(
            (refused.kind, refused.field.as_deref()),
            (ErrorKind::Invalid, Some("signing_endpoint")),
            "{endpoint}"
        );
    }
    let body = FetchSettingsBody {
        headers: Default::default(),
        signing_endpoint: Some("https://sign.example.com/".into()),
        s3: None,
    };
    let saved = raw::set_fetch_settings(&f.services, &f.owner, "m", body).unwrap();
    assert_eq!(saved.signing_endpoint.as_deref(), Some("https://sign.example.com/"));
}

#[tokio::test]
async fn anonymous_projects_never_reach_the_fetcher() {
    let f = fixture();
    project(&f, "anon", "anonymous");
    let frames = [json!({"frame_id": "a", "sensors": [{"kind": "image", "url": "http://10.0.0.1/a.png"}]})];
    upload(&f, "anon", UploadKind::Frames, &frames);
    let mirror = raw::mirror::mirror(&f.services, &f.owner, "anon", "d").await.unwrap_err();
    assert_eq!((mirror.kind, mirror.code), (ErrorKind::Conflict, "anonymous_project"));
    let request = serde_json::from_value(json!({})).unwrap();
    let embed = milkglass_service::embedding::start(&f.services, &f.owner, "anon", "d", request).await.unwrap_err();
    assert_eq!(embed.code, "anonymous_project");
    // The URL check judges without loading anything: the private address is the browser's only.
    let report = raw::url_check::url_check(&f.services, &f.owner, "anon", "d").await.unwrap();
    assert_eq!(report["counts"]["browser_only"], 1, "{report}");
    assert_eq!(raw::url_check::url_report(&f.services, &f.viewer, "anon", "d").unwrap()["urls"], 1);
    let viewer = raw::url_check::url_check(&f.services, &f.viewer, "anon", "d").await.unwrap_err();
    assert_eq!(viewer.kind, ErrorKind::Forbidden);
}
