//! The frame index answers every filter exactly as the SQL path does: generated frames with
//! metadata of every type (missing keys, mixed types, timestamps, lists), labels of two
//! classes and two sensor kinds; hundreds of filters, pages and cursors, both ways.

use milkglass_core::{ClassEntry, ClassMap, DatasetSpec, Frame, ProjectSpec, Role, SensorKind};
use milkglass_store::{FrameFilter, MetaOp, MetaPredicate, Store, UploadKind};
use serde_json::{Value, json};

fn frame(i: usize) -> Frame {
    let mut metadata = serde_json::Map::new();
    metadata.insert("n".into(), json!(i % 17));
    metadata.insert("x".into(), json!(((i * 37) % 100) as f64 / 10.0));
    if !i.is_multiple_of(5) {
        metadata.insert("s".into(), json!(["a", "b", "B", "ab", "10"][i % 5]));
    }
    metadata.insert("b".into(), json!(i.is_multiple_of(2)));
    if i.is_multiple_of(3) {
        metadata.insert("t".into(), json!({"timestamp": format!("2024-05-{:02}T08:00:00Z", 1 + i % 28)}));
    }
    // A key holding numbers on some frames and text on others.
    metadata.insert("mixed".into(), if i.is_multiple_of(4) { json!(i % 9) } else { json!(format!("{}", i % 7)) });
    metadata.insert("tags".into(), json!(["red", "green", "blue"].iter().take(i % 4).collect::<Vec<_>>()));
    let labels: Vec<Value> = (0..i % 4)
        .map(|l| {
            json!({"label_id": format!("f{i:04}_{l}"), "class": if (i + l).is_multiple_of(3) { "dog" } else { "cat" },
                   "geometry": {"kind": "box2d", "top": 1, "left": 2, "width": 3, "height": 4}})
        })
        .collect();
    let kind = if i.is_multiple_of(7) { "point_cloud" } else { "image" };
    serde_json::from_value(json!({
        "frame_id": format!("f{i:04}"),
        "sensors": [{"kind": kind, "url": format!("https://x.example/{i}")}],
        "metadata": metadata,
        "labels": labels,
    }))
    .unwrap()
}

fn predicates() -> Vec<MetaPredicate> {
    let p = |key: &str, op: MetaOp, value: Value| MetaPredicate { key: key.into(), op, value };
    let mut all = Vec::new();
    let ops = [MetaOp::Eq, MetaOp::Ne, MetaOp::Lt, MetaOp::Le, MetaOp::Gt, MetaOp::Ge];
    for op in ops {
        for (key, value) in [
            ("n", json!(5)),
            ("n", json!(5.5)),
            ("n", json!("5")),
            ("x", json!(4.4)),
            ("x", json!(7)),
            ("s", json!("ab")),
            ("s", json!("B")),
            ("s", json!(10)),
            ("b", json!(true)),
            ("b", json!(0)),
            ("t", json!("2024-05-10T08:00:00Z")),
            ("t", json!("2024-05-10")),
            ("mixed", json!(3)),
            ("mixed", json!("3")),
            ("tags", json!("red")),
            ("absent", json!(1)),
        ] {
            all.push(p(key, op, value));
        }
    }
    for (key, value) in [("tags", json!("green")), ("tags", json!("none")), ("n", json!(3)), ("s", json!("a"))] {
        all.push(p(key, MetaOp::Contains, value));
    }
    for key in ["s", "t", "absent", "tags"] {
        all.push(p(key, MetaOp::Exists, Value::Null));
    }
    all
}

