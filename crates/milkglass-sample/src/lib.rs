//! Deterministic sample data for milkglass demos and tests.
//!
//! - A detection data set of drawn shapes ([`detection_dataset`], [`render_png`],
//!   [`write_images`]). Because we draw the pictures ourselves the exact ground truth is known,
//!   so the uploaded labels can be corrupted on purpose and every corruption recorded
//!   ([`InjectedError`]): tests score milkglass's error-finding features against that record.
//!   A simulated model's inferences and clustered embeddings come with it.
//! - The Titanic table ([`TITANIC_CSV`]).
//!
//! Everything is a pure function of [`DetectionConfig`]: the same config gives the same frames,
//! labels, embeddings and PNG bytes on every run and platform. Each frame draws from its own
//! random streams (one per purpose: picture, labels, inferences, metadata), so frames can be
//! rendered one at a time, and changing `error_rate` changes the labels but not the images or
//! the inferences. Only exactly rounded float operations are used (no `sin`, `ln`, ...), so the
//! platform's maths library cannot change a bit.

mod embedding;
mod scene;
#[cfg(test)]
mod tests;

use chrono::DateTime;
use embedding::Space;
use milkglass_core::{ClassEntry, ClassMap, Frame, Geometry, Label, MetaValue, Metadata, Sensor, SensorKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use scene::Scene;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The Titanic passenger table (891 rows, with a header), a small tabular data set for queries.
pub const TITANIC_CSV: &str = include_str!("../data/titanic.csv");

/// What to generate. Every field feeds the output, so keep the config with the data if the
/// images are rendered later.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionConfig {
    pub seed: u64,
    pub frames: usize,
    /// Image size in pixels (at least 16 x 16).
    pub width: u32,
    pub height: u32,
    pub frame_embedding_dim: usize,
    pub label_embedding_dim: usize,
    /// Chance (0 to 1) that a true object's uploaded label is corrupted.
    pub error_rate: f64,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        Self {
            seed: 7,
            frames: 300,
            width: 256,
            height: 192,
            frame_embedding_dim: 64,
            label_embedding_dim: 32,
            error_rate: 0.08,
        }
    }
}

impl DetectionConfig {
    fn check(&self) {
        assert!(self.width >= 16 && self.height >= 16, "sample images must be at least 16 x 16 pixels");
        assert!((0.0..=1.0).contains(&self.error_rate), "error_rate must be between 0 and 1");
        for dim in [self.frame_embedding_dim, self.label_embedding_dim] {
            assert!(milkglass_core::EMBEDDING_DIM_RANGE.contains(&dim), "embedding dimension {dim} is out of range");
        }
    }
}

/// A generated detection data set.
#[derive(Debug, Clone, Serialize)]
pub struct DetectionSample {
    /// circle, square, triangle, cross (ids 0 to 3).
    pub classes: ClassMap,
    /// Frames with one image sensor, metadata, an embedding and inline labels: the ground truth as
    /// a user would upload it, i.e. with the injected errors in it.
    pub frames: Vec<Frame>,
    /// A simulated detector's outputs on the TRUE objects (it knows nothing of the label errors):
    /// jittered boxes, some misses, some class confusions, and low-confidence false positives.
    pub inferences: Vec<Label>,
    /// Every corruption made to the uploaded labels.
    pub injected_errors: Vec<InjectedError>,
}

/// One deliberate mistake in the uploaded labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectedError {
    pub kind: ErrorKind,
    pub frame_id: String,
    /// The faulty label: the mislabelled or shifted one, or for a duplicate the extra copy (the
    /// original is the other label of the frame with the same box). None for a missing label.
    pub label_id: Option<String>,
    /// The object's true class.
    pub class: String,
    /// The object's true box, `[top, left, width, height]` in pixels.
    pub true_box: [f64; 4],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A true object has no label.
    MissingLabel,
    /// The label's class is another class than the object's.
    WrongClass,
    /// The label's box is moved off the object (IoU with the truth between 0.3 and 0.6).
    ShiftedBox,
    /// The object has two identical labels.
    DuplicateLabel,
}

