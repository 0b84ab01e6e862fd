use crate::db::json_column;
use crate::{Store, StoreError, StoreResult, User, now};
use milkglass_core::{AccessMode, ClassMap, DatasetKind, DatasetSpec, ProjectRole, ProjectSpec, Role, check_name};
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize)]
pub struct ProjectInfo {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    pub access_mode: AccessMode,
    pub classes: ClassMap,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: String,
    pub updated_at: String,
    /// Never reused, unlike the id and the name: what belongs to this project (signed URLs)
    /// is bound to it.
    #[serde(skip)]
    pub uid: String,
}

/// A change to a project: classes are appended (or recoloured), metadata replaced.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPatch {
    #[serde(default)]
    pub classes: Option<ClassMap>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetInfo {
    #[serde(skip)]
    pub id: i64,
    #[serde(skip)]
    pub project_id: i64,
    pub project: String,
    pub name: String,
    pub kind: DatasetKind,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub frame_embedding_dim: Option<usize>,
    pub label_embedding_dim: Option<usize>,
    /// Incremented by every upload and delete.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// Never reused, unlike the id and the name: audit entries, review requests and the
    /// memory of released answers about the dataset's tables are bound to it.
    #[serde(skip)]
    pub uid: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetPatch {
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferenceSetInfo {
    #[serde(skip)]
    pub id: i64,
    pub dataset: String,
    pub name: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UploadInfo {
    pub id: i64,
    pub kind: String,
    pub inference_set: Option<String>,
    pub version: i64,
    pub state: String,
    pub records: i64,
    pub batches: i64,
    pub error: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobInfo {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub progress: i64,
    pub total: Option<i64>,
    pub message: Option<String>,
    pub updated_at: String,
}

/// What a dataset holds and what is being done to it.
#[derive(Debug, Clone, Serialize)]
pub struct DatasetStatus {
    pub dataset: DatasetInfo,
    pub frames: i64,
    pub labels: i64,
    pub inferences: i64,
    pub frame_embeddings: i64,
    pub label_embeddings: i64,
    pub uploads: Vec<UploadInfo>,
    pub jobs: Vec<JobInfo>,
}

fn project_from_row(r: &Row) -> rusqlite::Result<ProjectInfo> {
    Ok(ProjectInfo {
        id: r.get(0)?,
        name: r.get(1)?,
        access_mode: r.get::<_, String>(2)?.parse().unwrap_or(AccessMode::Anonymous),
        classes: json_column(r, 3)?,
        metadata: json_column(r, 4)?,
        created_at: r.get(5)?,
        updated_at: r.get(6)?,
        uid: r.get(7)?,
    })
}

const PROJECT_COLUMNS: &str = "id, name, access_mode, classes, metadata, created_at, updated_at, uid";
const DATASET_COLUMNS: &str = "d.id, d.project_id, p.name, d.name, d.kind, d.metadata, d.frame_embedding_dim, \
     d.label_embedding_dim, d.version, d.created_at, d.updated_at, d.uid";

fn dataset_from_row(r: &Row) -> rusqlite::Result<DatasetInfo> {
    Ok(DatasetInfo {
        id: r.get(0)?,
        project_id: r.get(1)?,
        project: r.get(2)?,
        name: r.get(3)?,
        kind: r.get::<_, String>(4)?.parse().unwrap_or_default(),
        metadata: json_column(r, 5)?,
        frame_embedding_dim: r.get::<_, Option<i64>>(6)?.map(|d| d as usize),
        label_embedding_dim: r.get::<_, Option<i64>>(7)?.map(|d| d as usize),
        version: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        uid: r.get(11)?,
    })
}

pub(crate) fn load_project(conn: &Connection, name: &str) -> StoreResult<ProjectInfo> {
    conn.query_row(&format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE name = ?1"), [name], project_from_row)
        .optional()?
        .ok_or_else(|| StoreError::not_found(format!("project {name:?}")))
}

pub(crate) fn load_dataset(conn: &Connection, project: &str, name: &str) -> StoreResult<DatasetInfo> {
    conn.query_row(
        &format!("SELECT {DATASET_COLUMNS} FROM datasets d JOIN projects p ON p.id = d.project_id WHERE p.name = ?1 AND d.name = ?2"),
        [project, name],
        dataset_from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found(format!("dataset {name:?} in project {project:?}")))
}

pub(crate) fn load_dataset_by_id(conn: &Connection, id: i64) -> StoreResult<DatasetInfo> {
    conn.query_row(
        &format!("SELECT {DATASET_COLUMNS} FROM datasets d JOIN projects p ON p.id = d.project_id WHERE d.id = ?1"),
        [id],
        dataset_from_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found(format!("dataset #{id}")))
}

impl Store {
    /// Creates a project; its creator becomes an owner of it.
    pub fn create_project(&self, spec: &ProjectSpec, creator: &User) -> StoreResult<ProjectInfo> {
        spec.validate()?;
        self.db().write(|tx| {
            if tx.query_row("SELECT 1 FROM projects WHERE name = ?1", [&spec.name], |_| Ok(())).optional()?.is_some() {
                return Err(StoreError::Conflict(format!("project {:?} already exists", spec.name)));
            }
            let at = now();
            tx.execute(
                "INSERT INTO projects (name, access_mode, classes, metadata, created_by, created_at, updated_at, uid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, lower(hex(randomblob(16))))",
                params![
                    spec.name,
                    spec.access_mode.as_str(),
                    serde_json::to_string(&spec.classes)?,
                    serde_json::to_string(&spec.metadata)?,
                    creator.id,
                    at
                ],
            )?;
            let id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO project_members (project_id, user_id, role) VALUES (?1, ?2, 'owner')",
                params![id, creator.id],
            )?;
            load_project(tx, &spec.name)
        })
    }

    pub fn project(&self, name: &str) -> StoreResult<ProjectInfo> {
        self.db().read(|conn| load_project(conn, name))
    }

    /// Projects the user may read: all for admins, their memberships otherwise.
    pub fn list_projects(&self, user: &User) -> StoreResult<Vec<ProjectInfo>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {PROJECT_COLUMNS} FROM projects
                 WHERE ?1 OR id IN (SELECT project_id FROM project_members WHERE user_id = ?2)
                 ORDER BY name"
            ))?;
            let rows = stmt.query_map(params![user.role == Role::Admin, user.id], project_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn update_project(&self, name: &str, patch: &ProjectPatch) -> StoreResult<ProjectInfo> {
        self.db().write(|tx| {
            let mut project = load_project(tx, name)?;
            if let Some(classes) = &patch.classes {
                classes.validate("classes")?;
                project.classes.merge(classes, "classes")?;
            }
            if let Some(metadata) = &patch.metadata {
                project.metadata = metadata.clone();
            }
            tx.execute(
                "UPDATE projects SET classes = ?1, metadata = ?2, updated_at = ?3 WHERE id = ?4",
                params![
                    serde_json::to_string(&project.classes)?,
                    serde_json::to_string(&project.metadata)?,
                    now(),
                    project.id
                ],
            )?;
            load_project(tx, name)
        })
    }

    /// Makes a project anonymous while it holds no datasets: nothing of it was ever loaded by
    /// milkglass, so the promise can still be made. Once it holds data, the mode stays.
    pub fn make_anonymous_while_empty(&self, name: &str) -> StoreResult<ProjectInfo> {
        self.db().write(|tx| {
            let project = load_project(tx, name)?;
            if project.access_mode == AccessMode::Anonymous {
                return Ok(project);
            }
            if !dataset_ids(tx, "project_id = ?1", project.id)?.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "project {name:?} is {} and already holds datasets, whose URLs milkglass may have loaded: \
                     anonymous-mode data goes into a project of its own",
                    project.access_mode
                )));
            }
            tx.execute(
                "UPDATE projects SET access_mode = ?1, updated_at = ?2 WHERE id = ?3",
                params![AccessMode::Anonymous.as_str(), now(), project.id],
            )?;
            load_project(tx, name)
        })
    }

    pub fn delete_project(&self, name: &str) -> StoreResult<()> {
        let dataset_ids = self.db().write(|tx| {
            let project = load_project(tx, name)?;
            let ids = dataset_ids(tx, "project_id = ?1", project.id)?;
            for id in &ids {
                delete_dataset_rows(tx, *id)?;
            }
            tx.execute("DELETE FROM projects WHERE id = ?1", [project.id])?;
            Ok(ids)
        })?;
        for id in dataset_ids {
            self.remove_dataset_files(id);
        }
        Ok(())
    }

    /// Where the similarity indexes built for a dataset are saved.
    pub fn index_dir(&self, dataset_id: i64) -> std::path::PathBuf {
        self.dir().join("indexes").join(dataset_id.to_string())
    }

    /// A deleted dataset's vectors and saved indexes go with it, so that a later dataset
    /// given the same id (SQLite may reuse it) finds none of them.
    fn remove_dataset_files(&self, dataset_id: i64) {
        self.inner.embeddings.remove_dataset(dataset_id);
        self.remove_snapshots(dataset_id);
        let dir = self.index_dir(dataset_id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", dir.display());
        }
    }

    /// The user's role in a project, if any. Admins are owners of every project.
    pub fn project_role(&self, user: &User, project: &ProjectInfo) -> StoreResult<Option<ProjectRole>> {
        if user.role == Role::Admin {
            return Ok(Some(ProjectRole::Owner));
        }
        self.db().read(|conn| {
            let role: Option<String> = conn
                .query_row(
                    "SELECT role FROM project_members WHERE project_id = ?1 AND user_id = ?2",
                    params![project.id, user.id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(role.and_then(|r| r.parse().ok()))
        })
    }

    /// Adds a user to a project or changes their role in it.
    pub fn set_member(&self, project: &ProjectInfo, user_name: &str, role: ProjectRole) -> StoreResult<()> {
        let user = self.user_by_name(user_name)?;
        // A global viewer stays read-only everywhere, whatever a project grants.
        if user.role == Role::Viewer && role == ProjectRole::Owner {
            return Err(StoreError::invalid(
                "role",
                format!("user {user_name:?} is a viewer and cannot own a project"),
            ));
        }
        self.db().write(|tx| {
            tx.execute(
                "INSERT INTO project_members (project_id, user_id, role) VALUES (?1, ?2, ?3)
                 ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
                params![project.id, user.id, role.as_str()],
            )?;
            Ok(())
        })
    }

    pub fn remove_member(&self, project: &ProjectInfo, user_name: &str) -> StoreResult<()> {
        let user = self.user_by_name(user_name)?;
        self.db().write(|tx| {
            let n = tx.execute(
                "DELETE FROM project_members WHERE project_id = ?1 AND user_id = ?2",
                params![project.id, user.id],
            )?;
            if n == 0 {
                return Err(StoreError::not_found(format!("member {user_name:?} of project {:?}", project.name)));
            }
            Ok(())
        })
    }

    pub fn members(&self, project: &ProjectInfo) -> StoreResult<Vec<(String, ProjectRole)>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT u.name, m.role FROM project_members m JOIN users u ON u.id = m.user_id
                 WHERE m.project_id = ?1 ORDER BY u.name",
            )?;
            let rows = stmt.query_map([project.id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (name, role) = row?;
                out.push((name, role.parse().unwrap_or(ProjectRole::Viewer)));
            }
            Ok(out)
        })
    }

    pub fn create_dataset(&self, project: &str, spec: &DatasetSpec) -> StoreResult<DatasetInfo> {
        spec.validate()?;
        self.db().write(|tx| {
            let project = load_project(tx, project)?;
            let taken = tx
                .query_row("SELECT 1 FROM datasets WHERE project_id = ?1 AND name = ?2", params![project.id, spec.name], |_| Ok(()))
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!("dataset {:?} already exists in project {:?}", spec.name, project.name)));
            }
            let at = now();
            tx.execute(
                "INSERT INTO datasets (project_id, name, kind, metadata, frame_embedding_dim, label_embedding_dim, created_at, updated_at, uid)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, lower(hex(randomblob(16))))",
                params![
                    project.id,
                    spec.name,
                    spec.kind.as_str(),
                    serde_json::to_string(&spec.metadata)?,
                    spec.frame_embedding_dim.map(|d| d as i64),
                    spec.label_embedding_dim.map(|d| d as i64),
                    at
                ],
            )?;
            load_dataset(tx, &project.name, &spec.name)
        })
    }

    pub fn dataset(&self, project: &str, name: &str) -> StoreResult<DatasetInfo> {
        self.db().read(|conn| load_dataset(conn, project, name))
    }

    pub fn list_datasets(&self, project: &str) -> StoreResult<Vec<DatasetInfo>> {
        self.db().read(|conn| {
            let project = load_project(conn, project)?;
            let mut stmt = conn.prepare(&format!(
                "SELECT {DATASET_COLUMNS} FROM datasets d JOIN projects p ON p.id = d.project_id WHERE d.project_id = ?1 ORDER BY d.name"
            ))?;
            let rows = stmt.query_map([project.id], dataset_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn update_dataset(&self, project: &str, name: &str, patch: &DatasetPatch) -> StoreResult<DatasetInfo> {
        self.db().write(|tx| {
            let dataset = load_dataset(tx, project, name)?;
            if let Some(metadata) = &patch.metadata {
                tx.execute(
                    "UPDATE datasets SET metadata = ?1, updated_at = ?2 WHERE id = ?3",
                    params![serde_json::to_string(metadata)?, now(), dataset.id],
                )?;
            }
            load_dataset(tx, project, name)
        })
    }

    pub fn delete_dataset(&self, project: &str, name: &str) -> StoreResult<()> {
        let id = self.db().write(|tx| {
            let dataset = load_dataset(tx, project, name)?;
            delete_dataset_rows(tx, dataset.id)?;
            tx.execute("DELETE FROM datasets WHERE id = ?1", [dataset.id])?;
            crate::publications::close_requests_about(tx, &dataset.uid, &format!("dataset {name:?} was deleted"))?;
            Ok(dataset.id)
        })?;
        self.remove_dataset_files(id);
        Ok(())
    }

    pub fn create_inference_set(&self, dataset: &DatasetInfo, spec: &DatasetSpec) -> StoreResult<InferenceSetInfo> {
        check_name("name", &spec.name)?;
        self.db().write(|tx| {
            let taken = tx
                .query_row(
                    "SELECT 1 FROM inference_sets WHERE dataset_id = ?1 AND name = ?2",
                    params![dataset.id, spec.name],
                    |_| Ok(()),
                )
                .optional()?;
            if taken.is_some() {
                return Err(StoreError::Conflict(format!(
                    "inference set {:?} already exists on dataset {:?}",
                    spec.name, dataset.name
                )));
            }
            tx.execute(
                "INSERT INTO inference_sets (dataset_id, name, metadata, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![dataset.id, spec.name, serde_json::to_string(&spec.metadata)?, now()],
            )?;
            load_inference_set(tx, dataset, &spec.name)
        })
    }

    pub fn inference_set(&self, dataset: &DatasetInfo, name: &str) -> StoreResult<InferenceSetInfo> {
        self.db().read(|conn| load_inference_set(conn, dataset, name))
    }

    pub fn list_inference_sets(&self, dataset: &DatasetInfo) -> StoreResult<Vec<InferenceSetInfo>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT id, name, metadata, created_at FROM inference_sets WHERE dataset_id = ?1 ORDER BY name",
            )?;
            let rows = stmt.query_map([dataset.id], |r| inference_set_from_row(r, dataset))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn update_inference_set(
        &self,
        dataset: &DatasetInfo,
        name: &str,
        patch: &DatasetPatch,
    ) -> StoreResult<InferenceSetInfo> {
        self.db().write(|tx| {
            let set = load_inference_set(tx, dataset, name)?;
            if let Some(metadata) = &patch.metadata {
                tx.execute(
                    "UPDATE inference_sets SET metadata = ?1 WHERE id = ?2",
                    params![serde_json::to_string(metadata)?, set.id],
                )?;
            }
            load_inference_set(tx, dataset, name)
        })
    }

    pub fn delete_inference_set(&self, dataset: &DatasetInfo, name: &str) -> StoreResult<()> {
        self.db().write(|tx| {
            let set = load_inference_set(tx, dataset, name)?;
            tx.execute(
                "DELETE FROM labels WHERE dataset_id = ?1 AND inference_set_id = ?2",
                params![dataset.id, set.id],
            )?;
            tx.execute("DELETE FROM inference_sets WHERE id = ?1", [set.id])?;
            // The inference count changed without a new version.
            tx.execute("DELETE FROM dataset_counts WHERE dataset_id = ?1", [dataset.id])?;
            Ok(())
        })
    }

    /// Counts, uploads and jobs of a dataset. Counts are kept per version: counting a dataset
    /// of millions of rows takes seconds, so the first status of a version counts (the upload
    /// path asks for it in the background) and later ones read the stored counts, as long as no
    /// batch was committed since (an upload's batches share a version).
    pub fn dataset_status(&self, project: &str, name: &str) -> StoreResult<DatasetStatus> {
        let (dataset, cached) = self.db().read(|conn| {
            let dataset = load_dataset(conn, project, name)?;
            let batches = committed_batches(conn, dataset.id)?;
            let cached = conn
                .query_row(
                    "SELECT frames, labels, inferences, frame_embeddings, label_embeddings FROM dataset_counts
                     WHERE dataset_id = ?1 AND version = ?2 AND batches = ?3",
                    params![dataset.id, dataset.version, batches],
                    |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]),
                )
                .optional()?;
            Ok((dataset, cached))
        })?;
        let counts: [i64; 5] = match cached {
            Some(counts) => counts,
            None => {
                // Counted in one snapshot with the batch total it belongs to: a batch committed
                // meanwhile makes the stored row stale, and the next status counts again.
                let (counts, batches) =
                    self.db().read(|conn| Ok((count_rows(conn, dataset.id)?, committed_batches(conn, dataset.id)?)))?;
                self.db().write(|tx| {
                    tx.execute(
                        "INSERT INTO dataset_counts (dataset_id, version, batches, frames, labels, inferences,
                             frame_embeddings, label_embeddings)
                         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM datasets WHERE id = ?1)
                         ON CONFLICT (dataset_id) DO UPDATE SET version = ?2, batches = ?3, frames = ?4, labels = ?5,
                             inferences = ?6, frame_embeddings = ?7, label_embeddings = ?8",
                        params![
                            dataset.id,
                            dataset.version,
                            batches,
                            counts[0],
                            counts[1],
                            counts[2],
                            counts[3],
                            counts[4]
                        ],
                    )?;
                    Ok(())
                })?;
                counts
            }
        };
        let [frames, labels, inferences, frame_embeddings, label_embeddings] = counts;
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT u.id, u.kind, s.name, u.version, u.state, u.records, u.batches, u.error, u.started_at, u.finished_at
                 FROM uploads u LEFT JOIN inference_sets s ON s.id = u.inference_set_id
                 WHERE u.dataset_id = ?1 ORDER BY u.id DESC LIMIT 20",
            )?;
            let uploads = stmt
                .query_map([dataset.id], |r| {
                    Ok(UploadInfo {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        inference_set: r.get(2)?,
                        version: r.get(3)?,
                        state: r.get(4)?,
                        records: r.get(5)?,
                        batches: r.get(6)?,
                        error: r.get(7)?,
                        started_at: r.get(8)?,
                        finished_at: r.get(9)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let mut stmt = conn.prepare(
                "SELECT id, kind, state, progress, total, message, updated_at FROM jobs WHERE dataset_id = ?1 ORDER BY id DESC LIMIT 20",
            )?;
            let jobs = stmt
                .query_map([dataset.id], |r| {
                    Ok(JobInfo {
                        id: r.get(0)?,
                        kind: r.get(1)?,
                        state: r.get(2)?,
                        progress: r.get(3)?,
                        total: r.get(4)?,
                        message: r.get(5)?,
                        updated_at: r.get(6)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(DatasetStatus { dataset, frames, labels, inferences, frame_embeddings, label_embeddings, uploads, jobs })
        })
    }
}

fn inference_set_from_row(r: &Row, dataset: &DatasetInfo) -> rusqlite::Result<InferenceSetInfo> {
    Ok(InferenceSetInfo {
        id: r.get(0)?,
        dataset: dataset.name.clone(),
        name: r.get(1)?,
        metadata: json_column(r, 2)?,
        created_at: r.get(3)?,
    })
}

fn load_inference_set(conn: &Connection, dataset: &DatasetInfo, name: &str) -> StoreResult<InferenceSetInfo> {
    conn.query_row(
        "SELECT id, name, metadata, created_at FROM inference_sets WHERE dataset_id = ?1 AND name = ?2",
        params![dataset.id, name],
        |r| inference_set_from_row(r, dataset),
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found(format!("inference set {name:?} of dataset {:?}", dataset.name)))
}

fn dataset_ids(conn: &Connection, condition: &str, value: i64) -> StoreResult<Vec<i64>> {
    let mut stmt = conn.prepare(&format!("SELECT id FROM datasets WHERE {condition}"))?;
    let rows = stmt.query_map([value], |r| r.get(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// Rows are not covered by ON DELETE CASCADE (no foreign key on the hot insert path),
/// so they go explicitly, in the same transaction as the dataset.
fn delete_dataset_rows(conn: &Connection, dataset_id: i64) -> StoreResult<()> {
    conn.execute("DELETE FROM labels WHERE dataset_id = ?1", [dataset_id])?;
    conn.execute("DELETE FROM frames WHERE dataset_id = ?1", [dataset_id])?;
    Ok(())
}

impl Store {
    /// How many batches have been committed to the dataset, all uploads together: what
    /// tells a version still being uploaded from a finished one.
    pub fn committed_batches(&self, dataset: &DatasetInfo) -> StoreResult<i64> {
        self.db().read(|conn| committed_batches(conn, dataset.id))
    }
}

/// How many batches have been committed to a dataset, all uploads together.
fn committed_batches(conn: &Connection, dataset_id: i64) -> StoreResult<i64> {
    Ok(conn
        .query_row("SELECT COALESCE(SUM(batches), 0) FROM uploads WHERE dataset_id = ?1", [dataset_id], |r| r.get(0))?)
}

/// `[frames, labels, inferences, frame embeddings, label embeddings]` of a dataset's current rows.
fn count_rows(conn: &Connection, dataset_id: i64) -> StoreResult<[i64; 5]> {
    let count = |sql: &str| -> StoreResult<i64> { Ok(conn.query_row(sql, [dataset_id], |r| r.get(0))?) };
    Ok([
        count("SELECT count(*) FROM frames WHERE dataset_id = ?1 AND valid_to IS NULL")?,
        count("SELECT count(*) FROM labels WHERE dataset_id = ?1 AND inference_set_id = 0 AND valid_to IS NULL")?,
        count("SELECT count(*) FROM labels WHERE dataset_id = ?1 AND inference_set_id <> 0 AND valid_to IS NULL")?,
        count("SELECT count(*) FROM frames WHERE dataset_id = ?1 AND valid_to IS NULL AND embedding IS NOT NULL")?,
        count("SELECT count(*) FROM labels WHERE dataset_id = ?1 AND valid_to IS NULL AND embedding IS NOT NULL")?,
    ])
}
