//! A dataset version's rows as Parquet tables, for SQL under the guard.
//!
//! The row store (SQLite) serves uploads, versions and one frame at a time; a query such
//! as "boxes per class over 5M labels" wants columns. So each dataset version is written
//! once as columnar snapshot files, on its first query or by the preparation after an
//! upload, into `snapshots/<dataset id>/v<version>-b<batches>-<unit>/`. A version's rows
//! never change once its batches are committed, so a snapshot never goes stale; the batch
//! count in its name tells a snapshot of a finished version from one taken while an upload
//! was still adding batches to it.
//!
//! Every table carries the hidden row id the guard counts ([`ROW_ID`]). It is not a row's
//! position but the ordinal of the *unit* the row belongs to: its frame by default, or the
//! value of a metadata key the owner names (say `driver_id`), so that "at least k rows"
//! means k frames, or k drivers, whichever table the query reads. Frames without the key
//! are one unit together: that is the stricter count.

use crate::guarded::parquet_providers;
use crate::rows::visible;
use crate::{DatasetInfo, ROW_ID, Store, StoreError, StoreResult};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;
use datafusion::parquet::arrow::ArrowWriter;
use milkglass_insight::metrics::Bbox;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) const BATCH_ROWS: usize = 16_384;

/// An inference is a true positive when it overlaps a ground-truth box of its class by at
/// least this IoU (the project default the label-error ranking matches at, too).
pub const MATCH_IOU: f64 = 0.5;

/// Columns every `frames` table starts with; metadata keys follow, one typed column each.
const FRAME_COLUMNS: [&str; 7] = ["frame_id", "timestamp", "geo_lat", "geo_lon", "sensor_kinds", "urls", "label_count"];

/// One table of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotTable {
    /// `frames`, `labels` or `inferences_<set>`.
    pub name: String,
    /// Relative to the snapshot directory.
    file: String,
    /// Rows in the table.
    pub rows: u64,
    /// Distinct units (frames, or values of the unit key); row ids are `0..units`.
    pub units: u64,
    pub columns: Vec<String>,
    #[serde(skip)]
    dir: PathBuf,
}

impl SnapshotTable {
    pub fn file(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    pub(crate) fn set_dir(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
    }

    /// DataFusion providers over the file: as callers see it, and with the row id.
    pub fn providers(&self) -> StoreResult<(Arc<dyn TableProvider>, Arc<dyn TableProvider>)> {
        parquet_providers(&self.file())
    }
}

/// A dataset version as tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetSnapshot {
    pub version: i64,
    /// The metadata key whose values are the units; `None`: frames.
    pub unit: Option<String>,
    /// The dataset this was taken of (ids are reused; uids are not).
    dataset_uid: String,
    pub tables: Vec<SnapshotTable>,
    #[serde(skip)]
    pub(crate) dir: PathBuf,
}

/// A metadata key's column type, widened as values are seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetaType {
    Bool,
    Int,
    Float,
    /// Strings; values of other JSON types are written as JSON text.
    Text,
}

impl MetaType {
    fn of(value: &serde_json::Value) -> Option<MetaType> {
        use serde_json::Value;
        match value {
            Value::Null => None,
            Value::Bool(_) => Some(MetaType::Bool),
            Value::Number(n) if n.is_i64() => Some(MetaType::Int),
            Value::Number(_) => Some(MetaType::Float),
            _ => Some(MetaType::Text),
        }
    }

    fn widen(self, other: MetaType) -> MetaType {
        match (self, other) {
            (a, b) if a == b => a,
            (MetaType::Int, MetaType::Float) | (MetaType::Float, MetaType::Int) => MetaType::Float,
            _ => MetaType::Text,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            MetaType::Bool => DataType::Boolean,
            MetaType::Int => DataType::Int64,
            MetaType::Float => DataType::Float64,
            MetaType::Text => DataType::Utf8,
        }
    }
}

/// The column a metadata key becomes: the key itself, or `meta_<key>` where the key is
/// one of the fixed frame columns. Keys in milkglass's reserved `__mg` space are left out.
pub fn metadata_column(key: &str) -> Option<String> {
    if key.to_ascii_lowercase().contains("__mg") {
        return None;
    }
    Some(if FRAME_COLUMNS.contains(&key) { format!("meta_{key}") } else { key.to_string() })
}

impl Store {
    fn snapshots_dir(&self, dataset_id: i64) -> PathBuf {
        self.dir().join("snapshots").join(dataset_id.to_string())
    }

