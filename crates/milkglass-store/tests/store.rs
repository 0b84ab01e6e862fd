//! The store through its public API: batches, versions, vectors and DataFusion scans.

use datafusion::prelude::SessionContext;
use milkglass_core::{ClassEntry, ClassMap, DatasetSpec, Frame, ProjectSpec, Role};
use milkglass_store::{DatasetInfo, FrameFilter, Space, Store, StoreError, UploadKind};

fn frame(id: &str, labels: &[(&str, &str)], embedding: Option<Vec<f32>>) -> Frame {
    let labels: Vec<serde_json::Value> = labels
        .iter()
        .map(|(label_id, class)| {
            serde_json::json!({"label_id": label_id, "class": class,
                               "geometry": {"kind": "box2d", "top": 1, "left": 2, "width": 3, "height": 4},
                               "embedding": [1.0, 0.0]})
        })
        .collect();
    let mut f: Frame = serde_json::from_value(serde_json::json!({
        "frame_id": id,
        "sensors": [{"kind": "image", "url": format!("https://x.example/{id}.png")}],
        "metadata": {"n": id.len()},
        "labels": labels,
    }))
    .unwrap();
    f.embedding = embedding;
    f
}

fn setup() -> (tempfile::TempDir, Store, DatasetInfo) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.add_user("admin", Role::Admin).unwrap();
    let admin = store.user_by_name("admin").unwrap();
    let classes = ClassMap(vec![
        ClassEntry { id: 0, name: "cat".into(), color: [0, 0, 0], train_name: None, category: None },
        ClassEntry { id: 7, name: "dog".into(), color: [0, 0, 0], train_name: None, category: None },
    ]);
    store
        .create_project(
            &ProjectSpec { name: "p".into(), classes, access_mode: Default::default(), metadata: Default::default() },
            &admin,
        )
        .unwrap();
    let dataset = store.create_dataset("p", &DatasetSpec { name: "d".into(), ..Default::default() }).unwrap();
    (dir, store, dataset)
}

#[test]
fn a_refused_batch_writes_nothing_and_earlier_batches_stay() {
    let (_dir, store, dataset) = setup();
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    store.write_frames(&mut upload, &[frame("a", &[("a1", "cat")], Some(vec![1.0, 2.0, 3.0]))]).unwrap();
    let bad = [frame("b", &[("b1", "cat")], Some(vec![1.0, 2.0, 3.0])), frame("c", &[("c1", "horse")], None)];
    let err = store.write_frames(&mut upload, &bad).unwrap_err();
    match err {
        StoreError::Invalid(e) => assert_eq!(e.field, "[2].labels[0].class"),
        other => panic!("unexpected {other}"),
    }
    let page = store.list_frames("p", "d", &FrameFilter { limit: 10, ..Default::default() }).unwrap();
    let ids: Vec<&str> = page.frames.iter().map(|f| f.frame_id.as_str()).collect();
    assert_eq!(ids, ["a"]);
    // The refused batch's vectors were never referenced; the next ones still line up.
    store.write_frames(&mut upload, &[frame("d", &[], Some(vec![7.0, 8.0, 9.0]))]).unwrap();
    store.finish_upload(&upload, None).unwrap();
    let dataset = store.dataset("p", "d").unwrap();
    let vectors = store.embedding_file(&dataset, Space::Frames).unwrap().expect("frame vectors");
    assert_eq!(vectors.dim(), 3);
    let last = vectors.len() - 1;
    assert_eq!(vectors.get(last).unwrap().unwrap(), vec![7.0, 8.0, 9.0]);
}

#[test]
fn a_label_id_cannot_belong_to_two_frames() {
    let (_dir, store, dataset) = setup();
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    store.write_frames(&mut upload, &[frame("a", &[("same", "cat")], None)]).unwrap();
    let err = store.write_frames(&mut upload, &[frame("b", &[("same", "dog")], None)]).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(ref e) if e.field == "[1].labels[0].label_id"), "{err}");
    assert_eq!(store.dataset_status("p", "d").unwrap().frames, 1);
}

/// A snapshot's tables in a plain DataFusion session, by their names.
fn session(snapshot: &milkglass_store::DatasetSnapshot) -> SessionContext {
    let ctx = SessionContext::new();
    for table in &snapshot.tables {
        let (visible, _) = table.providers().unwrap();
        ctx.register_table(table.name.as_str(), visible).unwrap();
    }
    ctx
}

async fn sql_text(ctx: &SessionContext, sql: &str) -> String {
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string()
}

