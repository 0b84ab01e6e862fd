//! The read path: one frame with everything attached, and filtered, paged listings.

use crate::catalog::load_dataset;
use crate::db::{json_column, optional_json_column};
use crate::{DatasetInfo, Store, StoreError, StoreResult};
use milkglass_core::{Geometry, Invalid, SensorKind};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Row, params_from_iter};
use serde::Serialize;
use std::collections::BTreeMap;

/// A frame as stored, in the shape the API returns it.
#[derive(Debug, Clone, Serialize)]
pub struct FrameRow {
    pub frame_id: String,
    pub timestamp: Option<String>,
    pub sensors: serde_json::Value,
    pub metadata: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo: Option<serde_json::Value>,
    pub label_count: i64,
    pub has_embedding: bool,
    /// The dataset version that wrote this revision of the frame.
    pub version: i64,
    /// Its ground-truth labels, in listings that ask for them (`FrameFilter::labels`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<LabelRow>>,
    /// One inference set's outputs on it, in listings that name the set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inferences: Option<Vec<LabelRow>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelRow {
    pub label_id: String,
    pub frame_id: String,
    pub class: Option<String>,
    pub class_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensor_id: Option<String>,
    pub geometry: Geometry,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<serde_json::Value>,
    pub iscrowd: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confidence: Option<f64>,
    pub has_embedding: bool,
    /// A classification inference's class probabilities, in class-map order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probabilities: Option<Vec<f64>>,
}

/// One frame with its labels and every inference set's outputs for it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredFrame {
    #[serde(flatten)]
    pub frame: FrameRow,
    pub labels: Vec<LabelRow>,
    /// Inference set name to its outputs on this frame.
    pub inferences: BTreeMap<String, Vec<LabelRow>>,
}

/// Comparison in a metadata predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// A list value contains the operand.
    Contains,
    /// The key is present (operand ignored).
    Exists,
}

impl std::str::FromStr for MetaOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "eq" => MetaOp::Eq,
            "ne" => MetaOp::Ne,
            "lt" => MetaOp::Lt,
            "le" => MetaOp::Le,
            "gt" => MetaOp::Gt,
            "ge" => MetaOp::Ge,
            "contains" => MetaOp::Contains,
            "exists" => MetaOp::Exists,
            other => return Err(format!("unknown operator {other:?}; use eq, ne, lt, le, gt, ge, contains or exists")),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetaPredicate {
    pub key: String,
    pub op: MetaOp,
    pub value: serde_json::Value,
}

/// Which frames to list. All conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct FrameFilter {
    pub metadata: Vec<MetaPredicate>,
    /// Frames with at least one ground-truth label of this class.
    pub class: Option<String>,
    pub min_labels: Option<i64>,
    pub max_labels: Option<i64>,
    pub sensor_kind: Option<SensorKind>,
    /// Keyset cursor: list frames whose id sorts after this one.
    pub after: Option<String>,
    pub limit: usize,
    /// Skip this many matching frames (after `after`): for jumping into a long listing, as a
    /// grid's scrollbar does; `after` is the cheap way to page on.
    pub offset: usize,
    /// Read the dataset as it was at this version (default: the latest).
    pub version: Option<i64>,
    /// Also count every frame the filter matches (`FramePage::total`; `after` and `offset` aside).
    pub count: bool,
    /// Attach each listed frame's ground-truth labels.
    pub labels: bool,
    /// Attach each listed frame's outputs of this inference set.
    pub inference_set: Option<String>,
    /// Only the frames of this segment (of frames).
    pub segment: Option<String>,
    /// Only these frames (at most `MAX_PAGE` ids).
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FramePage {
    pub frames: Vec<FrameRow>,
    /// Pass as `after` to get the next page; absent on the last page.
    pub next: Option<String>,
    pub version: i64,
    /// How many frames match the filter, when asked for (`count`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    /// Whether the filter index of the version chose the page (else a scan of the rows did).
    pub from_index: bool,
}

pub const MAX_PAGE: usize = 1000;

/// Refuses versions the dataset has not reached (the answer would silently be "latest").
fn check_version(dataset: &DatasetInfo, version: Option<i64>) -> StoreResult<()> {
    match version {
        Some(v) if v < 0 || v > dataset.version => Err(StoreError::invalid(
            "version",
            format!("version {v} does not exist; this dataset's versions are 0 to {}", dataset.version),
        )),
        _ => Ok(()),
    }
}

