use crate::frame::check_dim;
use crate::name::check_id;
use crate::{ClassMap, Invalid, InvalidResult, check_data_url, check_embedding, check_finite};
use serde::{Deserialize, Serialize};

/// A ground-truth label or a model inference (which adds `confidence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Label {
    pub label_id: String,
    /// Required when labels are uploaded on their own; implied for inline labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_id: Option<String>,
    /// Class name from the project's class map; mask labels carry classes per pixel or instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor_id: Option<String>,
    pub geometry: Geometry,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub attributes: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub iscrowd: bool,
    /// Model confidence in [0, 1]; required for inferences (except masks), absent on labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// A classification inference's full class probabilities: a list in class-map order, or
    /// a map from class name to probability (missing classes are 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Probabilities>,
}

/// Class probabilities as an upload gives them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Probabilities {
    List(Vec<f64>),
    ByClass(std::collections::BTreeMap<String, f64>),
}

/// How far a probability vector's sum may be from 1 (rounding in the sender's floats).
const PROBABILITY_SUM_TOLERANCE: f64 = 1e-3;

impl Probabilities {
    /// The probabilities in class-map order, checked: one per class (or known class names),
    /// finite, in [0, 1], summing to 1.
    pub fn in_class_order(&self, classes: &ClassMap) -> InvalidResult<Vec<f64>> {
        let field = "probabilities";
        let values = match self {
            Probabilities::List(list) => {
                if list.len() != classes.0.len() {
                    return Err(Invalid::new(
                        field,
                        format!(
                            "has {} values; the class map has {} classes, in its order",
                            list.len(),
                            classes.0.len()
                        ),
                    ));
                }
                list.clone()
            }
            Probabilities::ByClass(map) => {
                if let Some(unknown) = map.keys().find(|name| classes.by_name(name).is_none()) {
                    return Err(unknown_class(&format!("{field}.{unknown}"), unknown));
                }
                classes.0.iter().map(|c| map.get(&c.name).copied().unwrap_or(0.0)).collect()
            }
        };
        for (i, p) in values.iter().enumerate() {
            check_finite(&format!("{field}[{i}]"), *p)?;
            if !(0.0..=1.0).contains(p) {
                return Err(Invalid::new(format!("{field}[{i}]"), "must be between 0 and 1"));
            }
        }
        let sum: f64 = values.iter().sum();
        if (sum - 1.0).abs() > PROBABILITY_SUM_TOLERANCE {
            return Err(Invalid::new(field, format!("sum to {sum}; they must sum to 1")));
        }
        Ok(values)
    }
}

/// Where a label is, by kind. Pixel coordinates for 2D kinds, metres for 3D.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Geometry {
    Classification {},
    Box2d { top: f64, left: f64, width: f64, height: f64 },
    PolygonList { polygons: Vec<Vec<[f64; 2]>> },
    LineSegment { x1: f64, y1: f64, x2: f64, y2: f64 },
    Keypoints { keypoints: Vec<Keypoint> },
    SemanticMask { url: String },
    InstanceMask { url: String, instances: Vec<MaskInstance> },
    Cuboid3d { position: [f64; 3], dimensions: [f64; 3], rotation: [f64; 4] },
    Classification3d {},
    TextToken { index: u32, token: String, visible: bool },
}

/// Kind names as they appear in JSON and in the labels table.
pub type LabelKind = &'static str;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keypoint {
    pub x: f64,
    pub y: f64,
    pub name: String,
}

/// One instance of an instance-segmentation mask: its pixel value and class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskInstance {
    pub id: u32,
    pub class: String,
}

/// A class named by a label, resolved against the class map.
pub type ClassRef = Option<u32>;

impl Geometry {
    pub fn kind(&self) -> LabelKind {
        match self {
            Geometry::Classification {} => "classification",
            Geometry::Box2d { .. } => "box2d",
            Geometry::PolygonList { .. } => "polygon_list",
            Geometry::LineSegment { .. } => "line_segment",
            Geometry::Keypoints { .. } => "keypoints",
            Geometry::SemanticMask { .. } => "semantic_mask",
            Geometry::InstanceMask { .. } => "instance_mask",
            Geometry::Cuboid3d { .. } => "cuboid3d",
            Geometry::Classification3d {} => "classification3d",
            Geometry::TextToken { .. } => "text_token",
        }
    }

    fn is_mask(&self) -> bool {
        matches!(self, Geometry::SemanticMask { .. } | Geometry::InstanceMask { .. })
    }

    /// The axis-aligned 2D box `[top, left, width, height]`, when the kind has one.
    pub fn bbox(&self) -> Option<[f64; 4]> {
        match *self {
            Geometry::Box2d { top, left, width, height } => Some([top, left, width, height]),
            _ => None,
        }
    }