#[tokio::test]
async fn a_snapshot_answers_sql_over_frames_labels_and_typed_metadata() {
    let (_dir, store, dataset) = setup();
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    let frames: Vec<Frame> = (0..20_000)
        .map(|i| {
            let id = format!("f{i:05}");
            let class = if i % 4 == 0 { "dog" } else { "cat" };
            frame(&id, &[(&format!("{id}_a"), class), (&format!("{id}_b"), "cat")], None)
        })
        .collect();
    for chunk in frames.chunks(5000) {
        store.write_frames(&mut upload, chunk).unwrap();
    }
    store.finish_upload(&upload, None).unwrap();
    let dataset = store.dataset("p", "d").unwrap();
    let snapshot = store.dataset_snapshot(&dataset, dataset.version, None).unwrap();
    let ctx = session(&snapshot);
    let text =
        sql_text(&ctx, "SELECT class, count(*) AS n, avg(area) AS a FROM labels GROUP BY class ORDER BY class").await;
    assert!(text.contains("| cat   | 35000 | 12.0 |"), "{text}");
    assert!(text.contains("| dog   | 5000  | 12.0 |"), "{text}");
    // Metadata keys are typed columns: `n` is the frame id's length, an integer.
    let text = sql_text(&ctx, "SELECT sum(n) AS s, count(*) AS c FROM frames WHERE label_count = 2").await;
    assert!(text.contains("| 120000 | 20000 |"), "{text}");
    let text = sql_text(&ctx, "SELECT sensor_kinds, urls[1] AS u FROM frames WHERE frame_id = 'f00003'").await;
    assert!(text.contains("| image        | https://x.example/f00003.png |"), "{text}");
    // Each table counts frames: 20000 units, whichever table.
    assert!(snapshot.tables.iter().all(|t| t.units == 20_000), "{:?}", snapshot.tables);
    // The second call reads the manifest instead of writing again.
    let again = store.dataset_snapshot(&dataset, dataset.version, None).unwrap();
    assert_eq!(again.tables[0].file(), snapshot.tables[0].file());
}

#[tokio::test]
async fn each_version_has_its_own_snapshot_and_units_follow_a_metadata_key() {
    let (_dir, store, dataset) = setup();
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    let mut first: Vec<Frame> = (0..10).map(|i| frame(&format!("a{i}"), &[(&format!("a{i}l"), "cat")], None)).collect();
    for (i, f) in first.iter_mut().enumerate() {
        f.metadata.insert("driver".into(), milkglass_core::MetaValue::String(format!("d{}", i % 3)));
    }
    store.write_frames(&mut upload, &first).unwrap();
    store.finish_upload(&upload, None).unwrap();
    let mut upload = store.begin_upload(&store.dataset("p", "d").unwrap(), UploadKind::Frames, None).unwrap();
    store.write_frames(&mut upload, &[frame("b0", &[("b0l", "dog")], None)]).unwrap();
    store.finish_upload(&upload, None).unwrap();
    let dataset = store.dataset("p", "d").unwrap();
    assert_eq!(dataset.version, 2);
    let v1 = store.dataset_snapshot(&dataset, 1, None).unwrap();
    let v2 = store.dataset_snapshot(&dataset, 2, None).unwrap();
    assert_eq!(sql_text(&session(&v1), "SELECT count(*) AS n FROM labels").await.matches("| 10 |").count(), 1);
    assert_eq!(sql_text(&session(&v2), "SELECT count(*) AS n FROM labels").await.matches("| 11 |").count(), 1);
    // Three drivers, and b0 (no driver) is one more unit.
    let by_driver = store.dataset_snapshot(&dataset, 2, Some("driver")).unwrap();
    assert!(by_driver.tables.iter().all(|t| t.units == 4), "{:?}", by_driver.tables);
    let err = store.dataset_snapshot(&dataset, 3, None).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(ref e) if e.field == "version"), "{err}");
}

#[test]
fn one_frame_with_labels_reads_in_well_under_a_millisecond() {
    let (_dir, store, dataset) = setup();
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    let frames: Vec<Frame> = (0..5000)
        .map(|i| frame(&format!("f{i}"), &[(&format!("l{i}a"), "cat"), (&format!("l{i}b"), "dog")], None))
        .collect();
    store.write_frames(&mut upload, &frames).unwrap();
    // Not a benchmark (docs/BENCHMARKS.md has those): a guard against losing the index.
    let start = std::time::Instant::now();
    for i in (0..5000).step_by(50) {
        let f = store.frame(&dataset, &format!("f{i}"), None).unwrap();
        assert_eq!(f.labels.len(), 2);
    }
    let per_read = start.elapsed() / 100;
    assert!(per_read < std::time::Duration::from_millis(5), "{per_read:?} per frame read");
}

#[test]
fn a_deleted_dataset_takes_its_saved_indexes_along() {
    let (_dir, store, dataset) = setup();
    let index_dir = store.index_dir(dataset.id);
    std::fs::create_dir_all(&index_dir).unwrap();
    std::fs::write(index_dir.join("frames-cosine-v1.hnsw"), b"an index").unwrap();
    store.delete_dataset("p", "d").unwrap();
    assert!(!index_dir.exists(), "{} outlived its dataset", index_dir.display());

    // The same for every dataset of a deleted project.
    let again = store.create_dataset("p", &DatasetSpec { name: "d2".into(), ..Default::default() }).unwrap();
    let index_dir = store.index_dir(again.id);
    std::fs::create_dir_all(&index_dir).unwrap();
    store.delete_project("p").unwrap();
    assert!(!index_dir.exists());
}

