//! Aquarium's rows as milkglass's frames and labels, and back.
//!
//! The client writes one JSON object per frame (`task_id`, `sensor_data`, `user__*` keys...)
//! and one per frame's labels (`label_data`); milkglass stores [`Frame`]s and [`Label`]s. This
//! module only translates: every check of what a frame or label may be is the core's
//! (`Frame::validate`, run by the store as for any upload). What milkglass has no place for
//! (camera models, overlays, MODIFY rows...) is refused here, by name, rather than dropped.

use chrono::{DateTime, Utc};
use milkglass_core::{
    Frame, Geo, Geometry, Invalid, Keypoint, Label, MaskInstance, MetaValue, Metadata, Sensor, SensorKind,
    parse_timestamp,
};
use milkglass_service::{FrameRow, LabelRow};
use serde_json::{Map, Value, json};
use std::collections::HashMap;

type Result<T> = std::result::Result<T, Invalid>;

/// The metadata key Aquarium's `device_id` is kept under (absent for the client's default).
pub const DEVICE_ID: &str = "device_id";
const DEFAULT_DEVICE: &str = "default_device";
const WORLD: &str = "world";

/// Embeddings read from the Arrow files for one frame, already cleared of the client's dummies.
#[derive(Debug, Default)]
pub struct RowEmbeddings {
    pub frame: Option<Vec<f32>>,
    /// By crop (label) id.
    pub crops: HashMap<String, Vec<f32>>,
}

/// What the translation may accept, from the project.
#[derive(Debug, Clone, Copy)]
pub struct RowRules {
    /// `mirror_asset: true` asks for a copy in the hosted store: only mirrored projects make one.
    pub mirrors: bool,
    /// The labels row holds a model's proposals (an unlabeled dataset's frames), with confidences.
    pub proposals: bool,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid::new(field, message)
}

fn object<'a>(value: &'a Value, field: &str) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| invalid(field, "must be a JSON object"))
}

fn string<'a>(map: &'a Map<String, Value>, key: &str, field: &str) -> Result<&'a str> {
    map.get(key).and_then(Value::as_str).ok_or_else(|| invalid(format!("{field}.{key}"), "must be a string"))
}

fn number(map: &Map<String, Value>, key: &str, field: &str) -> Result<f64> {
    map.get(key).and_then(Value::as_f64).ok_or_else(|| invalid(format!("{field}.{key}"), "must be a number"))
}

fn is_absent(value: Option<&Value>) -> bool {
    value.is_none_or(Value::is_null)
}

/// `change` must be `ADD`: the client's MODIFY and DELETE rows edit frames in place, which
/// milkglass does by re-uploading the frame.
fn check_add(map: &Map<String, Value>, field: &str) -> Result<()> {
    match map.get("change").and_then(Value::as_str).unwrap_or("ADD") {
        "ADD" => {}
        other => {
            return Err(invalid(
                format!("{field}.change"),
                format!(
                    "{other} rows (ModifiedLabeledFrame, delete_frame) are not served: upload the whole frame again \
                     with create_or_update_dataset, or delete frames through milkglass's API"
                ),
            ));
        }
    }
    if map.get("reuse_latest_embedding").and_then(Value::as_bool) == Some(true) {
        return Err(invalid(
            format!("{field}.reuse_latest_embedding"),
            "reusing an earlier embedding is not served: send the embedding again",
        ));
    }
    Ok(())
}