    fn validate(&self, classes: &ClassMap) -> InvalidResult<()> {
        let finite = |name: &str, v: f64| check_finite(&format!("geometry.{name}"), v);
        match self {
            Geometry::Box2d { top, left, width, height } => {
                for (name, v) in [("top", *top), ("left", *left), ("width", *width), ("height", *height)] {
                    finite(name, v)?;
                }
                for (name, v) in [("width", *width), ("height", *height)] {
                    if v < 0.0 {
                        return Err(Invalid::new(format!("geometry.{name}"), "a box cannot have a negative size"));
                    }
                }
            }
            Geometry::PolygonList { polygons } => {
                for (p, polygon) in polygons.iter().enumerate() {
                    for (v, [x, y]) in polygon.iter().enumerate() {
                        finite(&format!("polygons[{p}][{v}][0]"), *x)?;
                        finite(&format!("polygons[{p}][{v}][1]"), *y)?;
                    }
                }
            }
            Geometry::LineSegment { x1, y1, x2, y2 } => {
                for (name, v) in [("x1", *x1), ("y1", *y1), ("x2", *x2), ("y2", *y2)] {
                    finite(name, v)?;
                }
            }
            Geometry::Keypoints { keypoints } => {
                let mut names = std::collections::HashSet::new();
                for (i, k) in keypoints.iter().enumerate() {
                    finite(&format!("keypoints[{i}].x"), k.x)?;
                    finite(&format!("keypoints[{i}].y"), k.y)?;
                    if !names.insert(k.name.as_str()) {
                        return Err(Invalid::new(
                            format!("geometry.keypoints[{i}].name"),
                            "keypoint names must be unique",
                        ));
                    }
                }
            }
            Geometry::SemanticMask { url } => check_data_url("geometry.url", url)?,
            Geometry::InstanceMask { url, instances } => {
                check_data_url("geometry.url", url)?;
                for (i, instance) in instances.iter().enumerate() {
                    if classes.by_name(&instance.class).is_none() {
                        return Err(unknown_class(&format!("geometry.instances[{i}].class"), &instance.class));
                    }
                }
            }
            Geometry::Cuboid3d { position, dimensions, rotation } => {
                for (i, v) in position.iter().enumerate() {
                    finite(&format!("position[{i}]"), *v)?;
                }
                for (i, v) in dimensions.iter().enumerate() {
                    finite(&format!("dimensions[{i}]"), *v)?;
                    if *v < 0.0 {
                        return Err(Invalid::new(
                            format!("geometry.dimensions[{i}]"),
                            "a cuboid cannot have a negative size",
                        ));
                    }
                }
                for (i, v) in rotation.iter().enumerate() {
                    finite(&format!("rotation[{i}]"), *v)?;
                }
            }
            Geometry::Classification {} | Geometry::Classification3d {} | Geometry::TextToken { .. } => {}
        }
        Ok(())
    }
}

fn unknown_class(field: &str, name: &str) -> Invalid {
    Invalid::new(field, format!("unknown class {name:?}; add it to the project's class map first"))
}

impl Label {
    /// Checks the label against the class map and returns its class id (None for masks
    /// without a class). Inferences must carry a confidence; labels must not.
    pub fn validate(
        &self,
        classes: &ClassMap,
        is_inference: bool,
        embedding_dim: Option<usize>,
    ) -> InvalidResult<Option<u32>> {
        check_id("label_id", &self.label_id)?;
        if let Some(frame_id) = &self.frame_id {
            check_id("frame_id", frame_id)?;
        }
        self.geometry.validate(classes)?;
        let class_id = match &self.class {
            Some(name) => Some(classes.by_name(name).ok_or_else(|| unknown_class("class", name))?.id),
            None if self.geometry.is_mask() => None,
            None => return Err(Invalid::new("class", "is required for this kind of label")),
        };
        match (self.confidence, is_inference) {
            (Some(c), _) => {
                check_finite("confidence", c)?;
                if !(0.0..=1.0).contains(&c) {
                    return Err(Invalid::new("confidence", "must be between 0 and 1"));
                }
                if !is_inference {
                    return Err(Invalid::new("confidence", "only inferences carry a confidence"));
                }
            }
            (None, true) if !self.geometry.is_mask() => {
                return Err(Invalid::new("confidence", "is required for inferences"));
            }
            (None, _) => {}
        }
        if let Some(embedding) = &self.embedding {
            check_embedding("embedding", embedding)?;
            check_dim("embedding", embedding.len(), embedding_dim)?;
        }
        if let Some(probabilities) = &self.probabilities {
            if !is_inference {
                return Err(Invalid::new("probabilities", "only inferences carry class probabilities"));
            }
            probabilities.in_class_order(classes)?;
        }
        Ok(class_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClassEntry;

    fn classes() -> ClassMap {
        ClassMap(vec![ClassEntry { id: 1, name: "dog".into(), color: [0, 0, 0], train_name: None, category: None }])
    }

    fn parse(json: &str) -> Label {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn box_with_negative_size_is_refused() {
        let l = parse(
            r#"{"label_id":"l","class":"dog","geometry":{"kind":"box2d","top":0,"left":0,"width":-1,"height":2}}"#,
        );
        assert_eq!(l.validate(&classes(), false, None).unwrap_err().field, "geometry.width");
    }

    #[test]
    fn unknown_class_and_missing_confidence() {
        let l = parse(r#"{"label_id":"l","class":"cat","geometry":{"kind":"classification"}}"#);
        assert_eq!(l.validate(&classes(), false, None).unwrap_err().field, "class");
        let l = parse(r#"{"label_id":"l","class":"dog","geometry":{"kind":"classification"}}"#);
        assert_eq!(l.validate(&classes(), true, None).unwrap_err().field, "confidence");
        assert_eq!(l.validate(&classes(), false, None).unwrap(), Some(1));
    }

    #[test]
    fn unknown_geometry_field_is_refused() {
        let err = serde_json::from_str::<Label>(
            r#"{"label_id":"l","class":"dog","geometry":{"kind":"box2d","top":0,"left":0,"width":1,"height":1,"depth":3}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("depth"), "{err}");
    }
}
