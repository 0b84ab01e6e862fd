use super::*;
use std::collections::{HashMap, HashSet};

fn generate(config: &DetectionConfig) -> DetectionSample {
    detection_dataset(config, "hosted:samples/shapes")
}

fn bbox(label: &Label) -> Bbox {
    label.geometry.bbox().expect("sample labels are boxes")
}

fn labels(sample: &DetectionSample) -> impl Iterator<Item = &Label> {
    sample.frames.iter().flat_map(|f| f.labels.as_deref().unwrap_or_default())
}

fn faulty_label_ids(sample: &DetectionSample) -> HashSet<&str> {
    sample.injected_errors.iter().filter_map(|e| e.label_id.as_deref()).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

/// FNV-1a, to fingerprint output without another dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn same_seed_gives_the_same_bytes() {
    let config = DetectionConfig { frames: 40, ..Default::default() };
    let json = serde_json::to_string(&generate(&config)).unwrap();
    assert_eq!(json, serde_json::to_string(&generate(&config)).unwrap());
    assert_eq!(render_png(&config, 3), render_png(&config, 3));

    let other = DetectionConfig { seed: 8, ..config.clone() };
    assert_ne!(json, serde_json::to_string(&generate(&other)).unwrap());
    assert_ne!(render_png(&config, 3), render_png(&other, 3));
}

/// Pins the default output across runs, machines and refactorings. If you change the
/// generator on purpose, update the constant (and expect tests elsewhere to move).
#[test]
fn default_output_fingerprint() {
    let config = DetectionConfig::default();
    let mut bytes = serde_json::to_vec(&generate(&config)).unwrap();
    for index in [0, 1, 150, 299] {
        bytes.extend(render_png(&config, index));
    }
    assert_eq!(fnv1a(&bytes), 2796401007574629446, "fingerprint of the default sample changed");
}

#[test]
fn error_rate_changes_labels_only() {
    let config = DetectionConfig { frames: 30, ..Default::default() };
    let clean = generate(&DetectionConfig { error_rate: 0.0, ..config.clone() });
    let noisy = generate(&config);
    assert_eq!(clean.inferences, noisy.inferences);
    assert!(clean.injected_errors.is_empty());
    for (a, b) in clean.frames.iter().zip(&noisy.frames) {
        assert_eq!((&a.embedding, &a.metadata), (&b.embedding, &b.metadata));
    }
}

#[test]
fn every_frame_and_inference_validates() {
    let config = DetectionConfig::default();
    let sample = detection_dataset(&config, "http://127.0.0.1:7700/files/shapes/");
    sample.classes.validate("classes").unwrap();
    assert_eq!(sample.frames.len(), 300);
    assert_eq!(sample.frames[7].frame_id, "frame_0007");
    let frame_ids: HashSet<&str> = sample.frames.iter().map(|f| f.frame_id.as_str()).collect();
    for frame in &sample.frames {
        frame.validate(&sample.classes, Some(64), Some(32)).unwrap_or_else(|e| panic!("{frame}: {e}"));
        let sensor = &frame.sensors[0];
        assert_eq!(sensor.url, format!("http://127.0.0.1:7700/files/shapes/{}.png", frame.frame_id));
        assert_eq!((sensor.width, sensor.height), (Some(256), Some(192)));
        for key in ["background", "brightness", "exposure_ms", "split"] {
            assert!(frame.metadata.contains_key(key), "{frame} lacks metadata {key}");
        }
    }
    for label in &sample.inferences {
        label.validate(&sample.classes, true, Some(32)).unwrap_or_else(|e| panic!("{}: {e}", label.label_id));
        assert!(frame_ids.contains(label.frame_id.as_deref().unwrap()));
    }
    let mut ids = HashSet::new();
    for label in labels(&sample).chain(&sample.inferences) {
        assert!(ids.insert(label.label_id.as_str()), "label id {} is used twice", label.label_id);
    }
    let embeddings = sample.frames.iter().filter_map(|f| f.embedding.as_ref());
    for embedding in embeddings.chain(labels(&sample).chain(&sample.inferences).filter_map(|l| l.embedding.as_ref())) {
        assert!((dot(embedding, embedding) - 1.0).abs() < 1e-5, "embeddings are unit vectors");
    }
}