/// SQL for "this revision is visible at the requested version". `?v` is bound by the caller.
pub(crate) fn visible(alias: &str, version: Option<i64>) -> String {
    match version {
        None => format!("{alias}.valid_to IS NULL"),
        Some(v) => format!("{alias}.valid_from <= {v} AND ({alias}.valid_to IS NULL OR {alias}.valid_to > {v})"),
    }
}

const FRAME_COLUMNS: &str =
    "f.frame_id, f.timestamp, f.sensors, f.metadata, f.geo_lat, f.geo_lon, f.label_count, f.embedding, f.valid_from";

fn frame_from_row(r: &Row) -> rusqlite::Result<FrameRow> {
    let lat: Option<f64> = r.get(4)?;
    let lon: Option<f64> = r.get(5)?;
    Ok(FrameRow {
        frame_id: r.get(0)?,
        timestamp: r.get(1)?,
        sensors: json_column(r, 2)?,
        metadata: json_column(r, 3)?,
        geo: lat.zip(lon).map(|(lat, lon)| serde_json::json!({"lat": lat, "lon": lon})),
        label_count: r.get(6)?,
        has_embedding: r.get::<_, Option<i64>>(7)?.is_some(),
        version: r.get(8)?,
        labels: None,
        inferences: None,
    })
}

const LABEL_COLUMNS: &str = "l.label_id, l.frame_id, l.class_id, l.sensor_id, l.geometry, l.attributes, l.iscrowd, \
     l.confidence, l.top, l.\"left\", l.width, l.height, l.embedding, l.probabilities";