const ERROR_KINDS: [ErrorKind; 4] =
    [ErrorKind::MissingLabel, ErrorKind::WrongClass, ErrorKind::ShiftedBox, ErrorKind::DuplicateLabel];

/// Name, colour and category of each class; the index is the class id. Saturated colours on
/// greyish backgrounds keep the shapes easy to see.
const CLASSES: [(&str, [u8; 3], &str); 4] = [
    ("circle", [230, 57, 70], "round"),
    ("square", [29, 110, 214], "angular"),
    ("triangle", [244, 180, 0], "angular"),
    ("cross", [46, 160, 67], "angular"),
];

/// Every frame has one image, under the sensor id a sensor gets when none is given.
const SENSOR_ID: &str = "DEFAULT";

/// Frame timestamps start here (2024-05-01T08:00:00Z) and step by `FRAME_INTERVAL_S`.
const FIRST_TIMESTAMP: i64 = 1_714_550_400;
const FRAME_INTERVAL_S: i64 = 37;

/// A box as `[top, left, width, height]` in pixels, the order of `Geometry::Box2d`.
type Bbox = [f64; 4];

/// Independent random streams, so that one purpose drawing more numbers does not shift another.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Scene = 1,
    Frame = 2,
    Labels = 3,
    Inferences = 4,
    Centroids = 5,
}

fn stream_rng(seed: u64, stream: Stream, index: usize) -> StdRng {
    let key = scene::splitmix64(scene::splitmix64(seed ^ ((stream as u64) << 56)) ^ index as u64);
    StdRng::seed_from_u64(key)
}

/// Generates the detection data set. Image URLs are `{url_prefix}/{frame_id}.png`
/// (e.g. `hosted:samples/shapes` or `http://127.0.0.1:7700/files/shapes`).
///
/// Panics if the config is out of range (image under 16 x 16, error rate outside 0 to 1,
/// embedding dimension outside 2 to 12,000).
pub fn detection_dataset(config: &DetectionConfig, url_prefix: &str) -> DetectionSample {
    config.check();
    let space = Space::new(config);
    let url_prefix = url_prefix.trim_end_matches('/');
    let mut sample = DetectionSample {
        classes: class_map(),
        frames: Vec::with_capacity(config.frames),
        inferences: Vec::new(),
        injected_errors: Vec::new(),
    };
    for index in 0..config.frames {
        let scene = Scene::generate(config, index);
        let frame_id = frame_id(index);
        let labels = uploaded_labels(config, &space, &scene, index, &frame_id, &mut sample.injected_errors);
        sample.inferences.extend(inferences(config, &space, &scene, index, &frame_id));
        sample.frames.push(frame(config, &space, &scene, index, frame_id, url_prefix, labels));
    }
    sample
}

/// Renders frame `frame_index`'s PNG. Deterministic from the config and the index alone, so
/// images can be written lazily or served on demand.
pub fn render_png(config: &DetectionConfig, frame_index: usize) -> Vec<u8> {
    config.check();
    let scene = Scene::generate(config, frame_index);
    scene::encode_png(&scene.render_rgb(config.width, config.height), config.width, config.height)
}

/// Writes `{frame_id}.png` for every frame of `sample` (which must come from
/// [`detection_dataset`] with this `config`) into `dir`, creating it. Each file is written under
/// a temporary name and renamed, so a reader never sees half an image.
pub fn write_images(config: &DetectionConfig, sample: &DetectionSample, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let write = |index: usize| -> std::io::Result<()> {
        let frame_id = &sample.frames[index].frame_id;
        let temp = dir.join(format!(".{frame_id}.png.tmp"));
        std::fs::write(&temp, render_png(config, index))?;
        std::fs::rename(&temp, dir.join(format!("{frame_id}.png")))
    };
    // Rendering is CPU-bound and frames are independent: spread them over a few threads.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || (t..sample.frames.len()).step_by(threads).try_for_each(write)))
            .collect();
        workers.into_iter().try_for_each(|w| w.join().expect("image writer panicked"))
    })
}