/// One frame row (and the labels row of the same frame) as a milkglass frame with inline labels.
pub fn frame_from_row(
    row: &Value,
    labels: Option<&Value>,
    mut embeddings: RowEmbeddings,
    rules: RowRules,
    field: &str,
) -> Result<Frame> {
    let map = object(row, field)?;
    check_add(map, field)?;
    let frame_id = string(map, "task_id", field)?.to_string();
    let timestamp = match map.get("date_captured").and_then(Value::as_str) {
        Some(text) => Some(parse_timestamp(&format!("{field}.date_captured"), text)?),
        None => None,
    };
    let mut metadata = user_metadata(map, field)?;
    match map.get("device_id").and_then(Value::as_str) {
        None | Some(DEFAULT_DEVICE) => {}
        Some(device) => {
            if metadata.contains_key(DEVICE_ID) {
                return Err(invalid(
                    format!("{field}.user__{DEVICE_ID}"),
                    "milkglass keeps the frame's device_id under this metadata key: rename the user metadata",
                ));
            }
            metadata.insert(DEVICE_ID.to_string(), MetaValue::String(device.to_string()));
        }
    }
    let sensors = match map.get("sensor_data") {
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, s)| sensor_from_json(s, rules, &format!("{field}.sensor_data[{i}]")))
            .collect::<Result<Vec<_>>>()?,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return Err(invalid(format!("{field}.sensor_data"), "must be a list")),
    };
    check_coordinate_frames(map.get("coordinate_frames"), &sensors, field)?;
    let geo = match map.get("geo_data") {
        None | Some(Value::Null) => None,
        Some(Value::Object(geo)) if geo.is_empty() => None,
        Some(Value::Object(geo)) => {
            let at = format!("{field}.geo_data");
            Some(Geo { lat: number(geo, "geo_EPSG4326_lat", &at)?, lon: number(geo, "geo_EPSG4326_lon", &at)? })
        }
        Some(_) => return Err(invalid(format!("{field}.geo_data"), "must be an object")),
    };
    for key in map.keys() {
        let known = [
            "task_id",
            "date_captured",
            "device_id",
            "coordinate_frames",
            "sensor_data",
            "geo_data",
            "reuse_latest_embedding",
            "change",
            "user_metadata_types",
            "user_metadata_modes",
        ];
        if !key.starts_with("user__") && !known.contains(&key.as_str()) {
            return Err(invalid(format!("{field}.{key}"), "is not a frame field milkglass knows; leave it out"));
        }
    }
    let labels = match labels {
        Some(row) => {
            let at = format!("{field} (labels)");
            let labels_map = object(row, &at)?;
            let id = string(labels_map, "task_id", &at)?;
            if id != frame_id {
                return Err(invalid(
                    format!("{at}.task_id"),
                    format!(
                        "labels of frame {id:?} arrived in the place of frame {frame_id:?}: the files do not line up"
                    ),
                ));
            }
            let list = labels_map.get("label_data").unwrap_or(&Value::Null);
            let mut labels = labels_from_json(list, rules.proposals, &format!("{at}.label_data"))?;
            for label in &mut labels {
                label.embedding = embeddings.crops.remove(&label.label_id);
            }
            Some(labels)
        }
        None => None,
    };
    if let Some(id) = embeddings.crops.keys().next() {
        return Err(invalid(format!("{field}.crop_embeddings"), format!("embedding for unknown crop {id:?}")));
    }
    Ok(Frame { frame_id, timestamp, sensors, metadata, geo, labels, embedding: embeddings.frame })
}

/// An inference row's outputs as inference labels of the frame `task_id`.
pub fn inferences_from_row(row: &Value, mut embeddings: RowEmbeddings, field: &str) -> Result<Vec<Label>> {
    let map = object(row, field)?;
    check_add(map, field)?;
    let frame_id = string(map, "task_id", field)?.to_string();
    if embeddings.frame.is_some() {
        return Err(invalid(
            format!("{field}.frame_embeddings"),
            "milkglass keeps one embedding per frame, the dataset's: inference frames take no frame \
             embedding (send crop embeddings with the inferences, or the frame's with the dataset)",
        ));
    }
    if let Some(Value::Object(metrics)) = map.get("custom_metrics")
        && !metrics.is_empty()
    {
        return Err(invalid(format!("{field}.custom_metrics"), "custom metrics are not served; leave them out"));
    }
    if let Some(meta) = map.get("inference_metadata").and_then(|m| m.get("user_metadata"))
        && meta.as_object().is_some_and(|m| !m.is_empty())
    {
        return Err(invalid(
            format!("{field}.inference_metadata.user_metadata"),
            "per-frame inference metadata is not stored: put it on the inference set (external_metadata)",
        ));
    }
    let list = map.get("inference_data").or_else(|| map.get("label_data")).unwrap_or(&Value::Null);
    let mut labels = labels_from_json(list, true, &format!("{field}.inference_data"))?;
    for label in &mut labels {
        label.frame_id = Some(frame_id.clone());
        label.embedding = embeddings.crops.remove(&label.label_id);
    }
    if let Some(id) = embeddings.crops.keys().next() {
        return Err(invalid(format!("{field}.crop_embeddings"), format!("embedding for unknown inference {id:?}")));
    }
    Ok(labels)
}

/// `user__key` values, typed by `user_metadata_types` (a float sent as `3` stays a float).
fn user_metadata(map: &Map<String, Value>, field: &str) -> Result<Metadata> {
    let types = map.get("user_metadata_types").and_then(Value::as_object);
    let mut metadata = Metadata::new();
    for (key, value) in map {
        let Some(name) = key.strip_prefix("user__") else { continue };
        let at = format!("{field}.{key}");
        let declared = types.and_then(|t| t.get(key)).and_then(Value::as_str);
        let typed = |v: &Value| -> Result<MetaValue> {
            match (declared, v.as_f64()) {
                (Some("float"), Some(f)) => Ok(MetaValue::Float(f)),
                _ => MetaValue::from_json(&at, v),
            }
        };
        let value = match value {
            Value::Array(items) if declared == Some("float") => {
                MetaValue::List(items.iter().map(typed).collect::<Result<Vec<_>>>()?)
            }
            Value::Null => continue,
            other => typed(other)?,
        };
        metadata.insert(name.to_string(), value);
    }
    Ok(metadata)
}