impl Store {
    /// `(frame id, URL of its first image sensor)` for every current frame, ordered by id: what
    /// embedding generation reads. Frames without an image sensor have `None`.
    pub fn frame_image_urls(&self, dataset: &DatasetInfo) -> StoreResult<Vec<(String, Option<String>)>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT frame_id, sensors FROM frames WHERE dataset_id = ?1 AND valid_to IS NULL ORDER BY frame_id",
            )?;
            let rows = stmt.query_map([dataset.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut urls = Vec::new();
            for row in rows {
                let (frame_id, sensors) = row?;
                let sensors: Vec<milkglass_core::Sensor> = serde_json::from_str(&sensors)
                    .map_err(|e| StoreError::Corrupt(format!("sensors of frame {frame_id:?}: {e}")))?;
                let url = sensors.into_iter().find(|s| s.kind == SensorKind::Image).map(|s| s.url);
                urls.push((frame_id, url));
            }
            Ok(urls)
        })
    }

    /// One frame with its labels and inferences, as of `version` (default latest).
    pub fn frame(&self, dataset: &DatasetInfo, frame_id: &str, version: Option<i64>) -> StoreResult<StoredFrame> {
        check_version(dataset, version)?;
        self.db().read(|conn| {
            let frame = conn
                .query_row(
                    &format!(
                        "SELECT {FRAME_COLUMNS} FROM frames f WHERE f.dataset_id = ?1 AND f.frame_id = ?2 AND {}",
                        visible("f", version)
                    ),
                    rusqlite::params![dataset.id, frame_id],
                    frame_from_row,
                )
                .optional()?
                .ok_or_else(|| StoreError::not_found(format!("frame {frame_id:?}")))?;
            let classes = class_names(conn, dataset)?;
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LABEL_COLUMNS}, COALESCE(s.name, '')
                 FROM labels l LEFT JOIN inference_sets s ON s.id = l.inference_set_id
                 WHERE l.dataset_id = ?1 AND l.frame_id = ?2 AND {} ORDER BY l.inference_set_id, l.label_id",
                visible("l", version)
            ))?;
            let mut labels = Vec::new();
            let mut inferences: BTreeMap<String, Vec<LabelRow>> = BTreeMap::new();
            let rows = stmt.query_map(rusqlite::params![dataset.id, frame_id], |r| {
                Ok((label_from_row(r, &classes)?, r.get::<_, String>(14)?))
            })?;
            for row in rows {
                let (label, set) = row?;
                if set.is_empty() {
                    labels.push(label);
                } else {
                    inferences.entry(set).or_default().push(label);
                }
            }
            Ok(StoredFrame { frame, labels, inferences })
        })
    }

    /// Lists frames matching `filter`, ordered by frame id, one page at a time.
    pub fn list_frames(&self, project: &str, dataset: &str, filter: &FrameFilter) -> StoreResult<FramePage> {
        self.db().read(|conn| {
            let dataset = load_dataset(conn, project, dataset)?;
            check_version(&dataset, filter.version)?;
            let limit = filter.limit.clamp(1, MAX_PAGE);
            let set_id = match &filter.inference_set {
                None => None,
                Some(name) => Some(
                    conn.query_row(
                        "SELECT id FROM inference_sets WHERE dataset_id = ?1 AND name = ?2",
                        rusqlite::params![dataset.id, name],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()?
                    .ok_or_else(|| StoreError::not_found(format!("inference set {name:?}")))?,
                ),
            };
            let mut conditions = vec!["f.dataset_id = ?".to_string(), visible("f", filter.version)];
            let mut args: Vec<SqlValue> = vec![dataset.id.into()];
            if let Some(min) = filter.min_labels {
                conditions.push("f.label_count >= ?".into());
                args.push(min.into());
            }
            if let Some(max) = filter.max_labels {
                conditions.push("f.label_count <= ?".into());
                args.push(max.into());
            }
            if let Some(kind) = filter.sensor_kind {
                conditions.push(
                    "EXISTS (SELECT 1 FROM json_each(f.sensors) s WHERE json_extract(s.value, '$.kind') = ?)".into(),
                );
                args.push(kind.as_str().to_string().into());
            }
            if let Some(class) = &filter.class {
                let class_id = class_id_of(conn, project, class)?;
                conditions.push(format!(
                    "EXISTS (SELECT 1 FROM labels l WHERE l.dataset_id = f.dataset_id AND l.frame_id = f.frame_id
                             AND l.inference_set_id = 0 AND l.class_id = ? AND {})",
                    visible("l", filter.version)
                ));
                args.push(class_id.into());
            }
            for (i, p) in filter.metadata.iter().enumerate() {
                let (condition, mut values) = metadata_condition(i, p)?;
                conditions.push(condition);
                args.append(&mut values);
            }
            if let Some(segment) = &filter.segment {
                let items = segment_items(conn, &dataset, segment)?;
                conditions.push("f.frame_id IN (SELECT value FROM json_each(?))".into());
                args.push(items.into());
            }
            if !filter.ids.is_empty() {
                if filter.ids.len() > MAX_PAGE {
                    return Err(StoreError::invalid("id", format!("give at most {MAX_PAGE} frame ids")));
                }
                conditions.push("f.frame_id IN (SELECT value FROM json_each(?))".into());
                args.push(serde_json::to_string(&filter.ids)?.into());
            }
            let total = if filter.count {
                let sql = format!("SELECT COUNT(*) FROM frames f WHERE {}", conditions.join(" AND "));
                Some(conn.query_row(&sql, params_from_iter(args.iter()), |r| r.get::<_, i64>(0))?)
            } else {
                None
            };
            if let Some(after) = &filter.after {
                conditions.push("f.frame_id > ?".into());
                args.push(after.clone().into());
            }
            let sql = format!(
                "SELECT {FRAME_COLUMNS} FROM frames f WHERE {} ORDER BY f.frame_id LIMIT {} OFFSET {}",
                conditions.join(" AND "),
                limit + 1,
                filter.offset
            );
            let mut stmt = conn.prepare(&sql)?;
            let mut frames = stmt.query_map(params_from_iter(args), frame_from_row)?.collect::<Result<Vec<_>, _>>()?;
            let next = if frames.len() > limit {
                frames.truncate(limit);
                frames.last().map(|f| f.frame_id.clone())
            } else {
                None
            };
            if filter.labels || set_id.is_some() {
                attach_labels(conn, &dataset, filter, set_id, &mut frames)?;
            }
            Ok(FramePage { frames, next, version: filter.version.unwrap_or(dataset.version), total, from_index: false })
        })
    }
}