#[test]
fn status_counts_are_kept_per_version_and_equal_a_fresh_count() {
    let (_dir, store, dataset) = setup();
    let write = |frames: &[Frame]| {
        let dataset = store.dataset("p", "d").unwrap();
        let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
        store.write_frames(&mut upload, frames).unwrap();
        store.finish_upload(&upload, None).unwrap();
    };
    write(&[frame("a", &[("a1", "cat"), ("a2", "dog")], Some(vec![1.0, 2.0])), frame("b", &[], None)]);
    let first = store.dataset_status("p", "d").unwrap();
    assert_eq!((first.frames, first.labels, first.frame_embeddings, first.label_embeddings), (2, 2, 1, 2));
    // Read again from the stored counts: the same numbers.
    let again = store.dataset_status("p", "d").unwrap();
    assert_eq!((again.frames, again.labels), (first.frames, first.labels));
    // A new version is counted anew: b replaced with a label, c added.
    write(&[frame("b", &[("b1", "cat")], None), frame("c", &[], None)]);
    let second = store.dataset_status("p", "d").unwrap();
    assert_eq!((second.dataset.version, second.frames, second.labels), (2, 3, 3));
    // An upload's batches share a version: each one committed is counted, open upload or not.
    let mut open = store.begin_upload(&store.dataset("p", "d").unwrap(), UploadKind::Frames, None).unwrap();
    store.write_frames(&mut open, &[frame("e", &[], None)]).unwrap();
    assert_eq!(store.dataset_status("p", "d").unwrap().frames, 4);
    store.write_frames(&mut open, &[frame("f", &[], None)]).unwrap();
    assert_eq!(store.dataset_status("p", "d").unwrap().frames, 5);
    store.finish_upload(&open, None).unwrap();
    // Inferences deleted with their set change the count without a new version.
    let set = store.create_inference_set(&dataset, &DatasetSpec { name: "m".into(), ..Default::default() }).unwrap();
    let dataset = store.dataset("p", "d").unwrap();
    let mut upload = store.begin_upload(&dataset, UploadKind::Inferences, Some(&set)).unwrap();
    let inference: milkglass_core::Label = serde_json::from_value(serde_json::json!({
        "label_id": "i1", "frame_id": "a", "class": "cat", "confidence": 0.9,
        "geometry": {"kind": "box2d", "top": 1, "left": 2, "width": 3, "height": 4}}))
    .unwrap();
    store.write_labels(&mut upload, &[inference]).unwrap();
    store.finish_upload(&upload, None).unwrap();
    assert_eq!(store.dataset_status("p", "d").unwrap().inferences, 1);
    store.delete_inference_set(&store.dataset("p", "d").unwrap(), "m").unwrap();
    assert_eq!(store.dataset_status("p", "d").unwrap().inferences, 0);
}

/// A table imported with a cluster column is stored sorted by it (a DP table by its privacy
/// unit, so that each person's rows lie together), with every row kept; without one the
/// file's own order is kept.
#[tokio::test]
async fn an_imported_table_is_stored_sorted_by_its_cluster_column() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let csv = dir.path().join("people.csv");
    let mut text = String::from("person,value\n");
    let persons: Vec<i64> = (0..500).map(|i| (i * 7919) % 113).collect();
    for (i, p) in persons.iter().enumerate() {
        text.push_str(&format!("{p},{i}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let read = |path: std::path::PathBuf| async move {
        let ctx = SessionContext::new();
        let frame = ctx.read_parquet(path.to_string_lossy().as_ref(), Default::default()).await.unwrap();
        let batches = frame.collect().await.unwrap();
        batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name("person").unwrap();
                let c = c.as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
                c.values().to_vec()
            })
            .collect::<Vec<i64>>()
    };
    let clustered =
        store.import_table_file("clustered", &csv, milkglass_store::TableFormat::Csv, Some("person")).await.unwrap();
    let stored = read(clustered.file.clone()).await;
    let mut sorted = persons.clone();
    sorted.sort();
    assert_eq!(stored, sorted);
    let plain = store.import_table_file("plain", &csv, milkglass_store::TableFormat::Csv, None).await.unwrap();
    assert_eq!(read(plain.file.clone()).await, persons);
    // A cluster column the file lacks changes nothing (the policy check reports it).
    let missing = store.import_table_file("missing", &csv, milkglass_store::TableFormat::Csv, Some("nobody")).await;
    assert_eq!(read(missing.unwrap().file).await, persons);
}