/// Aquarium's sensor types milkglass stores, with the one `data_urls` key of each.
const SENSOR_TYPES: [(&str, SensorKind, &str); 6] = [
    ("IMAGE_V0", SensorKind::Image, "image_url"),
    ("TEXT", SensorKind::Text, "text"),
    ("POINTCLOUD_PCD_V0", SensorKind::PointCloud, "pcd_url"),
    ("POINT_CLOUD_PCD", SensorKind::PointCloud, "pcd_url"),
    ("AUDIO_V0", SensorKind::Audio, "audio_url"),
    ("VIDEO_V0", SensorKind::Video, "video_url"),
];

fn sensor_from_json(value: &Value, rules: RowRules, field: &str) -> Result<Sensor> {
    let map = object(value, field)?;
    let sensor_type = string(map, "sensor_type", field)?;
    let Some(&(_, kind, url_key)) = SENSOR_TYPES.iter().find(|(name, ..)| *name == sensor_type) else {
        return Err(invalid(
            format!("{field}.sensor_type"),
            format!(
                "{sensor_type} sensors are not served (milkglass keeps images, text, PCD point clouds, audio and \
                 video, one URL each)"
            ),
        ));
    };
    let sensor_id = map.get("sensor_id").and_then(Value::as_str).unwrap_or("DEFAULT").to_string();
    let urls = object(map.get("data_urls").unwrap_or(&Value::Null), &format!("{field}.data_urls"))?;
    if let Some(extra) = urls.keys().find(|k| *k != url_key) {
        return Err(invalid(
            format!("{field}.data_urls.{extra}"),
            format!("milkglass keeps one URL per {sensor_type} sensor ({url_key}); leave {extra} out"),
        ));
    }
    let url = string(urls, url_key, &format!("{field}.data_urls"))?.to_string();
    let (mut width, mut height) = (None, None);
    if let Some(Value::Object(meta)) = map.get("sensor_metadata") {
        for (key, value) in meta {
            let slot = match key.as_str() {
                "width" if kind == SensorKind::Image => &mut width,
                "height" if kind == SensorKind::Image => &mut height,
                _ => {
                    return Err(invalid(
                        format!("{field}.sensor_metadata.{key}"),
                        "is not kept by milkglass (images keep width and height); leave it out",
                    ));
                }
            };
            if !value.is_null() {
                let n = value.as_u64().and_then(|n| u32::try_from(n).ok());
                *slot = Some(n.ok_or_else(|| {
                    invalid(format!("{field}.sensor_metadata.{key}"), "must be a whole number of pixels")
                })?);
            }
        }
    }
    if map.get("mirror_asset").and_then(Value::as_bool) == Some(true) && !rules.mirrors {
        return Err(invalid(
            format!("{field}.mirror_asset"),
            "mirror_asset needs a milkglass project in mirrored access mode; this one keeps files at their URLs",
        ));
    }
    let expected_frame = if kind == SensorKind::PointCloud { WORLD } else { sensor_id.as_str() };
    if let Some(frame) = map.get("coordinate_frame").and_then(Value::as_str)
        && frame != expected_frame
    {
        return Err(invalid(
            format!("{field}.coordinate_frame"),
            format!("custom coordinate frames are not served; this sensor's frame is {expected_frame:?}"),
        ));
    }
    let timestamp = match map.get("date_captured").and_then(Value::as_str) {
        Some(text) => Some(parse_timestamp(&format!("{field}.date_captured"), text)?),
        None => None,
    };
    Ok(Sensor { sensor_id, kind, url, width, height, timestamp })
}

/// The coordinate frame type the client gives a sensor's implicit frame.
fn implicit_frame_type(kind: SensorKind) -> Option<&'static str> {
    match kind {
        SensorKind::Image | SensorKind::ImageOverlay => Some("IMAGE"),
        SensorKind::Text => Some("TEXT"),
        SensorKind::Audio => Some("AUDIO"),
        SensorKind::Video => Some("VIDEO"),
        SensorKind::PointCloud => None,
    }
}