impl Store {
    /// [`Store::list_frames`] answered from a frame index of the dataset's current version:
    /// the index picks the page's ids and counts, the rows are read by id.
    pub fn list_frames_indexed(
        &self,
        project: &str,
        dataset: &str,
        filter: &FrameFilter,
        index: &crate::FrameIndex,
    ) -> StoreResult<Option<FramePage>> {
        let (dataset, class_id, segment) = self.db().read(|conn| {
            let dataset = load_dataset(conn, project, dataset)?;
            check_version(&dataset, filter.version)?;
            let class_id = filter.class.as_ref().map(|c| class_id_of(conn, project, c)).transpose()?;
            let segment = match &filter.segment {
                Some(name) => Some(serde_json::from_str::<Vec<String>>(&segment_items(conn, &dataset, name)?)?),
                None => None,
            };
            Ok((dataset, class_id, segment))
        })?;
        if filter.ids.len() > MAX_PAGE {
            return Err(StoreError::invalid("id", format!("give at most {MAX_PAGE} frame ids")));
        }
        if index.dataset_uid != dataset.uid || index.version != dataset.version {
            return Ok(None);
        }
        let Some(selection) = index.select(filter, class_id, segment.as_deref())? else { return Ok(None) };
        let frames = if selection.ids.is_empty() {
            Vec::new()
        } else {
            let by_id = FrameFilter {
                ids: selection.ids,
                limit: MAX_PAGE,
                labels: filter.labels,
                inference_set: filter.inference_set.clone(),
                ..FrameFilter::default()
            };
            self.list_frames(project, &dataset.name, &by_id)?.frames
        };
        Ok(Some(FramePage {
            frames,
            next: selection.next,
            version: index.version,
            total: selection.total,
            from_index: true,
        }))
    }
}

fn class_id_of(conn: &Connection, project: &str, class: &str) -> StoreResult<i64> {
    let project = crate::catalog::load_project(conn, project)?;
    let class = project
        .classes
        .by_name(class)
        .ok_or_else(|| StoreError::Invalid(Invalid::new("class", format!("unknown class {class:?}"))))?;
    Ok(i64::from(class.id))
}

/// A segment of frames' ids, as JSON text.
fn segment_items(conn: &Connection, dataset: &DatasetInfo, segment: &str) -> StoreResult<String> {
    conn.query_row(
        "SELECT items FROM segments WHERE dataset_id = ?1 AND name = ?2 AND item_kind = 'frames'",
        rusqlite::params![dataset.id, segment],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found(format!("segment of frames {segment:?}")))
}

/// Attaches the page's ground-truth labels (when asked) and one inference set's outputs, in one
/// query for the whole page, so a grid draws its overlays without a request per frame.
fn attach_labels(
    conn: &Connection,
    dataset: &DatasetInfo,
    filter: &FrameFilter,
    set_id: Option<i64>,
    frames: &mut [FrameRow],
) -> StoreResult<()> {
    let classes = class_names(conn, dataset)?;
    let ids: Vec<&str> = frames.iter().map(|f| f.frame_id.as_str()).collect();
    let mut sets = Vec::new();
    if filter.labels {
        sets.push(0);
    }
    sets.extend(set_id);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LABEL_COLUMNS}, l.inference_set_id FROM labels l
         WHERE l.dataset_id = ?1 AND l.frame_id IN (SELECT value FROM json_each(?2))
           AND l.inference_set_id IN (SELECT value FROM json_each(?3)) AND {}
         ORDER BY l.frame_id, l.label_id",
        visible("l", filter.version)
    ))?;
    let ids = serde_json::to_string(&ids)?;
    let sets = serde_json::to_string(&sets)?;
    let rows = stmt.query_map(rusqlite::params![dataset.id, ids, sets], |r| {
        Ok((label_from_row(r, &classes)?, r.get::<_, i64>(14)?))
    })?;
    let mut by_frame: BTreeMap<String, (Vec<LabelRow>, Vec<LabelRow>)> = BTreeMap::new();
    for row in rows {
        let (label, set) = row?;
        let entry = by_frame.entry(label.frame_id.clone()).or_default();
        if set == 0 { entry.0.push(label) } else { entry.1.push(label) }
    }
    for frame in frames {
        let (labels, inferences) = by_frame.remove(&frame.frame_id).unwrap_or_default();
        frame.labels = filter.labels.then_some(labels);
        frame.inferences = set_id.map(|_| inferences);
    }
    Ok(())
}

