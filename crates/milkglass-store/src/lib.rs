//! Embedded storage for milkglass.
//!
//! One data directory holds everything:
//! - `catalog.db`: SQLite in WAL mode with the catalog (users, tokens, projects,
//!   datasets, uploads, jobs) and the dataset rows (frames, labels, inferences).
//!   Rows are versioned (`valid_from`/`valid_to`), so every upload is a version and
//!   older versions stay readable.
//! - `embeddings/<dataset id>/{frames,labels}.f32`: append-only little-endian f32
//!   vectors, memory-mapped for reading; rows refer to vectors by ordinal.
//!
//! - `catalog-secrets.key` (and, after a rotation, `.previous`): the key that seals the
//!   secrets in `catalog.db` (see `secrets`).
//!
//! Atomicity: a batch appends its vectors and syncs them *before* the SQLite
//! transaction that references them commits. A crash leaves at most an
//! unreferenced tail in a vector file, which is harmless and trimmed on open.

mod access;
mod answered;
mod audit;
pub mod backup;
mod catalog;
mod db;
mod dp_ledger;
mod embeddings;
mod error;
mod frame_index;
mod guarded;
mod ingest;
mod insight;
pub mod key_file;
mod migrations;
mod publications;
mod reviews;
mod rows;
mod scores;
mod secrets;
mod snapshot;
mod untrusted;
mod users;

pub use access::{FetchSettings, S3Settings};
pub use answered::{AnsweredCoverage, CoverageOf};
pub use audit::{AuditEntry, NewAuditEntry};
pub use catalog::{DatasetInfo, DatasetPatch, DatasetStatus, InferenceSetInfo, ProjectInfo, ProjectPatch, UploadInfo};
pub use dp_ledger::{DpCharge, DpLimits, DpSpent};
pub use embeddings::{EmbeddingFile, Space};
pub use error::{StoreError, StoreResult};
pub use frame_index::{FrameIndex, Selection};
pub use guarded::{GuardedTableInfo, ImportedTable, ROW_ID, TableFormat};
pub use ingest::{BatchReport, EmbeddingRecord, EmbeddingTarget, Upload, UploadKind};
pub use insight::{BoxRecord, BoxRow, ClassRecord, FrameRecord, Segment, SegmentSpec};
pub use publications::{DatasetPublication, dataset_table_name};
pub use reviews::{Reveals, ReviewRequest};
pub use rows::{FrameFilter, FramePage, FrameRow, LabelRow, MAX_PAGE, MetaOp, MetaPredicate, StoredFrame};
pub use scores::{InsightScores, IssueScore, PointScore, SCORE_COLUMNS, is_score_table};
pub use secrets::Rotation;
pub use snapshot::{DatasetSnapshot, MATCH_IOU, SnapshotTable, metadata_column};
pub use untrusted::{CheckedIpcStream, decode_untrusted};
pub use users::{IssuedToken, TokenInfo, TokenSpec, User, UserInfo};

use db::Db;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The store over one data directory. Cheap to clone; safe to share across threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    db: Db,
    embeddings: embeddings::EmbeddingFiles,
    secrets: secrets::Secrets,
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and brings its schema up to date.
    pub fn open(dir: impl AsRef<Path>) -> StoreResult<Store> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let db = Db::open(&dir.join("catalog.db"))?;
        let embeddings = embeddings::EmbeddingFiles::new(dir.join("embeddings"));
        let secrets = secrets::Secrets::open(&dir)?;
        let store = Store { inner: Arc::new(Inner { dir, db, embeddings, secrets }) };
        store.sweep_staging();
        store.seal_secrets_written_in_clear()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn secrets(&self) -> &secrets::Secrets {
        &self.inner.secrets
    }

    /// Runs SQLite's own consistency check; returns its report (`["ok"]` when healthy).
    pub fn integrity_check(&self) -> StoreResult<Vec<String>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare("PRAGMA integrity_check")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

pub(crate) fn now() -> String {
    timestamp(chrono::Utc::now())
}

/// The one text form of times in the catalog: RFC 3339 in UTC with milliseconds, which sorts as
/// text in time order (SQL compares them as strings).
pub(crate) fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