/// Only the frames the client makes by itself (the world, one per 2D sensor) are accepted:
/// milkglass keeps no camera models or 3D poses, and says so rather than lose them.
fn check_coordinate_frames(value: Option<&Value>, sensors: &[Sensor], field: &str) -> Result<()> {
    let Some(Value::Array(frames)) = value else { return Ok(()) };
    for (i, frame) in frames.iter().enumerate() {
        let at = format!("{field}.coordinate_frames[{i}]");
        let map = object(frame, &at)?;
        let id = string(map, "coordinate_frame_id", &at)?;
        let kind = string(map, "coordinate_frame_type", &at)?;
        let metadata: Value = match map.get("coordinate_frame_metadata") {
            Some(Value::String(text)) => serde_json::from_str(text).unwrap_or(Value::Null),
            Some(other) => other.clone(),
            None => Value::Null,
        };
        let parent = metadata.get("parent_frame_id").and_then(Value::as_str);
        let extra = metadata.as_object().is_some_and(|m| m.keys().any(|k| k != "parent_frame_id"));
        let implicit = match kind {
            "WORLD" => id == WORLD && parent.is_none(),
            _ => {
                parent == Some(WORLD)
                    && sensors.iter().any(|s| s.sensor_id == id && implicit_frame_type(s.kind) == Some(kind))
            }
        };
        if !implicit || extra {
            return Err(invalid(
                at,
                format!(
                    "coordinate frame {id:?} ({kind}) is not served: milkglass keeps no camera models or 3D poses; \
                     leave custom coordinate frames out"
                ),
            ));
        }
    }
    Ok(())
}

fn labels_from_json(value: &Value, inference: bool, field: &str) -> Result<Vec<Label>> {
    let list = match value {
        Value::Array(list) => list,
        Value::Null => return Ok(Vec::new()),
        _ => return Err(invalid(field, "must be a list")),
    };
    let mut labels = Vec::with_capacity(list.len());
    let mut instances: Vec<(usize, String, MaskInstance)> = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let map = object(item, &at)?;
        check_add(map, &at)?;
        if map.get("label_type").and_then(Value::as_str) == Some("INSTANCE_LABEL_2D") {
            let uuid = string(map, "uuid", &at)?.to_string();
            let class = string(map, "label", &at)?.to_string();
            let attributes = object(map.get("attributes").unwrap_or(&Value::Null), &format!("{at}.attributes"))?;
            let id = attributes.get("id").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
            let id = id.ok_or_else(|| invalid(format!("{at}.attributes.id"), "must be the instance's pixel value"))?;
            instances.push((i, uuid, MaskInstance { id, class }));
            continue;
        }
        labels.push(label_from_json(map, inference, &at)?);
    }
    for (i, uuid, instance) in instances {
        let mask = labels.iter_mut().find(|l| {
            matches!(l.geometry, Geometry::InstanceMask { .. })
                && uuid.strip_prefix(l.label_id.as_str()).is_some_and(|rest| rest.starts_with('_'))
        });
        match mask.map(|l| &mut l.geometry) {
            Some(Geometry::InstanceMask { instances, .. }) => instances.push(instance),
            _ => {
                return Err(invalid(
                    format!("{field}[{i}].uuid"),
                    format!("instance {uuid:?} names no INSTANCE_LABEL_URL_2D mask of this frame"),
                ));
            }
        }
    }
    Ok(labels)
}

