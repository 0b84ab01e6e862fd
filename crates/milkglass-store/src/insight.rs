//! Bulk reads for the insight features (similarity, label errors, metrics, the map): every
//! current box of a dataset or inference set in one pass, frames' embedding ordinals and
//! metadata, and jobs to report background work in the dataset status.

use crate::{DatasetInfo, InferenceSetInfo, Store, StoreResult};
use rusqlite::OptionalExtension;

/// One current 2-D box label or inference, with what the insight algorithms read.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxRecord {
    pub frame_id: String,
    pub label_id: String,
    pub class_id: Option<i64>,
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub confidence: Option<f64>,
    pub iscrowd: bool,
    /// Ordinal of its crop embedding in the dataset's label vector file.
    pub embedding: Option<i64>,
}

/// A current frame's id, embedding ordinal and metadata (JSON object text).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameRecord {
    pub frame_id: String,
    pub embedding: Option<i64>,
    pub metadata: String,
}

impl Store {
    /// Every current box of the dataset's labels (`inference_set` None) or of one inference
    /// set, ordered by frame then label id.
    pub fn current_boxes(
        &self,
        dataset: &DatasetInfo,
        inference_set: Option<&InferenceSetInfo>,
    ) -> StoreResult<Vec<BoxRecord>> {
        let set_id = inference_set.map_or(0, |s| s.id);
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT frame_id, label_id, class_id, \"left\", top, width, height, confidence, iscrowd, embedding
                 FROM labels WHERE dataset_id = ?1 AND inference_set_id = ?2 AND valid_to IS NULL AND kind = 'box2d'
                 ORDER BY frame_id, label_id",
            )?;
            let rows = stmt.query_map([dataset.id, set_id], |r| {
                Ok(BoxRecord {
                    frame_id: r.get(0)?,
                    label_id: r.get(1)?,
                    class_id: r.get(2)?,
                    left: r.get(3)?,
                    top: r.get(4)?,
                    width: r.get(5)?,
                    height: r.get(6)?,
                    confidence: r.get(7)?,
                    iscrowd: r.get::<_, i64>(8)? != 0,
                    embedding: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Every current frame, ordered by id.
    pub fn current_frames(&self, dataset: &DatasetInfo) -> StoreResult<Vec<FrameRecord>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT frame_id, embedding, metadata FROM frames
                 WHERE dataset_id = ?1 AND valid_to IS NULL ORDER BY frame_id",
            )?;
            let rows = stmt.query_map([dataset.id], |r| {
                Ok(FrameRecord { frame_id: r.get(0)?, embedding: r.get(1)?, metadata: r.get(2)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Records a background job of the dataset (shown by its status route); returns its id.
    pub fn start_job(&self, dataset: &DatasetInfo, kind: &str, total: Option<i64>) -> StoreResult<i64> {
        let now = crate::now();
        self.db().write(|tx| {
            tx.execute(
                "INSERT INTO jobs (dataset_id, kind, state, progress, total, created_at, updated_at)
                 VALUES (?1, ?2, 'running', 0, ?3, ?4, ?4)",
                rusqlite::params![dataset.id, kind, total, now],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Moves a job on: its progress, and once finished its state (`done` or `failed`) and message.
    pub fn update_job(&self, job: i64, progress: i64, finished: Option<(&str, Option<&str>)>) -> StoreResult<()> {
        let now = crate::now();
        self.db().write(|tx| {
            match finished {
                None => tx.execute(
                    "UPDATE jobs SET progress = ?1, updated_at = ?2 WHERE id = ?3",
                    rusqlite::params![progress, now, job],
                )?,
                Some((state, message)) => tx.execute(
                    "UPDATE jobs SET progress = ?1, state = ?2, message = ?3, updated_at = ?4 WHERE id = ?5",
                    rusqlite::params![progress, state, message, now, job],
                )?,
            };
            Ok(())
        })
    }

    /// The state of the dataset's most recent job of `kind`, if any.
    pub fn latest_job_state(&self, dataset: &DatasetInfo, kind: &str) -> StoreResult<Option<String>> {
        self.db().read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT state FROM jobs WHERE dataset_id = ?1 AND kind = ?2 ORDER BY id DESC LIMIT 1",
                    rusqlite::params![dataset.id, kind],
                    |r| r.get(0),
                )
                .optional()?)
        })
    }
}