#[test]
fn the_index_and_the_scan_list_the_same_frames_for_every_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.add_user("admin", Role::Admin).unwrap();
    let admin = store.user_by_name("admin").unwrap();
    let classes = ClassMap(vec![
        ClassEntry { id: 0, name: "cat".into(), color: [0, 0, 0], train_name: None, category: None },
        ClassEntry { id: 4, name: "dog".into(), color: [0, 0, 0], train_name: None, category: None },
    ]);
    let spec = ProjectSpec { name: "p".into(), classes, access_mode: Default::default(), metadata: Default::default() };
    store.create_project(&spec, &admin).unwrap();
    let dataset = store.create_dataset("p", &DatasetSpec { name: "d".into(), ..Default::default() }).unwrap();
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    let frames: Vec<Frame> = (0..400).map(frame).collect();
    store.write_frames(&mut upload, &frames).unwrap();
    store.finish_upload(&upload, None).unwrap();
    // A second version that deletes some frames and changes others: the index reads the current one.
    let dataset = store.dataset("p", "d").unwrap();
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    let changed: Vec<Frame> = (0..40)
        .map(|i| frame(i * 7 + 3))
        .map(|mut f| {
            f.metadata.insert("n".into(), milkglass_core::MetaValue::Int(99));
            f
        })
        .collect();
    store.write_frames(&mut upload, &changed).unwrap();
    store.finish_upload(&upload, None).unwrap();
    let dataset = store.dataset("p", "d").unwrap();
    store.delete_frames(&dataset, &["f0010".to_string(), "f0011".to_string()]).unwrap();
    let dataset = store.dataset("p", "d").unwrap();
    let index = store.build_frame_index(&dataset).unwrap();
    let segment = milkglass_store::SegmentSpec {
        name: Some("some".into()),
        item_kind: Some("frames".into()),
        items: Some(vec!["f0003".into(), "f0020".into(), "f0399".into(), "f0010".into()]),
        ..Default::default()
    };
    store.create_segment(&dataset, &segment).unwrap();

    let mut filters = Vec::new();
    for predicate in predicates() {
        filters.push(FrameFilter { metadata: vec![predicate], ..Default::default() });
    }
    for class in ["cat", "dog"] {
        filters.push(FrameFilter { class: Some(class.into()), ..Default::default() });
        filters.push(FrameFilter {
            class: Some(class.into()),
            sensor_kind: Some(SensorKind::Image),
            min_labels: Some(2),
            metadata: predicates().into_iter().step_by(7).take(2).collect(),
            ..Default::default()
        });
    }
    filters.push(FrameFilter { min_labels: Some(1), max_labels: Some(2), ..Default::default() });
    filters.push(FrameFilter { sensor_kind: Some(SensorKind::PointCloud), ..Default::default() });
    filters.push(FrameFilter { segment: Some("some".into()), ..Default::default() });
    filters.push(FrameFilter { ids: vec!["f0001".into(), "f0399".into(), "nope".into()], ..Default::default() });
    // Matches nothing.
    filters.push(FrameFilter { min_labels: Some(100), ..Default::default() });

    let (mut compared, mut totals) = (0, std::collections::BTreeSet::new());
    for base in filters {
        for (limit, offset, after) in
            [(1000, 0, None), (7, 0, None), (5, 3, None), (10, 0, Some("f0150")), (3, 2, Some("f0100x"))]
        {
            let filter = FrameFilter {
                limit,
                offset,
                after: after.map(str::to_string),
                count: true,
                labels: limit == 7,
                ..base.clone()
            };
            let scan = store.list_frames("p", "d", &filter).unwrap();
            let indexed = store.list_frames_indexed("p", "d", &filter, &index).unwrap().expect("the index answers");
            let ids =
                |page: &milkglass_store::FramePage| page.frames.iter().map(|f| f.frame_id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&indexed), ids(&scan), "{filter:?}");
            assert_eq!(indexed.total, scan.total, "{filter:?}");
            assert_eq!(indexed.next, scan.next, "{filter:?}");
            assert_eq!(serde_json::to_value(&indexed.frames).unwrap(), serde_json::to_value(&scan.frames).unwrap());
            assert!(indexed.from_index && !scan.from_index);
            totals.insert(scan.total);
            compared += 1;
        }
    }
    assert!(compared > 400, "{compared}");
    // The filters cut the frames in many different ways, nothing and everything included.
    assert!(totals.len() > 40 && totals.contains(&Some(0)), "{totals:?}");
    // An index of an older version does not answer.
    let mut upload = store.begin_upload(&dataset, UploadKind::Frames, None).unwrap();
    store.write_frames(&mut upload, &[frame(1000)]).unwrap();
    store.finish_upload(&upload, None).unwrap();
    assert!(store.list_frames_indexed("p", "d", &FrameFilter::default(), &index).unwrap().is_none());
}
