//! Bulk reads for the insight features (similarity, label errors, metrics, the map): every
//! current box of a dataset or inference set in one pass, frames' embedding ordinals and
//! metadata, and jobs to report background work in the dataset status.

use crate::{DatasetInfo, InferenceSetInfo, Store, StoreError, StoreResult};
use milkglass_core::Invalid;
use rusqlite::OptionalExtension;
use serde::{Deserialize, Serialize};

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

/// Column `i` of a row as text, borrowed from the row.
fn borrowed_text<'a>(row: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'a str> {
    row.get_ref(i)?
        .as_str()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e)))
}

/// A [`BoxRecord`] borrowed from the row being read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxRow<'a> {
    pub frame_id: &'a str,
    pub label_id: &'a str,
    pub class_id: Option<i64>,
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub confidence: Option<f64>,
    pub iscrowd: bool,
    pub embedding: Option<i64>,
}

/// A classification label or inference: its class, and for inferences the confidence and the
/// class probabilities in class-map order when the model gave them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassRecord {
    pub frame_id: String,
    pub label_id: String,
    pub class_id: i64,
    pub confidence: Option<f64>,
    pub probabilities: Option<Vec<f64>>,
}

/// A current frame's id, embedding ordinal and metadata (JSON object text).
#[derive(Debug, Clone, PartialEq)]
pub struct FrameRecord {
    pub frame_id: String,
    pub embedding: Option<i64>,
    pub metadata: String,
}

/// A saved set of frames or labels of one dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub name: String,
    pub description: String,
    /// `open`, `in_review` or `resolved`.
    pub state: String,
    /// `frames` or `labels`: what `items` names.
    pub item_kind: String,
    pub items: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// A new segment, or (every field optional) a change to one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentSpec {
    pub name: Option<String>,
    pub description: Option<String>,
    pub state: Option<String>,
    pub item_kind: Option<String>,
    pub items: Option<Vec<String>>,
}

const SEGMENT_STATES: [&str; 3] = ["open", "in_review", "resolved"];

fn invalid(field: &str, message: impl Into<String>) -> StoreError {
    StoreError::Invalid(Invalid { field: field.to_string(), message: message.into() })
}

fn check_segment(spec: &SegmentSpec) -> StoreResult<()> {
    if let Some(name) = &spec.name
        && (name.is_empty() || name.len() > 200 || name.contains('/') || name.chars().any(char::is_control))
    {
        return Err(invalid("name", "a segment name is 1 to 200 characters without '/' or control characters"));
    }
    if let Some(state) = &spec.state
        && !SEGMENT_STATES.contains(&state.as_str())
    {
        return Err(invalid("state", "state must be open, in_review or resolved"));
    }
    if let Some(kind) = &spec.item_kind
        && kind != "frames"
        && kind != "labels"
    {
        return Err(invalid("item_kind", "item_kind must be frames or labels"));
    }
    if spec.items.as_ref().is_some_and(|items| items.len() > 1_000_000) {
        return Err(invalid("items", "a segment holds at most 1,000,000 items"));
    }
    Ok(())
}