fn class_map() -> ClassMap {
    ClassMap(
        CLASSES
            .iter()
            .enumerate()
            .map(|(id, (name, color, category))| ClassEntry {
                id: id as u32,
                name: (*name).to_string(),
                color: *color,
                train_name: None,
                category: Some((*category).to_string()),
            })
            .collect(),
    )
}

fn frame_id(index: usize) -> String {
    format!("frame_{index:04}")
}

fn frame(
    config: &DetectionConfig,
    space: &Space,
    scene: &Scene,
    index: usize,
    frame_id: String,
    url_prefix: &str,
    labels: Vec<Label>,
) -> Frame {
    let mut rng = stream_rng(config.seed, Stream::Frame, index);
    // Metadata a camera pipeline would record, correlated with the picture (exposure follows
    // brightness) but never with the labels, so it cannot give the injected errors away.
    let split = if rng.random_bool(0.8) { "train" } else { "val" };
    let exposure_ms = (8.0 + 16.0 * scene.brightness).round() as i64 + rng.random_range(-1..=1);
    let metadata = Metadata::from([
        ("background".to_string(), MetaValue::String(scene.texture.name().to_string())),
        ("brightness".to_string(), MetaValue::Float(scene.brightness)),
        ("exposure_ms".to_string(), MetaValue::Int(exposure_ms)),
        ("split".to_string(), MetaValue::String(split.to_string())),
    ]);
    Frame {
        timestamp: DateTime::from_timestamp(FIRST_TIMESTAMP + index as i64 * FRAME_INTERVAL_S, 0),
        sensors: vec![Sensor {
            sensor_id: SENSOR_ID.to_string(),
            kind: SensorKind::Image,
            url: format!("{url_prefix}/{frame_id}.png"),
            width: Some(config.width),
            height: Some(config.height),
            timestamp: None,
        }],
        metadata,
        geo: None,
        labels: Some(labels),
        embedding: Some(space.frame(&mut rng, scene.texture, scene.dominant_class())),
        frame_id,
    }
}