/// The geometry keys of each label type, which `attributes` carries besides user attributes.
fn geometry_from_json(
    label_type: &str,
    attrs: &Map<String, Value>,
    at: &str,
) -> Result<(Geometry, &'static [&'static str])> {
    let n = |key: &str| number(attrs, key, at);
    Ok(match label_type {
        "BBOX_2D" => (
            Geometry::Box2d { top: n("top")?, left: n("left")?, width: n("width")?, height: n("height")? },
            &["top", "left", "width", "height"],
        ),
        "LINE_SEGMENT_2D" => (
            Geometry::LineSegment { x1: n("x1")?, y1: n("y1")?, x2: n("x2")?, y2: n("y2")? },
            &["x1", "y1", "x2", "y2"],
        ),
        "KEYPOINTS_2D" => {
            for key in ["top", "left", "width", "height", "polygons", "center"] {
                if !is_absent(attrs.get(key)) {
                    return Err(invalid(
                        format!("{at}.{key}"),
                        "keypoint labels keep their keypoints only; leave the box and polygons out",
                    ));
                }
            }
            let keypoints: Vec<Keypoint> =
                serde_json::from_value(attrs.get("keypoints").cloned().unwrap_or(Value::Null))
                    .map_err(|e| invalid(format!("{at}.keypoints"), format!("must be [{{x, y, name}}]: {e}")))?;
            (Geometry::Keypoints { keypoints }, &["keypoints", "top", "left", "width", "height", "polygons", "center"])
        }
        "POLYGON_LIST_2D" => {
            if !is_absent(attrs.get("center")) {
                return Err(invalid(format!("{at}.center"), "polygon centers are not kept; leave center out"));
            }
            let polygons = match attrs.get("polygons") {
                Some(Value::Array(list)) => list
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        serde_json::from_value::<Vec<[f64; 2]>>(p.get("vertices").cloned().unwrap_or(Value::Null))
                            .map_err(|e| {
                                invalid(format!("{at}.polygons[{i}].vertices"), format!("must be [[x, y]]: {e}"))
                            })
                    })
                    .collect::<Result<Vec<_>>>()?,
                _ => return Err(invalid(format!("{at}.polygons"), "must be a list of {vertices}")),
            };
            (Geometry::PolygonList { polygons }, &["polygons", "center"])
        }
        "SEMANTIC_LABEL_URL_2D" | "INSTANCE_LABEL_URL_2D" => {
            if attrs.get("resize_mode").is_some_and(|m| !m.is_null()) {
                return Err(invalid(
                    format!("{at}.resize_mode"),
                    "masks are drawn at the image's size; leave resize_mode out",
                ));
            }
            let url = attrs.get("url").and_then(Value::as_str);
            let url = url.ok_or_else(|| invalid(format!("{at}.url"), "must be the mask's URL"))?.to_string();
            if label_type == "SEMANTIC_LABEL_URL_2D" {
                (Geometry::SemanticMask { url }, &["url", "resize_mode"])
            } else {
                (Geometry::InstanceMask { url, instances: Vec::new() }, &["url", "resize_mode"])
            }
        }
        "CLASSIFICATION_2D" => (Geometry::Classification {}, &[]),
        "CLASSIFICATION_3D" => (Geometry::Classification3d {}, &[]),
        "CUBOID_3D" => (
            Geometry::Cuboid3d {
                position: [n("pos_x")?, n("pos_y")?, n("pos_z")?],
                dimensions: [n("dim_x")?, n("dim_y")?, n("dim_z")?],
                rotation: [n("rot_w")?, n("rot_x")?, n("rot_y")?, n("rot_z")?],
            },
            &["pos_x", "pos_y", "pos_z", "dim_x", "dim_y", "dim_z", "rot_x", "rot_y", "rot_z", "rot_w"],
        ),
        "TEXT_TOKEN" => {
            let index = attrs.get("index").and_then(Value::as_u64).and_then(|i| u32::try_from(i).ok());
            let index = index.ok_or_else(|| invalid(format!("{at}.index"), "must be a whole number"))?;
            let token = string(attrs, "token", at)?.to_string();
            let visible = attrs.get("visible").and_then(Value::as_bool).unwrap_or(true);
            (Geometry::TextToken { index, token, visible }, &["index", "token", "visible"])
        }
        other => {
            return Err(invalid(format!("{at}.label_type"), format!("label type {other} is not served")));
        }
    })
}

fn label_from_json(map: &Map<String, Value>, inference: bool, at: &str) -> Result<Label> {
    let label_id = string(map, "uuid", at)?.to_string();
    let label_type = string(map, "label_type", at)?;
    let attrs_at = format!("{at}.attributes");
    let attrs = object(map.get("attributes").unwrap_or(&Value::Null), &attrs_at)?;
    let (geometry, geometry_keys) = geometry_from_json(label_type, attrs, &attrs_at)?;
    let class = match map.get("label").and_then(Value::as_str) {
        None | Some("__mask") if matches!(geometry, Geometry::SemanticMask { .. } | Geometry::InstanceMask { .. }) => {
            None
        }
        Some(name) => Some(name.to_string()),
        None => return Err(invalid(format!("{at}.label"), "must be the class name")),
    };
    let mut attributes = Map::new();
    let mut confidence = None;
    let mut iscrowd = false;
    for (key, value) in attrs {
        if geometry_keys.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "confidence" => {
                let c = value.as_f64().ok_or_else(|| invalid(format!("{attrs_at}.confidence"), "must be a number"))?;
                confidence = Some(c);
            }
            "iscrowd" => iscrowd = value.as_bool().unwrap_or(false),
            _ => match key.strip_prefix("user__") {
                Some(name) => {
                    attributes.insert(name.to_string(), value.clone());
                }
                None => {
                    return Err(invalid(
                        format!("{attrs_at}.{key}"),
                        "is not kept by milkglass (secondary labels are not served); send it as a user attribute",
                    ));
                }
            },
        }
    }
    if inference
        && confidence.is_none()
        && !matches!(geometry, Geometry::SemanticMask { .. } | Geometry::InstanceMask { .. })
    {
        return Err(invalid(format!("{attrs_at}.confidence"), "is required for inferences"));
    }
    let sensor_id = map.get("label_coordinate_frame").and_then(Value::as_str).map(str::to_string);
    Ok(Label {
        label_id,
        frame_id: None,
        class,
        sensor_id,
        geometry,
        attributes,
        iscrowd,
        confidence,
        embedding: None,
        probabilities: None,
    })
}

// ---------------------------------------------------------------------------------------------
// Back: what `get_frame` and `get_frames` answer.