fn segment_from_row(r: &rusqlite::Row) -> rusqlite::Result<Segment> {
    Ok(Segment {
        name: r.get(0)?,
        description: r.get(1)?,
        state: r.get(2)?,
        item_kind: r.get(3)?,
        items: crate::db::json_column(r, 4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
    })
}

const SEGMENT_COLUMNS: &str = "name, description, state, item_kind, items, created_at, updated_at";

impl Store {
    pub fn create_segment(&self, dataset: &DatasetInfo, spec: &SegmentSpec) -> StoreResult<Segment> {
        check_segment(spec)?;
        let name = spec.name.clone().ok_or_else(|| invalid("name", "a segment needs a name"))?;
        let now = crate::now();
        let items = serde_json::to_string(&spec.items.clone().unwrap_or_default()).expect("ids serialize");
        let kind = spec.item_kind.clone().unwrap_or_else(|| "frames".to_string());
        let state = spec.state.clone().unwrap_or_else(|| "open".to_string());
        self.db().write(|tx| {
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM segments WHERE dataset_id = ?1 AND name = ?2",
                    rusqlite::params![dataset.id, name],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if exists {
                return Err(StoreError::Conflict(format!("segment {name:?} already exists")));
            }
            tx.execute(
                "INSERT INTO segments (dataset_id, name, description, state, item_kind, items, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
                rusqlite::params![
                    dataset.id,
                    name,
                    spec.description.clone().unwrap_or_default(),
                    state,
                    kind,
                    items,
                    now
                ],
            )?;
            Ok(())
        })?;
        self.segment(dataset, &name)
    }

    pub fn segment(&self, dataset: &DatasetInfo, name: &str) -> StoreResult<Segment> {
        self.db().read(|conn| {
            conn.query_row(
                &format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE dataset_id = ?1 AND name = ?2"),
                rusqlite::params![dataset.id, name],
                segment_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound { what: format!("segment {name:?}") })
        })
    }

    pub fn list_segments(&self, dataset: &DatasetInfo) -> StoreResult<Vec<Segment>> {
        self.db().read(|conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {SEGMENT_COLUMNS} FROM segments WHERE dataset_id = ?1 ORDER BY name"))?;
            let rows = stmt.query_map([dataset.id], segment_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Changes the given fields (a new name renames it).
    pub fn update_segment(&self, dataset: &DatasetInfo, name: &str, patch: &SegmentSpec) -> StoreResult<Segment> {
        check_segment(patch)?;
        let mut segment = self.segment(dataset, name)?;
        if let Some(v) = &patch.description {
            segment.description = v.clone();
        }
        if let Some(v) = &patch.state {
            segment.state = v.clone();
        }
        if let Some(v) = &patch.item_kind {
            segment.item_kind = v.clone();
        }
        if let Some(v) = &patch.items {
            segment.items = v.clone();
        }
        let new_name = patch.name.clone().unwrap_or_else(|| name.to_string());
        let now = crate::now();
        let items = serde_json::to_string(&segment.items).expect("ids serialize");
        self.db().write(|tx| {
            if new_name != name {
                let taken: bool = tx
                    .query_row("SELECT 1 FROM segments WHERE dataset_id = ?1 AND name = ?2", rusqlite::params![dataset.id, new_name], |_| Ok(true))
                    .optional()?
                    .unwrap_or(false);
                if taken {
                    return Err(StoreError::Conflict(format!("segment {new_name:?} already exists")));
                }
            }
            tx.execute(
                "UPDATE segments SET name = ?1, description = ?2, state = ?3, item_kind = ?4, items = ?5, updated_at = ?6
                 WHERE dataset_id = ?7 AND name = ?8",
                rusqlite::params![new_name, segment.description, segment.state, segment.item_kind, items, now, dataset.id, name],
            )?;
            Ok(())
        })?;
        self.segment(dataset, &new_name)
    }

    pub fn delete_segment(&self, dataset: &DatasetInfo, name: &str) -> StoreResult<()> {
        let deleted = self.db().write(|tx| {
            Ok(tx.execute(
                "DELETE FROM segments WHERE dataset_id = ?1 AND name = ?2",
                rusqlite::params![dataset.id, name],
            )?)
        })?;
        if deleted == 0 {
            return Err(StoreError::NotFound { what: format!("segment {name:?}") });
        }
        Ok(())
    }

    /// Remembers that a label-error issue is not one; `key` names it by kind and item ids.
    pub fn dismiss_issue(&self, dataset: &DatasetInfo, key: &str) -> StoreResult<()> {
        let now = crate::now();
        self.db().write(|tx| {
            tx.execute(
                "INSERT OR IGNORE INTO dismissed_issues (dataset_id, issue_key, dismissed_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![dataset.id, key, now],
            )?;
            Ok(())
        })
    }

    pub fn dismissed_issues(&self, dataset: &DatasetInfo) -> StoreResult<std::collections::HashSet<String>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare("SELECT issue_key FROM dismissed_issues WHERE dataset_id = ?1")?;
            let rows = stmt.query_map([dataset.id], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Every current box of the dataset's labels (`inference_set` None) or of one inference
    /// set, ordered by frame then label id.
    pub fn current_boxes(
        &self,
        dataset: &DatasetInfo,
        inference_set: Option<&InferenceSetInfo>,
    ) -> StoreResult<Vec<BoxRecord>> {
        let mut boxes = Vec::new();
        self.for_each_current_box(dataset, inference_set, |row| {
            boxes.push(BoxRecord {
                frame_id: row.frame_id.to_string(),
                label_id: row.label_id.to_string(),
                class_id: row.class_id,
                left: row.left,
                top: row.top,
                width: row.width,
                height: row.height,
                confidence: row.confidence,
                iscrowd: row.iscrowd,
                embedding: row.embedding,
            })
        })?;
        Ok(boxes)
    }

    /// [`Store::current_boxes`] one row at a time, the ids borrowed from SQLite's row: what a
    /// reader keeping its own compact form uses, since ten million records with two owned
    /// strings each are gigabytes.
    pub fn for_each_current_box(
        &self,
        dataset: &DatasetInfo,
        inference_set: Option<&InferenceSetInfo>,
        mut each: impl FnMut(BoxRow<'_>),
    ) -> StoreResult<()> {
        let set_id = inference_set.map_or(0, |s| s.id);
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT frame_id, label_id, class_id, \"left\", top, width, height, confidence, iscrowd, embedding
                 FROM labels WHERE dataset_id = ?1 AND inference_set_id = ?2 AND valid_to IS NULL AND kind = 'box2d'
                 ORDER BY frame_id, label_id",
            )?;
            let mut rows = stmt.query([dataset.id, set_id])?;
            while let Some(r) = rows.next()? {
                each(BoxRow {
                    frame_id: borrowed_text(r, 0)?,
                    label_id: borrowed_text(r, 1)?,
                    class_id: r.get(2)?,
                    left: r.get(3)?,
                    top: r.get(4)?,
                    width: r.get(5)?,
                    height: r.get(6)?,
                    confidence: r.get(7)?,
                    iscrowd: r.get::<_, i64>(8)? != 0,
                    embedding: r.get(9)?,
                });
            }
            Ok(())
        })
    }

    /// The current classification labels (ground truth) or one set's classification inferences,
    /// ordered by frame: what confident learning reads.
    pub fn current_classifications(
        &self,
        dataset: &DatasetInfo,
        inference_set: Option<&InferenceSetInfo>,
    ) -> StoreResult<Vec<ClassRecord>> {
        let set_id = inference_set.map_or(0, |s| s.id);
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT frame_id, label_id, class_id, confidence, probabilities
                 FROM labels WHERE dataset_id = ?1 AND inference_set_id = ?2 AND valid_to IS NULL
                   AND kind = 'classification' AND class_id IS NOT NULL
                 ORDER BY frame_id, label_id",
            )?;
            let rows = stmt.query_map([dataset.id, set_id], |r| {
                Ok(ClassRecord {
                    frame_id: r.get(0)?,
                    label_id: r.get(1)?,
                    class_id: r.get(2)?,
                    confidence: r.get(3)?,
                    probabilities: crate::db::optional_json_column(r, 4)?,
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
