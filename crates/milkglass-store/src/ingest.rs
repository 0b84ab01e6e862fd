//! The write path: uploads made of atomic batches.
//!
//! An upload is one new dataset version. It is written as a sequence of batches;
//! each batch is validated whole, then committed in one SQLite transaction, so a
//! batch is either wholly visible or not at all. A failed or killed upload keeps
//! the batches it committed before the failure.

use crate::catalog::{load_dataset_by_id, load_project};
use crate::embeddings::{EmbeddingFile, Space};
use crate::{DatasetInfo, InferenceSetInfo, Store, StoreError, StoreResult, now};
use milkglass_core::{ClassMap, Frame, Invalid, Label, check_embedding};
use rusqlite::{ErrorCode, OptionalExtension, Transaction, params};
use serde::Serialize;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadKind {
    Frames,
    Labels,
    Inferences,
    Embeddings,
    Delete,
}

impl UploadKind {
    fn as_str(self) -> &'static str {
        match self {
            UploadKind::Frames => "frames",
            UploadKind::Labels => "labels",
            UploadKind::Inferences => "inferences",
            UploadKind::Embeddings => "embeddings",
            UploadKind::Delete => "delete",
        }
    }
}

/// An upload in progress. Holds what validation needs so batches do not re-read it.
///
/// Nothing is written until the first batch commits: that batch's transaction
/// allocates the new dataset version and records the upload, so an upload whose
/// first batch is refused leaves the store exactly as it was.
#[derive(Debug)]
pub struct Upload {
    pub kind: UploadKind,
    dataset_id: i64,
    /// 0 for ground truth; the inference set's id for inferences.
    inference_set_id: i64,
    classes: ClassMap,
    frame_dim: Option<usize>,
    label_dim: Option<usize>,
    /// `(upload id, dataset version)` once the first batch has committed.
    started: Option<(i64, i64)>,
    /// Records committed so far; also the index of the next record, for error paths.
    pub records: usize,
    pub batches: usize,
}

impl Upload {
    pub fn id(&self) -> Option<i64> {
        self.started.map(|s| s.0)
    }