/// The frame's labels as uploaded: one per true object, except where an error is injected.
fn uploaded_labels(
    config: &DetectionConfig,
    space: &Space,
    scene: &Scene,
    index: usize,
    frame_id: &str,
    errors: &mut Vec<InjectedError>,
) -> Vec<Label> {
    struct Draft {
        class: usize,
        bbox: Bbox,
        embedding: Vec<f32>,
        error: Option<InjectedError>,
    }
    let mut rng = stream_rng(config.seed, Stream::Labels, index);
    let mut drafts = Vec::with_capacity(scene.shapes.len() + 1);
    for shape in &scene.shapes {
        let truth = shape.bbox;
        let embedding = space.crop(&mut rng, shape.class, 1.0);
        let error = |kind| InjectedError {
            kind,
            frame_id: frame_id.to_string(),
            label_id: None,
            class: CLASSES[shape.class].0.to_string(),
            true_box: truth,
        };
        let mut kind = rng.random_bool(config.error_rate).then(|| ERROR_KINDS[rng.random_range(0..ERROR_KINDS.len())]);
        let mut shifted = None;
        if kind == Some(ErrorKind::ShiftedBox) {
            shifted = shifted_box(&mut rng, truth, config);
            if shifted.is_none() {
                // Rare (tiny boxes): no shift gives an IoU in range. Corrupt the class instead,
                // so the error rate holds.
                kind = Some(ErrorKind::WrongClass);
            }
        }
        match kind {
            None => drafts.push(Draft { class: shape.class, bbox: truth, embedding, error: None }),
            Some(ErrorKind::MissingLabel) => errors.push(error(ErrorKind::MissingLabel)),
            Some(ErrorKind::WrongClass) => drafts.push(Draft {
                class: other_class(&mut rng, shape.class),
                bbox: truth,
                embedding,
                error: Some(error(ErrorKind::WrongClass)),
            }),
            Some(ErrorKind::ShiftedBox) => {
                let bbox = shifted.expect("checked above");
                // The crop now shows part background, so its embedding drifts off the cluster.
                let embedding = space.crop(&mut rng, shape.class, iou(bbox, truth));
                drafts.push(Draft { class: shape.class, bbox, embedding, error: Some(error(ErrorKind::ShiftedBox)) });
            }
            Some(ErrorKind::DuplicateLabel) => {
                // Same box, same crop: the copy's embedding is identical.
                let copy = Draft {
                    class: shape.class,
                    bbox: truth,
                    embedding: embedding.clone(),
                    error: Some(error(ErrorKind::DuplicateLabel)),
                };
                drafts.push(Draft { class: shape.class, bbox: truth, embedding, error: None });
                drafts.push(copy);
            }
        }
    }
    // Shuffled before ids are given, so neither order nor id reveals which label is faulty.
    drafts.shuffle(&mut rng);
    drafts
        .into_iter()
        .enumerate()
        .map(|(n, draft)| {
            let label_id = format!("{frame_id}_l{n}");
            if let Some(mut error) = draft.error {
                error.label_id = Some(label_id.clone());
                errors.push(error);
            }
            box_label(label_id, frame_id, draft.class, draft.bbox, None, draft.embedding)
        })
        .collect()
}

/// The simulated detector's outputs for one frame, most confident first.
fn inferences(config: &DetectionConfig, space: &Space, scene: &Scene, index: usize, frame_id: &str) -> Vec<Label> {
    let mut rng = stream_rng(config.seed, Stream::Inferences, index);
    let (min_size, max_size) = scene::size_range(config);
    let mut outputs: Vec<(usize, Bbox, f64, Vec<f32>)> = Vec::with_capacity(scene.shapes.len() + 2);
    for shape in &scene.shapes {
        let truth = shape.bbox;
        // Like real detectors, this one misses small objects more often and is less sure of them.
        let small = truth[2].min(truth[3]) < 1.5 * f64::from(min_size);
        if rng.random_bool(if small { 0.15 } else { 0.04 }) {
            continue;
        }
        let bbox = jittered_box(&mut rng, truth, config);
        let overlap = iou(bbox, truth);
        let (class, confidence) = if rng.random_bool(0.06) {
            (other_class(&mut rng, shape.class), rng.random_range(0.25..0.7))
        } else {
            let penalty = if small { 0.12 } else { 0.0 };
            (shape.class, 0.4 + 0.55 * overlap - penalty + rng.random_range(-0.08..0.06))
        };
        outputs.push((class, bbox, confidence, space.crop(&mut rng, shape.class, overlap)));
    }
    // Background clutter mistaken for shapes: low confidence, away from the real shapes.
    let false_positives = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2][rng.random_range(0..10)];
    for _ in 0..false_positives {
        for _attempt in 0..10 {
            let (w, h) = (rng.random_range(min_size..=max_size), rng.random_range(min_size..=max_size));
            let (left, top) = (rng.random_range(0..=config.width - w), rng.random_range(0..=config.height - h));
            let bbox = [f64::from(top), f64::from(left), f64::from(w), f64::from(h)];
            if scene.shapes.iter().all(|s| iou(bbox, s.bbox) < 0.05) {
                let class = rng.random_range(0..CLASSES.len());
                outputs.push((class, bbox, rng.random_range(0.05..0.4), space.crop(&mut rng, class, 0.0)));
                break;
            }
        }
    }
    outputs.sort_by(|a, b| b.2.total_cmp(&a.2));
    outputs
        .into_iter()
        .enumerate()
        .map(|(n, (class, bbox, confidence, embedding))| {
            let confidence = (confidence.clamp(0.01, 0.99) * 1000.0).round() / 1000.0;
            box_label(format!("{frame_id}_p{n}"), frame_id, class, bbox, Some(confidence), embedding)
        })
        .collect()
}