/// Dates as Python's `datetime.fromisoformat` reads them.
fn aquarium_time(text: &str) -> String {
    match DateTime::parse_from_rfc3339(text) {
        Ok(t) => t.with_timezone(&Utc).format("%Y-%m-%dT%H:%M:%S%.f+00:00").to_string(),
        Err(_) => text.to_string(),
    }
}

fn sensor_type(kind: SensorKind) -> (&'static str, &'static str) {
    match kind {
        SensorKind::Image | SensorKind::ImageOverlay => ("IMAGE_V0", "image_url"),
        SensorKind::Text => ("TEXT", "text"),
        // The client writes POINTCLOUD_PCD_V0 but reads back POINT_CLOUD_PCD (a bug of 1.0.7).
        SensorKind::PointCloud => ("POINT_CLOUD_PCD", "pcd_url"),
        SensorKind::Audio => ("AUDIO_V0", "audio_url"),
        SensorKind::Video => ("VIDEO_V0", "video_url"),
    }
}

/// One stored frame as the row the client re-hydrates a `LabeledFrame` from.
pub fn frame_to_row(frame: &FrameRow, labels: &[LabelRow]) -> Value {
    let date = frame.timestamp.as_deref().map(aquarium_time).unwrap_or_default();
    let sensors: Vec<Sensor> = serde_json::from_value(frame.sensors.clone()).unwrap_or_default();
    let mut coordinate_frames = vec![
        json!({"coordinate_frame_id": WORLD, "coordinate_frame_type": "WORLD", "coordinate_frame_metadata": "{\"parent_frame_id\": null}"}),
    ];
    let mut sensor_data = Vec::new();
    for sensor in &sensors {
        let (kind, url_key) = sensor_type(sensor.kind);
        let frame_type = implicit_frame_type(sensor.kind);
        if let Some(frame_type) = frame_type {
            coordinate_frames.push(json!({
                "coordinate_frame_id": sensor.sensor_id,
                "coordinate_frame_type": frame_type,
                "coordinate_frame_metadata": "{\"parent_frame_id\": \"world\"}",
            }));
        }
        let mut metadata = Map::new();
        if let Some(w) = sensor.width {
            metadata.insert("width".into(), w.into());
        }
        if let Some(h) = sensor.height {
            metadata.insert("height".into(), h.into());
        }
        let sensor_date = match &sensor.timestamp {
            Some(t) => aquarium_time(&t.to_rfc3339()),
            None => date.clone(),
        };
        sensor_data.push(json!({
            "coordinate_frame": if frame_type.is_some() { sensor.sensor_id.as_str() } else { WORLD },
            "data_urls": { url_key: sensor.url },
            "date_captured": sensor_date,
            "sensor_id": sensor.sensor_id,
            "sensor_metadata": metadata,
            "sensor_type": kind,
            "mirror_asset": false,
        }));
    }
    let mut row = Map::new();
    row.insert("task_id".into(), frame.frame_id.clone().into());
    row.insert("date_captured".into(), date.into());
    let mut device = DEFAULT_DEVICE.to_string();
    if let Value::Object(metadata) = &frame.metadata {
        for (key, value) in metadata {
            if key == DEVICE_ID
                && let Some(text) = value.as_str()
            {
                device = text.to_string();
                continue;
            }
            // Timestamps are stored as {"timestamp": text}; Aquarium has strings only.
            let value = match value.get("timestamp") {
                Some(text) => text.clone(),
                None => value.clone(),
            };
            row.insert(format!("user__{key}"), value);
        }
    }
    row.insert("device_id".into(), device.into());
    row.insert("coordinate_frames".into(), coordinate_frames.into());
    row.insert("sensor_data".into(), sensor_data.into());
    // A JSON string, as BigQuery rows had it: the client drops a geo object it cannot json.loads.
    let geo = frame.geo.as_ref().map_or_else(
        || "{}".to_string(),
        |g| json!({"geo_EPSG4326_lat": g["lat"], "geo_EPSG4326_lon": g["lon"]}).to_string(),
    );
    row.insert("geo_data".into(), geo.into());
    let labels: Vec<Value> = labels.iter().flat_map(label_to_json).collect();
    row.insert("label_data".into(), labels.into());
    Value::Object(row)
}

