//! A dataset version's insight scores as tables beside its snapshot.
//!
//! The scores come from the service's insights: each frame's and label's uniqueness and
//! outlier score over the 10-nearest-neighbour graph of its embeddings, and the ranked
//! label errors against each inference set. They are written once per snapshot into
//! `<snapshot dir>/scores/` and carry the snapshot's unit row ids (read back from its
//! `frames` and `labels` files), so a policy's minimums count frames, or the unit key's
//! values, here exactly as in the other tables.
//!
//! Tables:
//! - `frame_scores`: every frame of the version; `uniqueness` and `outlier_score` are NULL
//!   where the frame has no embedding.
//! - `label_scores`: every label, the same two scores over the label (crop) embeddings.
//! - `issues_<set>`: one row per likely label error against the inference set.

use crate::snapshot::{BATCH_ROWS, DatasetSnapshot, SnapshotTable, TableWriter, corrupt};
use crate::{ROW_ID, Store, StoreError, StoreResult};
use arrow::array::{Array, ArrayRef, AsArray, Float64Builder, Int64Builder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Int64Type};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// One frame's or label's neighbour scores.
#[derive(Debug, Clone)]
pub struct PointScore {
    /// The frame id (`frame_scores`) or label id (`label_scores`).
    pub id: String,
    /// In [0, 1]: the mean cosine distance to its 10 nearest neighbours over the largest such
    /// mean; 1 is the most isolated point, near 0 one with many look-alikes.
    pub uniqueness: f64,
    /// Robust z-score of that mean distance among all points (over 3: an outlier); `None`
    /// where the spread is zero or the point has no neighbours.
    pub outlier_score: Option<f64>,
}

/// One likely label error.
#[derive(Debug, Clone)]
pub struct IssueScore {
    pub frame_id: String,
    /// `missing_label`, `class_confusion`, `bad_localization`, `duplicate_label`, `spurious_label`.
    pub kind: String,
    pub score: f64,
    pub label_id: Option<String>,
    pub label_class: Option<String>,
    pub inference_id: Option<String>,
    pub other_label_id: Option<String>,
    pub suggested_class: Option<String>,
    pub iou: Option<f64>,
}

/// What the insights found in one dataset version.
#[derive(Debug, Clone, Default)]
pub struct InsightScores {
    /// Frames with an embedding.
    pub frames: Vec<PointScore>,
    /// Labels with an embedding.
    pub labels: Vec<PointScore>,
    /// Each inference set's name and its ranked issues.
    pub issues: Vec<(String, Vec<IssueScore>)>,
}

/// Every column a score table may have (what a publication may sanitize).
pub const SCORE_COLUMNS: [&str; 11] = [
    "frame_id",
    "label_id",
    "uniqueness",
    "outlier_score",
    "kind",
    "score",
    "label_class",
    "inference_id",
    "other_label_id",
    "suggested_class",
    "iou",
];

/// Whether `table` names a score table (present or not).
pub fn is_score_table(table: &str) -> bool {
    table == "frame_scores" || table == "label_scores" || table.starts_with("issues_")
}

impl Store {
    /// The score tables written for `snapshot`, if they were.
    pub fn snapshot_scores(&self, snapshot: &DatasetSnapshot) -> StoreResult<Option<Vec<SnapshotTable>>> {
        read_scores(&snapshot.dir.join("scores"))
    }

    /// Writes `scores` as the snapshot's score tables, unless they were written already (a
    /// snapshot's scores never change: the version's rows do not). Blocking.
    pub fn write_snapshot_scores(
        &self,
        snapshot: &DatasetSnapshot,
        scores: &InsightScores,
    ) -> StoreResult<Vec<SnapshotTable>> {
        let dir = snapshot.dir.join("scores");
        if let Some(tables) = read_scores(&dir)? {
            return Ok(tables);
        }
        let staging = snapshot.dir.join(format!(".scores-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&staging).map_err(|e| StoreError::io(&staging, e))?;
        match write_scores(snapshot, scores, &staging) {
            Ok(tables) => {
                let manifest = serde_json::to_vec_pretty(&tables)?;
                let path = staging.join("manifest.json");
                std::fs::write(&path, manifest).map_err(|e| StoreError::io(&path, e))?;
                // Another request may have written them meanwhile: keep the first.
                if std::fs::rename(&staging, &dir).is_err() {
                    let _ = std::fs::remove_dir_all(&staging);
                }
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(e);
            }
        }
        read_scores(&dir)?
            .ok_or_else(|| StoreError::Corrupt(format!("scores {} vanished as they were written", dir.display())))
    }
}

fn read_scores(dir: &Path) -> StoreResult<Option<Vec<SnapshotTable>>> {
    let path = dir.join("manifest.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let mut tables: Vec<SnapshotTable> =
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
    for table in &mut tables {
        table.set_dir(dir);
    }
    Ok(Some(tables))
}

/// Reads `columns` of a snapshot file, batch by batch.
fn read_columns(
    file: &Path,
    columns: &[&str],
    mut each: impl FnMut(&RecordBatch) -> StoreResult<()>,
) -> StoreResult<()> {
    let handle = std::fs::File::open(file).map_err(|e| StoreError::io(file, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(handle).map_err(corrupt)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    for batch in builder.with_projection(mask).with_batch_size(BATCH_ROWS).build().map_err(corrupt)? {
        each(&batch.map_err(corrupt)?)?;
    }
    Ok(())
}

fn strings<'a>(batch: &'a RecordBatch, name: &str) -> StoreResult<&'a arrow::array::StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| StoreError::Corrupt(format!("snapshot column {name} is missing or not text")))
}

fn row_ids(batch: &RecordBatch) -> StoreResult<&arrow::array::Int64Array> {
    batch
        .column_by_name(ROW_ID)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| StoreError::Corrupt("snapshot row ids are missing".to_string()))
}

fn table<'a>(snapshot: &'a DatasetSnapshot, name: &str) -> StoreResult<&'a SnapshotTable> {
    snapshot
        .tables
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| StoreError::Corrupt(format!("snapshot of version {} has no {name} table", snapshot.version)))
}