    /// The dataset version this upload writes, once it has written anything.
    pub fn version(&self) -> Option<i64> {
        self.started.map(|s| s.1)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchReport {
    pub records: usize,
    pub version: i64,
}

/// One vector to attach to an existing frame or label.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRecord {
    pub target: EmbeddingTarget,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EmbeddingTarget {
    Frame(String),
    Label(String),
}

fn at(index: usize) -> String {
    format!("[{index}]")
}

fn record_error(index: usize, e: Invalid) -> StoreError {
    StoreError::Invalid(e.within(at(index)))
}

/// Fixes the dimension of a space from the first vector seen when the dataset has none yet.
fn settle_dim(known: &mut Option<usize>, vector: &[f32], field: String) -> StoreResult<()> {
    check_embedding(&field, vector)?;
    match *known {
        Some(dim) if dim != vector.len() => Err(StoreError::invalid(
            field,
            format!("embedding has dimension {}, but this dataset's embeddings have dimension {dim}", vector.len()),
        )),
        Some(_) => Ok(()),
        None => {
            *known = Some(vector.len());
            Ok(())
        }
    }
}

impl Store {
    /// Prepares an upload; nothing is written until its first batch.
    pub fn begin_upload(
        &self,
        dataset: &DatasetInfo,
        kind: UploadKind,
        inference_set: Option<&InferenceSetInfo>,
    ) -> StoreResult<Upload> {
        self.db().read(|conn| {
            let current = load_dataset_by_id(conn, dataset.id)?;
            let classes = load_project(conn, &current.project)?.classes;
            Ok(Upload {
                kind,
                dataset_id: dataset.id,
                inference_set_id: inference_set.map_or(0, |s| s.id),
                classes,
                frame_dim: current.frame_embedding_dim,
                label_dim: current.label_embedding_dim,
                started: None,
                records: 0,
                batches: 0,
            })
        })
    }

    /// Marks an upload finished; `error` records why it stopped early.
    pub fn finish_upload(&self, upload: &Upload, error: Option<&str>) -> StoreResult<()> {
        let Some(id) = upload.id() else { return Ok(()) };
        self.db().write(|tx| {
            tx.execute(
                "UPDATE uploads SET state = ?1, error = ?2, finished_at = ?3 WHERE id = ?4",
                params![if error.is_some() { "failed" } else { "done" }, error, now(), id],
            )?;
            Ok(())
        })
    }

    /// The vector file of a dataset's space, once the dataset has a dimension for it.
    pub fn embedding_file(&self, dataset: &DatasetInfo, space: Space) -> StoreResult<Option<Arc<EmbeddingFile>>> {
        let dim = match space {
            Space::Frames => dataset.frame_embedding_dim,
            Space::Labels => dataset.label_embedding_dim,
        };
        dim.map(|dim| self.inner.embeddings.file(dataset.id, space, dim)).transpose()
    }

    /// Appends vectors (synced to disk) and returns their ordinals, in order.
    fn append_vectors(
        &self,
        dataset_id: i64,
        space: Space,
        dim: Option<usize>,
        vectors: &[&[f32]],
    ) -> StoreResult<Vec<i64>> {
        let Some(dim) = dim.filter(|_| !vectors.is_empty()) else {
            return Ok(Vec::new());
        };
        let first = self.inner.embeddings.file(dataset_id, space, dim)?.append(vectors)? as i64;
        Ok((first..first + vectors.len() as i64).collect())
    }

    /// Writes one batch of frames (with their inline labels and embeddings) atomically.
    pub fn write_frames(&self, upload: &mut Upload, frames: &[Frame]) -> StoreResult<BatchReport> {
        let mut frame_dim = upload.frame_dim;
        let mut label_dim = upload.label_dim;
        let mut seen = HashSet::with_capacity(frames.len());
        let mut frame_vectors: Vec<&[f32]> = Vec::new();
        let mut label_vectors: Vec<&[f32]> = Vec::new();
        let mut class_ids: Vec<Vec<Option<u32>>> = Vec::with_capacity(frames.len());
        for (i, frame) in frames.iter().enumerate() {
            let index = upload.records + i;
            if let Some(v) = &frame.embedding {
                settle_dim(&mut frame_dim, v, format!("{}.embedding", at(index)))?;
                frame_vectors.push(v);
            }
            for (j, label) in frame.labels.iter().flatten().enumerate() {
                if let Some(v) = &label.embedding {
                    settle_dim(&mut label_dim, v, format!("{}.labels[{j}].embedding", at(index)))?;
                    label_vectors.push(v);
                }
            }
            frame.validate(&upload.classes, frame_dim, label_dim).map_err(|e| record_error(index, e))?;
            if !seen.insert(frame.frame_id.as_str()) {
                return Err(StoreError::invalid(
                    format!("{}.frame_id", at(index)),
                    format!("frame id {:?} appears twice in this batch", frame.frame_id),
                ));
            }
            let ids = frame
                .labels
                .iter()
                .flatten()
                .map(|l| l.class.as_ref().and_then(|c| upload.classes.by_name(c)).map(|c| c.id));
            class_ids.push(ids.collect());
        }
        let frame_ordinals = self.append_vectors(upload.dataset_id, Space::Frames, frame_dim, &frame_vectors)?;
        let label_ordinals = self.append_vectors(upload.dataset_id, Space::Labels, label_dim, &label_vectors)?;
        let dataset_id = upload.dataset_id;
        let started = self.db().write(|tx| {
            let (upload_id, version) = start(tx, upload)?;
            fix_dims(tx, dataset_id, upload.frame_dim, frame_dim, upload.label_dim, label_dim)?;
            let mut find = tx.prepare_cached(
                "SELECT row_id, label_count, embedding FROM frames WHERE dataset_id = ?1 AND frame_id = ?2 AND valid_to IS NULL",
            )?;
            let mut close = tx.prepare_cached("UPDATE frames SET valid_to = ?1 WHERE row_id = ?2")?;
            let mut close_labels = tx.prepare_cached(
                "UPDATE labels SET valid_to = ?1 WHERE dataset_id = ?2 AND frame_id = ?3 AND inference_set_id = 0 AND valid_to IS NULL",
            )?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO frames (dataset_id, frame_id, valid_from, timestamp, sensors, metadata, geo_lat, geo_lon, label_count, embedding)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            let mut labels_in = LabelInserter::new(tx, dataset_id, 0, version)?;
            let mut frame_ordinals = frame_ordinals.into_iter();
            let mut label_ordinals = label_ordinals.into_iter();
            for (i, frame) in frames.iter().enumerate() {
                let previous: Option<(i64, i64, Option<i64>)> =
                    find.query_row(params![dataset_id, frame.frame_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
                if let Some((row_id, _, _)) = previous {
                    close.execute(params![version, row_id])?;
                }
                let label_count = match &frame.labels {
                    Some(labels) => {
                        if previous.is_some() {
                            close_labels.execute(params![version, dataset_id, frame.frame_id])?;
                        }
                        for (j, label) in labels.iter().enumerate() {
                            let ordinal = label.embedding.as_ref().and_then(|_| label_ordinals.next());
                            labels_in
                                .insert(&frame.frame_id, label, class_ids[i][j], ordinal, None)
                                .map_err(|e| label_conflict(e, format!("{}.labels[{j}].label_id", at(upload.records + i)), label))?;
                        }
                        labels.len() as i64
                    }
                    None => previous.map_or(0, |p| p.1),
                };
                let embedding = match &frame.embedding {
                    Some(_) => frame_ordinals.next(),
                    None => previous.and_then(|p| p.2),
                };
                insert.execute(params![
                    dataset_id,
                    frame.frame_id,
                    version,
                    frame.timestamp.as_ref().map(milkglass_core::format_timestamp),
                    serde_json::to_string(&frame.sensors)?,
                    serde_json::to_string(&frame.metadata)?,
                    frame.geo.map(|g| g.lat),
                    frame.geo.map(|g| g.lon),
                    label_count,
                    embedding,
                ])?;
            }
            count_batch(tx, upload_id, frames.len())?;
            Ok((upload_id, version))
        })?;
        upload.frame_dim = frame_dim;
        upload.label_dim = label_dim;
        Ok(self.batch_done(upload, started, frames.len()))
    }

    /// Writes one batch of labels (ground truth, or inferences for an inference-set
    /// upload), upserted by label id onto existing frames.
    pub fn write_labels(&self, upload: &mut Upload, labels: &[Label]) -> StoreResult<BatchReport> {
        let is_inference = upload.inference_set_id != 0;
        let mut label_dim = upload.label_dim;
        let mut seen = HashSet::with_capacity(labels.len());
        let mut vectors: Vec<&[f32]> = Vec::new();
        let mut class_ids = Vec::with_capacity(labels.len());
        for (i, label) in labels.iter().enumerate() {
            let index = upload.records + i;
            if let Some(v) = &label.embedding {
                settle_dim(&mut label_dim, v, format!("{}.embedding", at(index)))?;
                vectors.push(v);
            }
            class_ids
                .push(label.validate(&upload.classes, is_inference, label_dim).map_err(|e| record_error(index, e))?);
            if label.frame_id.is_none() {
                return Err(StoreError::invalid(
                    format!("{}.frame_id", at(index)),
                    "is required: which frame does this label belong to?",
                ));
            }
            if !seen.insert(label.label_id.as_str()) {
                return Err(StoreError::invalid(
                    format!("{}.label_id", at(index)),
                    format!("label id {:?} appears twice in this batch", label.label_id),
                ));
            }
        }
        let ordinals = self.append_vectors(upload.dataset_id, Space::Labels, label_dim, &vectors)?;
        let (dataset_id, set_id) = (upload.dataset_id, upload.inference_set_id);
        let started = self.db().write(|tx| {
            let (upload_id, version) = start(tx, upload)?;
            fix_dims(tx, dataset_id, upload.frame_dim, upload.frame_dim, upload.label_dim, label_dim)?;
            let mut frame_exists =
                tx.prepare_cached("SELECT 1 FROM frames WHERE dataset_id = ?1 AND frame_id = ?2 AND valid_to IS NULL")?;
            let mut close = tx.prepare_cached(
                "UPDATE labels SET valid_to = ?1 WHERE dataset_id = ?2 AND inference_set_id = ?3 AND label_id = ?4 AND valid_to IS NULL
                 RETURNING frame_id",
            )?;
            let mut labels_in = LabelInserter::new(tx, dataset_id, set_id, version)?;
            let mut touched: HashSet<String> = HashSet::new();
            let mut ordinals = ordinals.into_iter();
            for (i, label) in labels.iter().enumerate() {
                let frame_id = label.frame_id.as_deref().expect("checked above");
                if frame_exists.query_row(params![dataset_id, frame_id], |_| Ok(())).optional()?.is_none() {
                    return Err(StoreError::invalid(
                        format!("{}.frame_id", at(upload.records + i)),
                        format!("unknown frame {frame_id:?}; upload the frame first"),
                    ));
                }
                let old_frame: Option<String> = close.query_row(params![version, dataset_id, set_id, label.label_id], |r| r.get(0)).optional()?;
                touched.extend(old_frame);
                touched.insert(frame_id.to_string());
                let ordinal = label.embedding.as_ref().and_then(|_| ordinals.next());
                // Checked by `validate` above; stored in class-map order.
                let probabilities = label.probabilities.as_ref().map(|p| p.in_class_order(&upload.classes)).transpose()?;
                labels_in
                    .insert(frame_id, label, class_ids[i], ordinal, probabilities.as_deref())
                    .map_err(|e| label_conflict(e, format!("{}.label_id", at(upload.records + i)), label))?;
            }
            if set_id == 0 {
                recount_labels(tx, dataset_id, &touched)?;
            }
            count_batch(tx, upload_id, labels.len())?;
            Ok((upload_id, version))
        })?;
        upload.label_dim = label_dim;
        Ok(self.batch_done(upload, started, labels.len()))
    }

    /// Attaches vectors to existing frames and labels (the current revision).
    pub fn write_embeddings(&self, upload: &mut Upload, records: &[EmbeddingRecord]) -> StoreResult<BatchReport> {
        let mut frame_dim = upload.frame_dim;
        let mut label_dim = upload.label_dim;
        let (mut frame_vectors, mut label_vectors) = (Vec::new(), Vec::new());
        for (i, record) in records.iter().enumerate() {
            let field = format!("{}.embedding", at(upload.records + i));
            match &record.target {
                EmbeddingTarget::Frame(_) => {
                    settle_dim(&mut frame_dim, &record.vector, field)?;
                    frame_vectors.push(record.vector.as_slice());
                }
                EmbeddingTarget::Label(_) => {
                    settle_dim(&mut label_dim, &record.vector, field)?;
                    label_vectors.push(record.vector.as_slice());
                }
            }
        }
        let frame_ordinals = self.append_vectors(upload.dataset_id, Space::Frames, frame_dim, &frame_vectors)?;
        let label_ordinals = self.append_vectors(upload.dataset_id, Space::Labels, label_dim, &label_vectors)?;
        let (dataset_id, set_id) = (upload.dataset_id, upload.inference_set_id);
        let started = self.db().write(|tx| {
            let (upload_id, version) = start(tx, upload)?;
            fix_dims(tx, dataset_id, upload.frame_dim, frame_dim, upload.label_dim, label_dim)?;
            let mut set_frame =
                tx.prepare_cached("UPDATE frames SET embedding = ?1 WHERE dataset_id = ?2 AND frame_id = ?3 AND valid_to IS NULL")?;
            let mut set_label = tx.prepare_cached(
                "UPDATE labels SET embedding = ?1 WHERE dataset_id = ?2 AND inference_set_id = ?3 AND label_id = ?4 AND valid_to IS NULL",
            )?;
            let (mut frame_ordinals, mut label_ordinals) = (frame_ordinals.into_iter(), label_ordinals.into_iter());
            for (i, record) in records.iter().enumerate() {
                let (changed, what, id) = match &record.target {
                    EmbeddingTarget::Frame(id) => (set_frame.execute(params![frame_ordinals.next(), dataset_id, id])?, "frame", id),
                    EmbeddingTarget::Label(id) => {
                        (set_label.execute(params![label_ordinals.next(), dataset_id, set_id, id])?, "label", id)
                    }
                };
                if changed == 0 {
                    return Err(StoreError::invalid(
                        format!("{}.{what}_id", at(upload.records + i)),
                        format!("unknown {what} {id:?}"),
                    ));
                }
            }
            count_batch(tx, upload_id, records.len())?;
            Ok((upload_id, version))
        })?;
        upload.frame_dim = frame_dim;
        upload.label_dim = label_dim;
        Ok(self.batch_done(upload, started, records.len()))
    }

    /// Deletes frames (and their labels and inferences) as a new version. Unknown ids
    /// are an error and nothing is deleted.
    pub fn delete_frames(&self, dataset: &DatasetInfo, frame_ids: &[String]) -> StoreResult<BatchReport> {
        if frame_ids.is_empty() {
            return Err(StoreError::invalid("frame_ids", "must list at least one frame"));
        }
        let mut upload = self.begin_upload(dataset, UploadKind::Delete, None)?;
        let started = self.db().write(|tx| {
            let (upload_id, version) = start(tx, &upload)?;
            let mut close = tx.prepare_cached(
                "UPDATE frames SET valid_to = ?1 WHERE dataset_id = ?2 AND frame_id = ?3 AND valid_to IS NULL",
            )?;
            let mut close_labels = tx.prepare_cached(
                "UPDATE labels SET valid_to = ?1 WHERE dataset_id = ?2 AND frame_id = ?3 AND valid_to IS NULL",
            )?;
            for (i, id) in frame_ids.iter().enumerate() {
                if close.execute(params![version, dataset.id, id])? == 0 {
                    return Err(StoreError::invalid(format!("frame_ids[{i}]"), format!("unknown frame {id:?}")));
                }
                close_labels.execute(params![version, dataset.id, id])?;
            }
            count_batch(tx, upload_id, frame_ids.len())?;
            tx.execute("UPDATE uploads SET state = 'done', finished_at = ?1 WHERE id = ?2", params![now(), upload_id])?;
            Ok((upload_id, version))
        })?;
        Ok(self.batch_done(&mut upload, started, frame_ids.len()))
    }

    fn batch_done(&self, upload: &mut Upload, started: (i64, i64), records: usize) -> BatchReport {
        upload.started = Some(started);
        upload.records += records;
        upload.batches += 1;
        BatchReport { records, version: started.1 }
    }
}

/// The upload's id and dataset version, starting it in this transaction on its first batch.
fn start(tx: &Transaction, upload: &Upload) -> StoreResult<(i64, i64)> {
    if let Some(started) = upload.started {
        return Ok(started);
    }
    tx.execute(
        "UPDATE datasets SET version = version + 1, updated_at = ?1 WHERE id = ?2",
        params![now(), upload.dataset_id],
    )?;
    let version: i64 = tx.query_row("SELECT version FROM datasets WHERE id = ?1", [upload.dataset_id], |r| r.get(0))?;
    tx.execute(
        "INSERT INTO uploads (dataset_id, inference_set_id, kind, version, state, started_at) VALUES (?1, ?2, ?3, ?4, 'running', ?5)",
        params![upload.dataset_id, (upload.inference_set_id != 0).then_some(upload.inference_set_id), upload.kind.as_str(), version, now()],
    )?;
    Ok((tx.last_insert_rowid(), version))
}

/// Inserts labels with one statement prepared once per batch: looking it up in the statement
/// cache for each of five million labels hashed its text every time (measured in `bench ingest`).
struct LabelInserter<'tx> {
    insert: rusqlite::CachedStatement<'tx>,
    dataset_id: i64,
    inference_set_id: i64,
    version: i64,
}

impl<'tx> LabelInserter<'tx> {
    fn new(tx: &'tx Transaction, dataset_id: i64, inference_set_id: i64, version: i64) -> rusqlite::Result<Self> {
        let insert = tx.prepare_cached(
            "INSERT INTO labels (dataset_id, inference_set_id, frame_id, label_id, valid_from, class_id, kind, sensor_id,
                                 top, \"left\", width, height, confidence, iscrowd, geometry, attributes, embedding,
                                 probabilities)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        Ok(LabelInserter { insert, dataset_id, inference_set_id, version })
    }

    fn insert(
        &mut self,
        frame_id: &str,
        label: &Label,
        class_id: Option<u32>,
        embedding: Option<i64>,
        probabilities: Option<&[f64]>,
    ) -> rusqlite::Result<usize> {
        let bbox = label.geometry.bbox();
        let geometry = bbox.is_none().then(|| serde_json::to_string(&label.geometry).expect("geometry serializes"));
        let attributes =
            (!label.attributes.is_empty()).then(|| serde_json::Value::Object(label.attributes.clone()).to_string());
        self.insert.execute(params![
            self.dataset_id,
            self.inference_set_id,
            frame_id,
            label.label_id,
            self.version,
            class_id,
            label.geometry.kind(),
            label.sensor_id,
            bbox.map(|b| b[0]),
            bbox.map(|b| b[1]),
            bbox.map(|b| b[2]),
            bbox.map(|b| b[3]),
            label.confidence,
            label.iscrowd,
            geometry,
            attributes,
            embedding,
            probabilities.map(|p| serde_json::to_string(p).expect("numbers serialize")),
        ])
    }
}

/// A unique-index violation on insert means the label id is already in use by another frame.
fn label_conflict(e: rusqlite::Error, field: String, label: &Label) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) => StoreError::invalid(
            field,
            format!("label id {:?} already belongs to another frame of this dataset", label.label_id),
        ),
        _ => e.into(),
    }
}