fn box_label(
    label_id: String,
    frame_id: &str,
    class: usize,
    bbox: Bbox,
    confidence: Option<f64>,
    embedding: Vec<f32>,
) -> Label {
    let [top, left, width, height] = bbox;
    Label {
        label_id,
        frame_id: Some(frame_id.to_string()),
        class: Some(CLASSES[class].0.to_string()),
        sensor_id: Some(SENSOR_ID.to_string()),
        geometry: Geometry::Box2d { top, left, width, height },
        attributes: serde_json::Map::new(),
        iscrowd: false,
        confidence,
        embedding: Some(embedding),
        probabilities: None,
    }
}

/// Any class but `class`.
fn other_class(rng: &mut StdRng, class: usize) -> usize {
    (class + rng.random_range(1..CLASSES.len())) % CLASSES.len()
}

/// The true box moved by whole pixels so that its IoU with the truth is between 0.3 and 0.6,
/// staying inside the image; None when no try succeeds.
fn shifted_box(rng: &mut StdRng, truth: Bbox, config: &DetectionConfig) -> Option<Bbox> {
    let [top, left, width, height] = truth;
    for _ in 0..20 {
        // Two equal boxes overlapping in a fraction `kept` of their area have IoU kept / (2 - kept).
        let target: f64 = rng.random_range(0.35..0.55);
        let kept = 2.0 * target / (1.0 + target);
        // Split the loss between the axes: kept = kept_x * kept_y.
        let kept_x = rng.random_range(kept..=1.0);
        let kept_y = kept / kept_x;
        let sign = |rng: &mut StdRng| if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let dx = ((1.0 - kept_x) * width).round() * sign(rng);
        let dy = ((1.0 - kept_y) * height).round() * sign(rng);
        let moved = [top + dy, left + dx, width, height];
        let inside = moved[0] >= 0.0
            && moved[1] >= 0.0
            && moved[0] + height <= f64::from(config.height)
            && moved[1] + width <= f64::from(config.width);
        if inside && (0.3..=0.6).contains(&iou(moved, truth)) {
            return Some(moved);
        }
    }
    None
}

/// The true box with each edge moved by up to 8% of the box's size, kept inside the image.
/// Edges are whole tenths of a pixel, like a detector's rounded output.
fn jittered_box(rng: &mut StdRng, truth: Bbox, config: &DetectionConfig) -> Bbox {
    let [top, left, width, height] = truth;
    // Counted in tenths as integers, so that the width is exactly right - left.
    let mut edge = |at: f64, size: f64, limit: u32| {
        let moved = at + size * rng.random_range(-0.08..0.08);
        ((moved * 10.0).round() as i64).clamp(0, i64::from(limit) * 10)
    };
    let (x0, x1) = (edge(left, width, config.width), edge(left + width, width, config.width));
    let (y0, y1) = (edge(top, height, config.height), edge(top + height, height, config.height));
    [y0, x0, x1 - x0, y1 - y0].map(|tenths| tenths as f64 / 10.0)
}

/// Intersection over union of two boxes.
fn iou(a: Bbox, b: Bbox) -> f64 {
    let overlap = |a0: f64, a_len: f64, b0: f64, b_len: f64| ((a0 + a_len).min(b0 + b_len) - a0.max(b0)).max(0.0);
    let intersection = overlap(a[1], a[2], b[1], b[2]) * overlap(a[0], a[3], b[0], b[3]);
    let union = a[2] * a[3] + b[2] * b[3] - intersection;
    if union > 0.0 { intersection / union } else { 0.0 }
}