#[test]
fn boxes_lie_inside_the_image() {
    let config = DetectionConfig::default();
    let sample = generate(&config);
    let boxes =
        labels(&sample).chain(&sample.inferences).map(bbox).chain(sample.injected_errors.iter().map(|e| e.true_box));
    for [top, left, width, height] in boxes {
        assert!(width > 0.0 && height > 0.0);
        assert!(top >= 0.0 && left >= 0.0);
        assert!(left + width <= f64::from(config.width) + 1e-9 && top + height <= f64::from(config.height) + 1e-9);
    }
}

#[test]
fn boxes_are_the_exact_pixel_extent_of_the_drawn_shapes() {
    let config = DetectionConfig::default();
    for index in 0..40 {
        let scene = Scene::generate(&config, index);
        let rgb = scene.render_rgb(config.width, config.height);
        let mut owner = vec![None; (config.width * config.height) as usize];
        let mut extent = vec![(u32::MAX, u32::MAX, 0, 0); scene.shapes.len()];
        scene.for_each_shape_pixel(|x, y, s| {
            let i = (y * config.width + x) as usize;
            assert_eq!(owner[i], None, "shapes overlap in frame {index}");
            owner[i] = Some(s);
            assert_eq!(rgb[i * 3..i * 3 + 3], scene.shapes[s].color, "shape pixels have the shape's colour");
            let e = &mut extent[s];
            *e = (e.0.min(x), e.1.min(y), e.2.max(x), e.3.max(y));
        });
        for (shape, (x0, y0, x1, y1)) in scene.shapes.iter().zip(extent) {
            let exact = [y0, x0, x1 - x0 + 1, y1 - y0 + 1].map(f64::from);
            assert_eq!(shape.bbox, exact, "frame {index}");
        }
    }
}

#[test]
fn clean_labels_are_the_exact_truth() {
    let config = DetectionConfig::default();
    let sample = generate(&config);
    let faulty = faulty_label_ids(&sample);
    // Objects whose label was dropped or moved.
    let recorded: HashSet<(&str, [u64; 4])> =
        sample.injected_errors.iter().map(|e| (e.frame_id.as_str(), e.true_box.map(f64::to_bits))).collect();
    for (index, frame) in sample.frames.iter().enumerate() {
        let scene = Scene::generate(&config, index);
        let labels = frame.labels.as_ref().unwrap();
        for label in labels.iter().filter(|l| !faulty.contains(l.label_id.as_str())) {
            let matches =
                |s: &&scene::Shape| s.bbox == bbox(label) && label.class.as_deref() == Some(CLASSES[s.class].0);
            assert!(scene.shapes.iter().any(|s| matches(&s)), "{} is not a true object", label.label_id);
        }
        for shape in &scene.shapes {
            let labelled = labels.iter().any(|l| bbox(l) == shape.bbox);
            let corrupted = recorded.contains(&(frame.frame_id.as_str(), shape.bbox.map(f64::to_bits)));
            assert!(labelled || corrupted, "an object of {frame} has no label and no error record");
        }
    }
}