fn write_scores(snapshot: &DatasetSnapshot, scores: &InsightScores, dir: &Path) -> StoreResult<Vec<SnapshotTable>> {
    let frames = table(snapshot, "frames")?;
    let labels = table(snapshot, "labels")?;
    let units = frames.units;
    let score_fields = || {
        vec![Field::new("uniqueness", DataType::Float64, true), Field::new("outlier_score", DataType::Float64, true)]
    };
    // Each frame's unit, for the issues; frame_scores and label_scores follow their tables.
    let mut unit_of_frame: HashMap<String, i64> = HashMap::new();

    let by_frame: HashMap<&str, &PointScore> = scores.frames.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut fields = vec![Field::new("frame_id", DataType::Utf8, false)];
    fields.extend(score_fields());
    let mut writer = TableWriter::create(dir, "frame_scores", fields)?;
    read_columns(&frames.file(), &["frame_id", ROW_ID], |batch| {
        let (ids, units) = (strings(batch, "frame_id")?, row_ids(batch)?);
        let (mut uniqueness, mut outlier) = (Float64Builder::new(), Float64Builder::new());
        for (id, unit) in ids.iter().zip(units.iter()) {
            let (Some(id), Some(unit)) = (id, unit) else { continue };
            let score = by_frame.get(id);
            uniqueness.append_option(score.map(|s| s.uniqueness));
            outlier.append_option(score.and_then(|s| s.outlier_score));
            unit_of_frame.insert(id.to_string(), unit);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids.clone()),
            Arc::new(uniqueness.finish()),
            Arc::new(outlier.finish()),
            Arc::new(units.clone()),
        ];
        writer.write(columns)
    })?;
    let mut tables = vec![writer.finish(units, dir)?];

    let by_label: HashMap<&str, &PointScore> = scores.labels.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut fields = vec![Field::new("label_id", DataType::Utf8, false), Field::new("frame_id", DataType::Utf8, false)];
    fields.extend(score_fields());
    let mut writer = TableWriter::create(dir, "label_scores", fields)?;
    read_columns(&labels.file(), &["label_id", "frame_id", ROW_ID], |batch| {
        let (ids, frames, units) = (strings(batch, "label_id")?, strings(batch, "frame_id")?, row_ids(batch)?);
        let (mut uniqueness, mut outlier) = (Float64Builder::new(), Float64Builder::new());
        for id in ids.iter() {
            let score = id.and_then(|id| by_label.get(id));
            uniqueness.append_option(score.map(|s| s.uniqueness));
            outlier.append_option(score.and_then(|s| s.outlier_score));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids.clone()),
            Arc::new(frames.clone()),
            Arc::new(uniqueness.finish()),
            Arc::new(outlier.finish()),
            Arc::new(units.clone()),
        ];
        writer.write(columns)
    })?;
    tables.push(writer.finish(units, dir)?);

    for (set, issues) in &scores.issues {
        tables.push(write_issues(dir, set, issues, &unit_of_frame, units)?);
    }
    Ok(tables)
}

fn write_issues(
    dir: &Path,
    set: &str,
    issues: &[IssueScore],
    unit_of_frame: &HashMap<String, i64>,
    units: u64,
) -> StoreResult<SnapshotTable> {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    let fields = vec![
        text("frame_id", false),
        text("kind", false),
        Field::new("score", DataType::Float64, false),
        text("label_id", true),
        text("label_class", true),
        text("inference_id", true),
        text("other_label_id", true),
        text("suggested_class", true),
        Field::new("iou", DataType::Float64, true),
    ];
    let mut writer = TableWriter::create(dir, &format!("issues_{set}"), fields)?;
    // Issues of frames outside the version (none, unless the ranking raced an upload) are
    // left out: they have no unit to be counted in.
    let counted: Vec<(&IssueScore, i64)> =
        issues.iter().filter_map(|i| unit_of_frame.get(&i.frame_id).map(|&u| (i, u))).collect();
    for chunk in counted.chunks(BATCH_ROWS) {
        let mut text: Vec<StringBuilder> = (0..7).map(|_| StringBuilder::new()).collect();
        let (mut score, mut iou, mut row_id) = (Float64Builder::new(), Float64Builder::new(), Int64Builder::new());
        for (issue, unit) in chunk {
            text[0].append_value(&issue.frame_id);
            text[1].append_value(&issue.kind);
            for (builder, value) in text[2..].iter_mut().zip([
                &issue.label_id,
                &issue.label_class,
                &issue.inference_id,
                &issue.other_label_id,
                &issue.suggested_class,
            ]) {
                builder.append_option(value.as_deref());
            }
            score.append_value(issue.score);
            iou.append_option(issue.iou);
            row_id.append_value(*unit);
        }
        let mut text: Vec<ArrayRef> = text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
        let rest = text.split_off(2);
        let mut columns = text;
        columns.push(Arc::new(score.finish()));
        columns.extend(rest);
        columns.push(Arc::new(iou.finish()));
        columns.push(Arc::new(row_id.finish()));
        debug_assert!(columns.iter().all(|c| c.len() == chunk.len()));
        writer.write(columns)?;
    }
    writer.finish(units, dir)
}