fn recount_labels(tx: &Transaction, dataset_id: i64, frames: &HashSet<String>) -> StoreResult<()> {
    let mut recount = tx.prepare_cached(
        "UPDATE frames SET label_count = (SELECT count(*) FROM labels l WHERE l.dataset_id = ?1 AND l.frame_id = ?2
                                          AND l.inference_set_id = 0 AND l.valid_to IS NULL)
         WHERE dataset_id = ?1 AND frame_id = ?2 AND valid_to IS NULL",
    )?;
    for frame_id in frames {
        recount.execute(params![dataset_id, frame_id])?;
    }
    Ok(())
}

/// Records a dimension fixed by this batch. Another upload may have fixed it in the
/// meantime; then the two must agree.
fn fix_dims(
    tx: &Transaction,
    dataset_id: i64,
    old_frame: Option<usize>,
    new_frame: Option<usize>,
    old_label: Option<usize>,
    new_label: Option<usize>,
) -> StoreResult<()> {
    for (column, old, new) in
        [("frame_embedding_dim", old_frame, new_frame), ("label_embedding_dim", old_label, new_label)]
    {
        if old.is_none()
            && let Some(dim) = new
        {
            let stored: Option<i64> =
                tx.query_row(&format!("SELECT {column} FROM datasets WHERE id = ?1"), [dataset_id], |r| r.get(0))?;
            match stored {
                None => {
                    tx.execute(
                        &format!("UPDATE datasets SET {column} = ?1 WHERE id = ?2"),
                        params![dim as i64, dataset_id],
                    )?;
                }
                Some(s) if s as usize != dim => {
                    return Err(StoreError::Conflict(format!(
                        "{column} was set to {s} by another upload; this batch has {dim}"
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

fn count_batch(tx: &Transaction, upload_id: i64, records: usize) -> StoreResult<()> {
    tx.execute(
        "UPDATE uploads SET records = records + ?1, batches = batches + 1 WHERE id = ?2",
        params![records as i64, upload_id],
    )?;
    Ok(())
}