#[test]
fn injected_errors_follow_the_rate_and_their_record() {
    let config = DetectionConfig::default();
    let sample = generate(&config);
    let by_id: HashMap<&str, &Label> = labels(&sample).map(|l| (l.label_id.as_str(), l)).collect();
    let count = |kind| sample.injected_errors.iter().filter(|e| e.kind == kind).count();
    let objects = by_id.len() - count(ErrorKind::DuplicateLabel) + count(ErrorKind::MissingLabel);
    let expected = config.error_rate * objects as f64;
    let sd = (expected * (1.0 - config.error_rate)).sqrt();
    let errors = sample.injected_errors.len() as f64;
    assert!((errors - expected).abs() <= 4.0 * sd, "{errors} errors among {objects} objects");
    for kind in ERROR_KINDS {
        assert!(count(kind) >= 5, "only {} errors of kind {kind:?}", count(kind));
    }

    for error in &sample.injected_errors {
        let frame = &sample.frames[error.frame_id["frame_".len()..].parse::<usize>().unwrap()];
        let frame_labels = frame.labels.as_ref().unwrap();
        let label = error.label_id.as_deref().map(|id| by_id[id]);
        match (error.kind, label) {
            (ErrorKind::MissingLabel, None) => {
                assert!(frame_labels.iter().all(|l| iou(bbox(l), error.true_box) < 0.6), "{error:?} has a label");
            }
            (ErrorKind::WrongClass, Some(label)) => {
                assert_ne!(label.class.as_ref(), Some(&error.class));
                assert_eq!(bbox(label), error.true_box);
            }
            (ErrorKind::ShiftedBox, Some(label)) => {
                assert_eq!(label.class.as_ref(), Some(&error.class));
                let overlap = iou(bbox(label), error.true_box);
                assert!((0.3..=0.6).contains(&overlap), "shifted box has IoU {overlap}");
            }
            (ErrorKind::DuplicateLabel, Some(label)) => {
                assert_eq!(label.class.as_ref(), Some(&error.class));
                let copies: Vec<_> = frame_labels.iter().filter(|l| bbox(l) == error.true_box).collect();
                assert_eq!(copies.len(), 2);
                assert_eq!(copies[0].class, copies[1].class);
                assert_eq!(copies[0].embedding, copies[1].embedding);
            }
            other => panic!("inconsistent error record {other:?}"),
        }
        assert_eq!(error.frame_id, frame.frame_id);
    }

    let all_wrong = generate(&DetectionConfig { frames: 20, error_rate: 1.0, ..config.clone() });
    let clean = generate(&DetectionConfig { frames: 20, error_rate: 0.0, ..config });
    assert_eq!(all_wrong.injected_errors.len(), labels(&clean).count());
}

#[test]
fn wrong_class_labels_sit_in_their_true_class_cluster() {
    let sample = generate(&DetectionConfig::default());
    let faulty = faulty_label_ids(&sample);
    // Class centroids from the labels that are right, as a similarity feature would see them.
    let mut centroids = vec![vec![0.0_f32; 32]; CLASSES.len()];
    for label in labels(&sample).filter(|l| !faulty.contains(l.label_id.as_str())) {
        let class = sample.classes.by_name(label.class.as_ref().unwrap()).unwrap().id as usize;
        for (c, v) in centroids[class].iter_mut().zip(label.embedding.as_ref().unwrap()) {
            *c += v;
        }
    }
    let nearest = |embedding: &[f32]| {
        (0..CLASSES.len())
            .max_by(|a, b| dot(embedding, &centroids[*a]).total_cmp(&dot(embedding, &centroids[*b])))
            .unwrap()
    };
    let by_id: HashMap<&str, &Label> = labels(&sample).map(|l| (l.label_id.as_str(), l)).collect();
    let wrong: Vec<_> = sample.injected_errors.iter().filter(|e| e.kind == ErrorKind::WrongClass).collect();
    for error in &wrong {
        let label = by_id[error.label_id.as_deref().unwrap()];
        let true_class = sample.classes.by_name(&error.class).unwrap().id as usize;
        assert_eq!(nearest(label.embedding.as_ref().unwrap()), true_class, "{error:?}");
    }
    let clean_right = labels(&sample)
        .filter(|l| !faulty.contains(l.label_id.as_str()))
        .filter(|l| CLASSES[nearest(l.embedding.as_ref().unwrap())].0 == l.class.as_ref().unwrap())
        .count();
    assert!(clean_right as f64 >= 0.97 * (by_id.len() - faulty.len()) as f64);
}

#[test]
fn frame_embeddings_cluster_by_background() {
    let sample = generate(&DetectionConfig::default());
    let background = |f: &Frame| match &f.metadata["background"] {
        MetaValue::String(s) => s.clone(),
        other => panic!("background is {other:?}"),
    };
    let (mut same, mut different) = ((0.0, 0), (0.0, 0));
    for a in &sample.frames[..100] {
        for b in &sample.frames[100..200] {
            let cosine = dot(a.embedding.as_ref().unwrap(), b.embedding.as_ref().unwrap());
            let bucket = if background(a) == background(b) { &mut same } else { &mut different };
            *bucket = (bucket.0 + cosine, bucket.1 + 1);
        }
    }
    let (same, different) = (same.0 / f64::from(same.1), different.0 / f64::from(different.1));
    assert!(same > different + 0.2, "mean cosine {same} within backgrounds, {different} across");
}