/// One label as Aquarium's crop dict; an instance mask is one mask row and one row per instance.
pub fn label_to_json(label: &LabelRow) -> Vec<Value> {
    let mut attributes = Map::new();
    let label_type = match &label.geometry {
        Geometry::Box2d { top, left, width, height } => {
            for (k, v) in [("top", top), ("left", left), ("width", width), ("height", height)] {
                attributes.insert(k.into(), json!(v));
            }
            "BBOX_2D"
        }
        Geometry::LineSegment { x1, y1, x2, y2 } => {
            for (k, v) in [("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)] {
                attributes.insert(k.into(), json!(v));
            }
            "LINE_SEGMENT_2D"
        }
        Geometry::Keypoints { keypoints } => {
            attributes.insert("keypoints".into(), json!(keypoints));
            "KEYPOINTS_2D"
        }
        Geometry::PolygonList { polygons } => {
            let polygons: Vec<Value> = polygons.iter().map(|p| json!({ "vertices": p })).collect();
            attributes.insert("polygons".into(), polygons.into());
            attributes.insert("center".into(), Value::Null);
            "POLYGON_LIST_2D"
        }
        Geometry::SemanticMask { url } => {
            attributes.insert("url".into(), url.clone().into());
            "SEMANTIC_LABEL_URL_2D"
        }
        Geometry::InstanceMask { url, .. } => {
            attributes.insert("url".into(), url.clone().into());
            "INSTANCE_LABEL_URL_2D"
        }
        Geometry::Classification {} => "CLASSIFICATION_2D",
        Geometry::Classification3d {} => "CLASSIFICATION_3D",
        Geometry::Cuboid3d { position, dimensions, rotation } => {
            let keys = ["pos_x", "pos_y", "pos_z", "dim_x", "dim_y", "dim_z"];
            for (k, v) in keys.iter().zip(position.iter().chain(dimensions)) {
                attributes.insert((*k).into(), json!(v));
            }
            for (k, v) in ["rot_w", "rot_x", "rot_y", "rot_z"].iter().zip(rotation) {
                attributes.insert((*k).into(), json!(v));
            }
            "CUBOID_3D"
        }
        Geometry::TextToken { index, token, visible } => {
            attributes.insert("index".into(), json!(index));
            attributes.insert("token".into(), json!(token));
            attributes.insert("visible".into(), json!(visible));
            "TEXT_TOKEN"
        }
    };
    if let Some(c) = label.confidence {
        attributes.insert("confidence".into(), json!(c));
    }
    if label.iscrowd {
        attributes.insert("iscrowd".into(), true.into());
    }
    if let Some(Value::Object(user)) = &label.attributes {
        for (k, v) in user {
            attributes.insert(format!("user__{k}"), v.clone());
        }
    }
    let sensor = label.sensor_id.clone().unwrap_or_else(|| "DEFAULT".to_string());
    let mask = matches!(label.geometry, Geometry::SemanticMask { .. } | Geometry::InstanceMask { .. });
    let mut rows = vec![json!({
        "uuid": label.label_id,
        "label_type": label_type,
        "label": if mask { "__mask".to_string() } else { label.class.clone().unwrap_or_default() },
        "class_id": if mask { None } else { label.class_id },
        "label_coordinate_frame": sensor,
        "attributes": attributes,
    })];
    if let Geometry::InstanceMask { instances, .. } = &label.geometry {
        for instance in instances {
            rows.push(json!({
                "uuid": format!("{}_{}", label.label_id, instance.id),
                "label_type": "INSTANCE_LABEL_2D",
                "label": instance.class,
                "label_coordinate_frame": sensor,
                "attributes": { "id": instance.id },
            }));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: RowRules = RowRules { mirrors: false, proposals: false };

    /// The frame row the 1.0.7 client was observed to write (docs/AQUARIUM.md).
    fn observed_row() -> Value {
        serde_json::from_str(
            r#"{"task_id": "frame_0", "date_captured": "2021-01-01T00:00:00", "device_id": "cam0",
            "coordinate_frames": [{"coordinate_frame_id": "DEFAULT", "coordinate_frame_type": "IMAGE", "coordinate_frame_metadata": "{\"parent_frame_id\": \"world\"}"},
                                  {"coordinate_frame_id": "world", "coordinate_frame_type": "WORLD", "coordinate_frame_metadata": "{\"parent_frame_id\": null}"}],
            "sensor_data": [{"coordinate_frame": "DEFAULT", "data_urls": {"image_url": "http://127.0.0.1:18080/img/0.jpg"}, "date_captured": "2021-01-01T00:00:00+00:00", "sensor_id": "DEFAULT", "sensor_metadata": {"width": 640, "height": 480}, "sensor_type": "IMAGE_V0", "mirror_asset": false}],
            "geo_data": {"geo_EPSG4326_lat": 37.7, "geo_EPSG4326_lon": -122.4}, "reuse_latest_embedding": false, "change": "ADD",
            "user__weather": "sunny", "user__speed": 3, "user__tags": ["a", "b"],
            "user_metadata_types": {"user__weather": "str", "user__speed": "float", "user__tags": "str"},
            "user_metadata_modes": {"user__weather": "scalar", "user__speed": "scalar", "user__tags": "list"}}"#,
        )
        .unwrap()
    }

    fn observed_labels() -> Value {
        serde_json::from_str(
            r#"{"task_id": "frame_0", "label_data": [{"uuid": "f0_l0", "label_type": "BBOX_2D", "label": "dog", "class_id": 1, "label_coordinate_frame": "DEFAULT", "attributes": {"top": 0.0, "left": 5, "width": 50, "height": 40.5, "user__occluded": true}, "reuse_latest_embedding": false, "change": "ADD"}], "type": "GT"}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_observed_row_becomes_a_frame() {
        let frame =
            frame_from_row(&observed_row(), Some(&observed_labels()), RowEmbeddings::default(), RULES, "f").unwrap();
        assert_eq!(frame.frame_id, "frame_0");
        assert_eq!(frame.metadata["speed"], MetaValue::Float(3.0), "the declared type wins over the JSON's");
        assert_eq!(frame.metadata[DEVICE_ID], MetaValue::String("cam0".into()));
        assert_eq!(frame.sensors[0].width, Some(640));
        assert_eq!(frame.geo, Some(Geo { lat: 37.7, lon: -122.4 }));
        let label = &frame.labels.as_ref().unwrap()[0];
        assert_eq!(label.geometry, Geometry::Box2d { top: 0.0, left: 5.0, width: 50.0, height: 40.5 });
        assert_eq!(label.attributes["occluded"], Value::Bool(true));
    }

    #[test]
    fn what_milkglass_cannot_keep_is_refused_by_name() {
        let cases: [(&str, Value, &str); 4] = [
            (
                "coordinate_frames",
                json!([{"coordinate_frame_id": "cam", "coordinate_frame_type": "IMAGE_PROJECTION", "coordinate_frame_metadata": "{\"fx\": 1}"}]),
                "coordinate_frames[0]",
            ),
            ("change", json!("MODIFY"), "f.change"),
            (
                "sensor_data",
                json!([{"sensor_type": "OBJ_V0", "data_urls": {"obj_url": "http://a/b.obj"}}]),
                "sensor_type",
            ),
            ("user__x", json!({"nested": 1}), "user__x"),
        ];
        for (key, value, field) in cases {
            let mut row = observed_row();
            row[key] = value;
            let err = frame_from_row(&row, None, RowEmbeddings::default(), RULES, "f").unwrap_err();
            assert!(err.field.contains(field), "{key}: {err:?}");
        }
        let mut labels = observed_labels();
        labels["label_data"][0]["attributes"]["weather"] = json!("rain");
        let err = frame_from_row(&observed_row(), Some(&labels), RowEmbeddings::default(), RULES, "f").unwrap_err();
        assert!(err.field.ends_with("attributes.weather"), "{err:?}");
    }

    #[test]
    fn labels_of_another_frame_do_not_line_up() {
        let mut labels = observed_labels();
        labels["task_id"] = json!("frame_1");
        let err = frame_from_row(&observed_row(), Some(&labels), RowEmbeddings::default(), RULES, "f").unwrap_err();
        assert!(err.message.contains("do not line up"), "{err:?}");
    }

    #[test]
    fn instance_masks_gather_their_instances() {
        let list = json!([
            {"uuid": "m", "label_type": "INSTANCE_LABEL_URL_2D", "label": "__mask", "attributes": {"url": "http://a/m.png"}},
            {"uuid": "m_1", "label_type": "INSTANCE_LABEL_2D", "label": "dog", "attributes": {"id": 1}},
            {"uuid": "m_2", "label_type": "INSTANCE_LABEL_2D", "label": "cat", "attributes": {"id": 2}},
        ]);
        let labels = labels_from_json(&list, false, "l").unwrap();
        assert_eq!(labels.len(), 1);
        let Geometry::InstanceMask { instances, .. } = &labels[0].geometry else { panic!() };
        assert_eq!(instances.len(), 2);
        let orphan =
            json!([{"uuid": "x_1", "label_type": "INSTANCE_LABEL_2D", "label": "dog", "attributes": {"id": 1}}]);
        assert!(labels_from_json(&orphan, false, "l").is_err());
    }

    #[test]
    fn inferences_need_a_confidence_and_take_no_frame_embedding() {
        let row = json!({"task_id": "f", "inference_data": [{"uuid": "i", "label_type": "BBOX_2D", "label": "dog", "attributes": {"top": 1, "left": 1, "width": 1, "height": 1}}]});
        let err = inferences_from_row(&row, RowEmbeddings::default(), "r").unwrap_err();
        assert!(err.field.ends_with("confidence"), "{err:?}");
        let embeddings = RowEmbeddings { frame: Some(vec![1.0, 2.0]), ..Default::default() };
        assert!(inferences_from_row(&row, embeddings, "r").unwrap_err().field.ends_with("frame_embeddings"));
    }
}