/// SQL for one metadata predicate. Keys are checked against the metadata key alphabet,
/// and values are always bound, never spliced into the SQL.
/// Refuses metadata keys outside the key alphabet (they are spliced into JSON paths).
pub(crate) fn check_metadata_key(field: &str, key: &str) -> StoreResult<()> {
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::invalid(field, "metadata keys use letters, digits and '_'"));
    }
    Ok(())
}

/// A predicate's operand as SQLite compares it.
pub(crate) fn operand_cell(field: &str, v: &serde_json::Value) -> StoreResult<SqlValue> {
    Ok(match v {
        serde_json::Value::String(s) => SqlValue::Text(s.clone()),
        serde_json::Value::Bool(b) => SqlValue::Integer(*b as i64),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::Object(o) if o.len() == 1 && o.get("timestamp").is_some_and(|t| t.is_string()) => {
            SqlValue::Text(o["timestamp"].as_str().unwrap_or_default().to_string())
        }
        _ => {
            return Err(StoreError::invalid(field, "compare with a string, number, bool or {\"timestamp\": ...}"));
        }
    })
}

fn metadata_condition(i: usize, p: &MetaPredicate) -> StoreResult<(String, Vec<SqlValue>)> {
    let field = format!("meta[{i}]");
    check_metadata_key(&field, &p.key)?;
    let path = SqlValue::Text(format!("$.{}", p.key));
    let operand = |v: &serde_json::Value| operand_cell(&field, v);
    // Timestamps are stored as {"timestamp": "<canonical text>"}, and the canonical text
    // sorts chronologically; an operand that reads as a timestamp is put in the same form.
    let timestamp_operand = match &p.value {
        serde_json::Value::String(text) => milkglass_core::parse_timestamp("meta", text).ok(),
        _ => None,
    }
    .map(|t| SqlValue::Text(milkglass_core::format_timestamp(&t)));
    let sql_op = match p.op {
        MetaOp::Eq => "=",
        MetaOp::Ne => "<>",
        MetaOp::Lt => "<",
        MetaOp::Le => "<=",
        MetaOp::Gt => ">",
        MetaOp::Ge => ">=",
        MetaOp::Exists => return Ok(("json_type(f.metadata, ?) IS NOT NULL".into(), vec![path])),
        MetaOp::Contains => {
            return Ok((
                "EXISTS (SELECT 1 FROM json_each(f.metadata, ?) e WHERE e.value = ?)".into(),
                vec![path, operand(&p.value)?],
            ));
        }
    };
    let plain = operand(&p.value)?;
    let stamped = timestamp_operand.unwrap_or_else(|| plain.clone());
    Ok((
        format!(
            "CASE WHEN json_type(f.metadata, ? || '.timestamp') IS NOT NULL \
             THEN json_extract(f.metadata, ? || '.timestamp') {sql_op} ? \
             ELSE json_extract(f.metadata, ?) {sql_op} ? END"
        ),
        vec![path.clone(), path.clone(), stamped, path, plain],
    ))
}

fn class_names(conn: &Connection, dataset: &DatasetInfo) -> StoreResult<BTreeMap<i64, String>> {
    let classes: String =
        conn.query_row("SELECT classes FROM projects WHERE id = ?1", [dataset.project_id], |r| r.get(0))?;
    let classes: milkglass_core::ClassMap = serde_json::from_str(&classes)?;
    Ok(classes.0.into_iter().map(|c| (i64::from(c.id), c.name)).collect())
}

fn label_from_row(r: &Row, classes: &BTreeMap<i64, String>) -> rusqlite::Result<LabelRow> {
    let class_id: Option<i64> = r.get(2)?;
    Ok(LabelRow {
        label_id: r.get(0)?,
        frame_id: r.get(1)?,
        class: class_id.and_then(|id| classes.get(&id).cloned()),
        class_id,
        sensor_id: r.get(3)?,
        geometry: match optional_json_column(r, 4)? {
            Some(geometry) => geometry,
            None => Geometry::Box2d { top: r.get(8)?, left: r.get(9)?, width: r.get(10)?, height: r.get(11)? },
        },
        attributes: optional_json_column(r, 5)?,
        iscrowd: r.get(6)?,
        confidence: r.get(7)?,
        has_embedding: r.get::<_, Option<i64>>(12)?.is_some(),
        probabilities: optional_json_column(r, 13)?,
    })
}