#[test]
fn inferences_look_like_a_detector() {
    let config = DetectionConfig::default();
    let sample = generate(&config);
    let mut by_frame: HashMap<&str, Vec<&Label>> = HashMap::new();
    for label in &sample.inferences {
        by_frame.entry(label.frame_id.as_deref().unwrap()).or_default().push(label);
    }
    let (mut objects, mut found, mut confused) = (0, 0, 0);
    let mut false_positives = 0;
    for (index, frame) in sample.frames.iter().enumerate() {
        let scene = Scene::generate(&config, index);
        let outputs = by_frame.remove(frame.frame_id.as_str()).unwrap_or_default();
        for pair in outputs.windows(2) {
            assert!(pair[0].confidence >= pair[1].confidence, "most confident first");
        }
        for shape in &scene.shapes {
            objects += 1;
            if let Some(hit) = outputs.iter().find(|l| iou(bbox(l), shape.bbox) >= 0.5) {
                found += 1;
                confused += usize::from(hit.class.as_deref() != Some(CLASSES[shape.class].0));
            }
        }
        for output in outputs.iter().filter(|l| scene.shapes.iter().all(|s| iou(bbox(l), s.bbox) < 0.05)) {
            false_positives += 1;
            assert!(output.confidence.unwrap() < 0.45);
        }
    }
    let recall = f64::from(found) / f64::from(objects);
    assert!((0.85..0.99).contains(&recall), "recall {recall}");
    assert!(confused > 10 && false_positives > 50, "{confused} confusions, {false_positives} false positives");
}

#[test]
fn png_decodes_at_the_configured_size() {
    for config in [DetectionConfig::default(), DetectionConfig { width: 100, height: 80, ..Default::default() }] {
        let png = render_png(&config, 5);
        let mut reader = png::Decoder::new(std::io::Cursor::new(&png)).read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!((info.width, info.height), (config.width, config.height));
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        let rgb = Scene::generate(&config, 5).render_rgb(config.width, config.height);
        assert_eq!(pixels[..info.buffer_size()], rgb[..]);
    }
}

#[test]
fn write_images_writes_every_frame() {
    let config = DetectionConfig::default();
    let started = std::time::Instant::now();
    let sample = generate(&config);
    let dir = tempfile::tempdir().unwrap();
    write_images(&config, &sample, &dir.path().join("shapes")).unwrap();
    eprintln!("300 frames generated and rendered in {:?}", started.elapsed());
    let names: HashSet<String> = std::fs::read_dir(dir.path().join("shapes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let expected: HashSet<String> = sample.frames.iter().map(|f| format!("{}.png", f.frame_id)).collect();
    assert_eq!(names, expected, "one PNG per frame, no temporary files left");
    assert_eq!(std::fs::read(dir.path().join("shapes/frame_0042.png")).unwrap(), render_png(&config, 42));
}

#[test]
fn tiny_images_still_validate() {
    let config = DetectionConfig { width: 16, height: 16, frames: 50, error_rate: 0.5, ..Default::default() };
    let sample = generate(&config);
    for frame in &sample.frames {
        frame.validate(&sample.classes, Some(64), Some(32)).unwrap();
    }
    for label in &sample.inferences {
        label.validate(&sample.classes, true, Some(32)).unwrap();
    }
}

#[test]
fn classes_and_error_kinds() {
    let classes = class_map();
    let names: Vec<&str> = classes.0.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["circle", "square", "triangle", "cross"]);
    assert_eq!(classes.by_name("cross").unwrap().id, 3);
    assert_eq!(serde_json::to_string(&ErrorKind::MissingLabel).unwrap(), r#""missing_label""#);
    assert_eq!(serde_json::from_str::<ErrorKind>(r#""duplicate_label""#).unwrap(), ErrorKind::DuplicateLabel);
}

#[test]
fn titanic_is_included() {
    let mut lines = TITANIC_CSV.lines();
    assert!(lines.next().unwrap().starts_with("PassengerId,Survived,Pclass,Name,Sex,Age"));
    assert_eq!(lines.count(), 891);
}