    pub(crate) fn remove_snapshots(&self, dataset_id: i64) {
        let dir = self.snapshots_dir(dataset_id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", dir.display());
        }
    }

    /// The dataset's tables at `version` (0 to the dataset's current version), counted in
    /// frames or in values of the metadata key `unit`. Written on first use; blocking.
    pub fn dataset_snapshot(
        &self,
        dataset: &DatasetInfo,
        version: i64,
        unit: Option<&str>,
    ) -> StoreResult<DatasetSnapshot> {
        if version < 0 || version > dataset.version {
            return Err(StoreError::invalid(
                "version",
                format!("version {version} does not exist; this dataset's versions are 0 to {}", dataset.version),
            ));
        }
        self.db().read(|conn| {
            // One read transaction: every table of the snapshot sees the same commits.
            conn.execute_batch("BEGIN")?;
            let result = self.snapshot_in(conn, dataset, version, unit);
            let _ = conn.execute_batch("COMMIT");
            result
        })
    }

    fn snapshot_in(
        &self,
        conn: &Connection,
        dataset: &DatasetInfo,
        version: i64,
        unit: Option<&str>,
    ) -> StoreResult<DatasetSnapshot> {
        let batches: i64 = conn.query_row(
            "SELECT COALESCE(SUM(batches), 0) FROM uploads WHERE dataset_id = ?1 AND version <= ?2",
            params![dataset.id, version],
            |r| r.get(0),
        )?;
        let unit_tag = match unit {
            None => "frames".to_string(),
            Some(key) => {
                use sha2::Digest;
                format!("key-{}", &hex::encode(sha2::Sha256::digest(key.as_bytes()))[..16])
            }
        };
        let root = self.snapshots_dir(dataset.id);
        let dir = root.join(format!("v{version}-b{batches}-{unit_tag}"));
        if let Some(snapshot) = read_manifest(&dir, dataset)? {
            return Ok(snapshot);
        }
        std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        let staging = root.join(format!(".staging-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
        let written = write_snapshot(conn, dataset, version, unit, &staging);
        let snapshot = match written {
            Ok(tables) => {
                let (unit, dataset_uid) = (unit.map(str::to_string), dataset.uid.clone());
                DatasetSnapshot { version, unit, dataset_uid, tables, dir: PathBuf::new() }
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let manifest = serde_json::to_vec_pretty(&snapshot)?;
        let manifest_path = staging.join("manifest.json");
        std::fs::write(&manifest_path, manifest).map_err(|e| StoreError::io(&manifest_path, e))?;
        // Another query may have written the same snapshot meanwhile: keep the first.
        if std::fs::rename(&staging, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        read_manifest(&dir, dataset)?
            .ok_or_else(|| StoreError::Corrupt(format!("snapshot {} vanished as it was written", dir.display())))
    }
}

fn read_manifest(dir: &Path, dataset: &DatasetInfo) -> StoreResult<Option<DatasetSnapshot>> {
    let path = dir.join("manifest.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let mut snapshot: DatasetSnapshot =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    if snapshot.dataset_uid != dataset.uid {
        // Left behind by a deleted dataset whose id was given to this one.
        let _ = std::fs::remove_dir_all(dir);
        return Ok(None);
    }
    for table in &mut snapshot.tables {
        table.dir = dir.to_path_buf();
    }
    snapshot.dir = dir.to_path_buf();
    Ok(Some(snapshot))
}

/// What a first pass over the frames finds: each frame's unit, and the metadata columns.
struct FrameFacts {
    unit_of_frame: HashMap<String, u32>,
    units: u64,
    meta: BTreeMap<String, (String, MetaType)>,
}

fn frame_facts(conn: &Connection, dataset_id: i64, version: i64, unit: Option<&str>) -> StoreResult<FrameFacts> {
    let mut stmt = conn.prepare(&format!(
        "SELECT f.frame_id, f.metadata FROM frames f WHERE f.dataset_id = ?1 AND {} ORDER BY f.frame_id",
        visible("f", Some(version))
    ))?;
    let mut cursor = stmt.query([dataset_id])?;
    let mut meta: BTreeMap<String, (String, MetaType)> = BTreeMap::new();
    let mut taken: BTreeSet<String> = FRAME_COLUMNS.iter().map(|c| c.to_string()).collect();
    let mut frames = Vec::new();
    let mut unit_values: Vec<Option<String>> = Vec::new();
    while let Some(row) = cursor.next()? {
        let frame_id: String = row.get(0)?;
        let text: String = row.get(1)?;
        let metadata: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)?;
        for (key, value) in &metadata {
            let Some(kind) = MetaType::of(value) else { continue };
            match meta.get_mut(key) {
                Some((_, seen)) => *seen = seen.widen(kind),
                None => {
                    // Two keys must not land on one column (`label_count` and `meta_label_count`).
                    if let Some(column) = metadata_column(key).filter(|c| taken.insert(c.clone())) {
                        meta.insert(key.clone(), (column, kind));
                    }
                }
            }
        }
        if let Some(key) = unit {
            unit_values.push(metadata.get(key).filter(|v| !v.is_null()).map(|v| v.to_string()));
        }
        frames.push(frame_id);
    }
    let (unit_of_frame, units) = match unit {
        None => {
            let units = frames.len() as u64;
            (frames.into_iter().enumerate().map(|(i, f)| (f, i as u32)).collect(), units)
        }
        Some(_) => {
            // Dense ranks of the unit values; frames without one share the last unit.
            let distinct: BTreeSet<&String> = unit_values.iter().flatten().collect();
            let rank: HashMap<&String, u32> = distinct.iter().enumerate().map(|(i, v)| (*v, i as u32)).collect();
            let missing = rank.len() as u32;
            let any_missing = unit_values.iter().any(Option::is_none);
            let units = rank.len() as u64 + u64::from(any_missing);
            let map = frames
                .into_iter()
                .zip(&unit_values)
                .map(|(f, v)| (f, v.as_ref().map_or(missing, |v| rank[v])))
                .collect();
            (map, units)
        }
    };
    Ok(FrameFacts { unit_of_frame, units, meta })
}

pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// Writes batches to one Parquet file of the snapshot.
pub(crate) struct TableWriter {
    name: String,
    file: String,
    writer: ArrowWriter<std::fs::File>,
    schema: SchemaRef,
    rows: u64,
}

impl TableWriter {
    pub(crate) fn create(dir: &Path, name: &str, fields: Vec<Field>) -> StoreResult<TableWriter> {
        let mut fields = fields;
        fields.push(Field::new(ROW_ID, DataType::Int64, false));
        let schema = Arc::new(Schema::new(fields));
        let file = format!("{name}.parquet");
        let path = dir.join(&file);
        let handle = std::fs::File::create(&path).map_err(|e| StoreError::io(&path, e))?;
        let writer = ArrowWriter::try_new(handle, schema.clone(), None).map_err(corrupt)?;
        Ok(TableWriter { name: name.to_string(), file, writer, schema, rows: 0 })
    }

    pub(crate) fn write(&mut self, columns: Vec<ArrayRef>) -> StoreResult<()> {
        let batch = RecordBatch::try_new(self.schema.clone(), columns).map_err(corrupt)?;
        self.rows += batch.num_rows() as u64;
        self.writer.write(&batch).map_err(corrupt)
    }

    pub(crate) fn finish(self, units: u64, dir: &Path) -> StoreResult<SnapshotTable> {
        let columns = self.schema.fields().iter().map(|f| f.name().clone()).filter(|n| n != ROW_ID).collect();
        let writer = self.writer;
        writer.close().map_err(corrupt)?;
        Ok(SnapshotTable { name: self.name, file: self.file, rows: self.rows, units, columns, dir: dir.to_path_buf() })
    }
}

fn write_snapshot(
    conn: &Connection,
    dataset: &DatasetInfo,
    version: i64,
    unit: Option<&str>,
    dir: &Path,
) -> StoreResult<Vec<SnapshotTable>> {
    let facts = frame_facts(conn, dataset.id, version, unit)?;
    let classes: HashMap<i64, String> = {
        let project = crate::catalog::load_project(conn, &dataset.project)?;
        project.classes.0.into_iter().map(|c| (i64::from(c.id), c.name)).collect()
    };
    let mut tables = vec![write_frames(conn, dataset.id, version, &facts, dir)?];
    tables.push(write_labels(conn, dataset.id, version, &facts, &classes, None, dir)?);
    let mut stmt = conn.prepare("SELECT id, name FROM inference_sets WHERE dataset_id = ?1 ORDER BY name")?;
    let sets = stmt
        .query_map([dataset.id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    for (id, name) in sets {
        tables.push(write_labels(conn, dataset.id, version, &facts, &classes, Some((id, &name)), dir)?);
    }
    Ok(tables)
}

fn write_frames(
    conn: &Connection,
    dataset_id: i64,
    version: i64,
    facts: &FrameFacts,
    dir: &Path,
) -> StoreResult<SnapshotTable> {
    let mut fields = vec![
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("geo_lat", DataType::Float64, true),
        Field::new("geo_lon", DataType::Float64, true),
        Field::new("sensor_kinds", DataType::Utf8, false),
        Field::new("urls", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), false),
        Field::new("label_count", DataType::Int64, false),
    ];
    for (column, kind) in facts.meta.values() {
        fields.push(Field::new(column, kind.data_type(), true));
    }
    let mut writer = TableWriter::create(dir, "frames", fields)?;
    let mut stmt = conn.prepare(&format!(
        "SELECT f.frame_id, f.timestamp, f.geo_lat, f.geo_lon, f.sensors, f.label_count, f.metadata
         FROM frames f WHERE f.dataset_id = ?1 AND {} ORDER BY f.frame_id",
        visible("f", Some(version))
    ))?;
    let mut cursor = stmt.query([dataset_id])?;
    let keys: Vec<(&String, MetaType)> = facts.meta.iter().map(|(k, (_, t))| (k, *t)).collect();
    loop {
        let mut id = StringBuilder::new();
        let mut ts = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        let (mut lat, mut lon) = (Float64Builder::new(), Float64Builder::new());
        let (mut kinds, mut urls) = (StringBuilder::new(), ListBuilder::new(StringBuilder::new()));
        let (mut count, mut row_id) = (Int64Builder::new(), Int64Builder::new());
        let mut meta: Vec<MetaBuilder> = keys.iter().map(|(_, t)| MetaBuilder::new(*t)).collect();
        let mut n = 0;
        while n < BATCH_ROWS {
            let Some(r) = cursor.next()? else { break };
            let frame_id: String = r.get(0)?;
            let timestamp: Option<String> = r.get(1)?;
            ts.append_option(
                timestamp.and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok()).map(|t| t.timestamp_micros()),
            );
            lat.append_option(r.get::<_, Option<f64>>(2)?);
            lon.append_option(r.get::<_, Option<f64>>(3)?);
            let sensors: Vec<serde_json::Value> = serde_json::from_str(&r.get::<_, String>(4)?)?;
            let mut seen: Vec<&str> = Vec::new();
            for sensor in &sensors {
                if let Some(kind) = sensor.get("kind").and_then(|k| k.as_str())
                    && !seen.contains(&kind)
                {
                    seen.push(kind);
                }
                urls.values().append_option(sensor.get("url").and_then(|u| u.as_str()));
            }
            urls.append(true);
            kinds.append_value(seen.join(","));
            count.append_value(r.get(5)?);
            let metadata: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&r.get::<_, String>(6)?)?;
            for ((key, _), builder) in keys.iter().zip(&mut meta) {
                builder.append(metadata.get(*key));
            }
            let unit = facts.unit_of_frame.get(&frame_id).copied().ok_or_else(|| {
                StoreError::Corrupt(format!("frame {frame_id:?} appeared while its version was being read"))
            })?;
            row_id.append_value(i64::from(unit));
            id.append_value(frame_id);
            n += 1;
        }
        if n == 0 {
            break;
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(ts.finish()),
            Arc::new(lat.finish()),
            Arc::new(lon.finish()),
            Arc::new(kinds.finish()),
            Arc::new(urls.finish()),
            Arc::new(count.finish()),
        ];
        columns.extend(meta.into_iter().map(MetaBuilder::finish));
        columns.push(Arc::new(row_id.finish()));
        writer.write(columns)?;
    }
    writer.finish(facts.units, dir)
}

enum MetaBuilder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
}

impl MetaBuilder {
    fn new(kind: MetaType) -> MetaBuilder {
        match kind {
            MetaType::Bool => MetaBuilder::Bool(BooleanBuilder::new()),
            MetaType::Int => MetaBuilder::Int(Int64Builder::new()),
            MetaType::Float => MetaBuilder::Float(Float64Builder::new()),
            MetaType::Text => MetaBuilder::Text(StringBuilder::new()),
        }
    }

    fn append(&mut self, value: Option<&serde_json::Value>) {
        let value = value.filter(|v| !v.is_null());
        match self {
            MetaBuilder::Bool(b) => b.append_option(value.and_then(|v| v.as_bool())),
            MetaBuilder::Int(b) => b.append_option(value.and_then(|v| v.as_i64())),
            MetaBuilder::Float(b) => b.append_option(value.and_then(|v| v.as_f64())),
            MetaBuilder::Text(b) => b.append_option(value.map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            MetaBuilder::Bool(mut b) => Arc::new(b.finish()),
            MetaBuilder::Int(mut b) => Arc::new(b.finish()),
            MetaBuilder::Float(mut b) => Arc::new(b.finish()),
            MetaBuilder::Text(mut b) => Arc::new(b.finish()),
        }
    }
}

/// A ground-truth box, for matching inferences against.
struct TruthBox {
    label_id: String,
    class_id: Option<i64>,
    bbox: Bbox,
}

/// Ground-truth boxes frame by frame, in frame order, for a merge with the inferences.
struct TruthByFrame<'a> {
    rows: rusqlite::Rows<'a>,
    pending: Option<(String, TruthBox)>,
}

impl TruthByFrame<'_> {
    /// The boxes of `frame_id`; frames are asked for in ascending order.
    fn boxes_of(&mut self, frame_id: &str, out: &mut Vec<TruthBox>) -> StoreResult<()> {
        out.clear();
        loop {
            if self.pending.is_none() {
                let Some(r) = self.rows.next()? else { return Ok(()) };
                let bbox = Bbox::new(r.get(4)?, r.get(3)?, r.get(5)?, r.get(6)?);
                self.pending = Some((r.get(0)?, TruthBox { label_id: r.get(1)?, class_id: r.get(2)?, bbox }));
            }
            let Some((frame, _)) = &self.pending else { return Ok(()) };
            match frame.as_str().cmp(frame_id) {
                std::cmp::Ordering::Less => self.pending = None,
                std::cmp::Ordering::Equal => out.push(self.pending.take().expect("pending").1),
                std::cmp::Ordering::Greater => return Ok(()),
            }
        }
    }
}

/// Writes `labels` (`inference_set` `None`) or `inferences_<set>`, with each inference's
/// best overlap with a ground-truth box of its frame.
fn write_labels(
    conn: &Connection,
    dataset_id: i64,
    version: i64,
    facts: &FrameFacts,
    classes: &HashMap<i64, String>,
    inference_set: Option<(i64, &str)>,
    dir: &Path,
) -> StoreResult<SnapshotTable> {
    let mut fields = vec![
        Field::new("label_id", DataType::Utf8, false),
        Field::new("frame_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, true),
        Field::new("class_id", DataType::Int64, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("sensor_id", DataType::Utf8, true),
        Field::new("top", DataType::Float64, true),
        Field::new("left", DataType::Float64, true),
        Field::new("width", DataType::Float64, true),
        Field::new("height", DataType::Float64, true),
        Field::new("area", DataType::Float64, true),
        Field::new("iscrowd", DataType::Boolean, false),
        Field::new("attributes", DataType::Utf8, true),
    ];
    if inference_set.is_some() {
        fields.push(Field::new("confidence", DataType::Float64, true));
        fields.push(Field::new("iou", DataType::Float64, true));
        fields.push(Field::new("matched_label_id", DataType::Utf8, true));
        fields.push(Field::new("matched_class", DataType::Utf8, true));
        fields.push(Field::new("true_positive", DataType::Boolean, true));
    }
    let name = match inference_set {
        None => "labels".to_string(),
        Some((_, set)) => format!("inferences_{set}"),
    };
    let mut writer = TableWriter::create(dir, &name, fields)?;
    let query = format!(
        "SELECT l.frame_id, l.label_id, l.class_id, l.top, l.\"left\", l.width, l.height, l.kind, l.sensor_id,
                l.iscrowd, l.attributes, l.confidence
         FROM labels l WHERE l.dataset_id = ?1 AND l.inference_set_id = ?2 AND {} ORDER BY l.frame_id, l.label_id",
        visible("l", Some(version))
    );
    let mut stmt = conn.prepare(&query)?;
    let mut cursor = stmt.query(params![dataset_id, inference_set.map_or(0, |s| s.0)])?;
    let mut truth_stmt = conn.prepare(&format!(
        "SELECT l.frame_id, l.label_id, l.class_id, l.top, l.\"left\", l.width, l.height
         FROM labels l WHERE l.dataset_id = ?1 AND l.inference_set_id = 0 AND l.kind = 'box2d' AND {}
         ORDER BY l.frame_id, l.label_id",
        visible("l", Some(version))
    ))?;
    let mut truth = match inference_set {
        Some(_) => Some(TruthByFrame { rows: truth_stmt.query([dataset_id])?, pending: None }),
        None => None,
    };
    let (mut truth_frame, mut truth_boxes) = (String::new(), Vec::new());
    loop {
        let mut strings: Vec<StringBuilder> = (0..2).map(|_| StringBuilder::new()).collect();
        let (mut class, mut class_id, mut kind, mut sensor) =
            (StringBuilder::new(), Int64Builder::new(), StringBuilder::new(), StringBuilder::new());
        let mut geometry: Vec<Float64Builder> = (0..5).map(|_| Float64Builder::new()).collect();
        let (mut crowd, mut attributes, mut row_id) =
            (BooleanBuilder::new(), StringBuilder::new(), Int64Builder::new());
        let (mut confidence, mut iou) = (Float64Builder::new(), Float64Builder::new());
        let (mut matched, mut matched_class, mut positive) =
            (StringBuilder::new(), StringBuilder::new(), BooleanBuilder::new());
        let mut n = 0;
        while n < BATCH_ROWS {
            let Some(r) = cursor.next()? else { break };
            let frame_id: String = r.get(0)?;
            let id: Option<i64> = r.get(2)?;
            let (top, left, width, height): (Option<f64>, Option<f64>, Option<f64>, Option<f64>) =
                (r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?);
            let label_kind: String = r.get(7)?;
            let unit = facts.unit_of_frame.get(&frame_id).copied().ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "label {:?} belongs to no frame of version {version}",
                    r.get::<_, String>(1)
                ))
            })?;
            if let Some(truth) = &mut truth {
                let bbox = match (top, left, width, height) {
                    (Some(top), Some(left), Some(width), Some(height)) => Some(Bbox::new(left, top, width, height)),
                    _ => None,
                };
                if truth_frame != frame_id {
                    truth.boxes_of(&frame_id, &mut truth_boxes)?;
                    truth_frame.clone_from(&frame_id);
                }
                let best = bbox
                    .and_then(|b| truth_boxes.iter().map(|t| (t, b.iou(&t.bbox))).max_by(|a, b| a.1.total_cmp(&b.1)));
                iou.append_option(best.map(|(_, v)| v).or(bbox.map(|_| 0.0)));
                let best = best.filter(|(_, v)| *v > 0.0);
                matched.append_option(best.map(|(t, _)| t.label_id.as_str()));
                matched_class.append_option(best.and_then(|(t, _)| t.class_id.and_then(|c| classes.get(&c))));
                positive.append_option(
                    bbox.map(|_| best.is_some_and(|(t, v)| v >= MATCH_IOU && t.class_id.is_some() && t.class_id == id)),
                );
                confidence.append_option(r.get::<_, Option<f64>>(11)?);
            }
            strings[0].append_value(r.get::<_, String>(1)?);
            strings[1].append_value(&frame_id);
            class.append_option(id.and_then(|id| classes.get(&id)));
            class_id.append_option(id);
            kind.append_value(&label_kind);
            sensor.append_option(r.get::<_, Option<String>>(8)?);
            for (builder, value) in geometry.iter_mut().zip([top, left, width, height]) {
                builder.append_option(value);
            }
            geometry[4].append_option(width.zip(height).map(|(w, h)| w * h));
            crowd.append_value(r.get(9)?);
            attributes.append_option(r.get::<_, Option<String>>(10)?);
            row_id.append_value(i64::from(unit));
            n += 1;
        }
        if n == 0 {
            break;
        }
        let mut columns: Vec<ArrayRef> = strings.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        columns.push(Arc::new(class.finish()));
        columns.push(Arc::new(class_id.finish()));
        columns.push(Arc::new(kind.finish()));
        columns.push(Arc::new(sensor.finish()));
        columns.extend(geometry.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(crowd.finish()));
        columns.push(Arc::new(attributes.finish()));
        if inference_set.is_some() {
            columns.push(Arc::new(confidence.finish()));
            columns.push(Arc::new(iou.finish()));
            columns.push(Arc::new(matched.finish()));
            columns.push(Arc::new(matched_class.finish()));
            columns.push(Arc::new(positive.finish()));
        }
        columns.push(Arc::new(row_id.finish()));
        writer.write(columns)?;
    }
    writer.finish(facts.units, dir)
}
