//! A dataset published to outside analysts: its tables under a policy, like a guarded
//! table's, counted in frames or in the values of a metadata key the owner names.
//!
//! A dataset's tables have one identity each across every front end and log:
//! `<project>/<dataset>/<table>` (names cannot hold '/'), and `<dataset>@v<N>` for a
//! version other than the current one. Audit entries and review requests bind those
//! names to the dataset's uid, so a later dataset of the same name inherits nothing.

use crate::db::{json_column, optional_json_column};
use crate::{DatasetInfo, Store, StoreError, StoreResult, User, now};
use milkglass_core::Policy;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct DatasetPublication {
    pub project: String,
    pub dataset: String,
    pub owner: String,
    pub policy: Policy,
    /// Scientists who may query the dataset's tables; `None` means every scientist.
    pub readers: Option<Vec<String>>,
    /// The metadata key whose values are the units a minimum counts; `None`: frames.
    pub unit: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub dataset_id: i64,
}

impl DatasetPublication {
    /// Whether a scientist is among the readers (owners and members read through the project).
    pub fn readable_by(&self, user: &User) -> bool {
        crate::guarded::among_readers(self.readers.as_deref(), user)
    }
}

const PUBLICATION_COLUMNS: &str =
    "p.name, d.name, u.name, x.policy, x.readers, x.unit, x.created_at, x.updated_at, d.id";
const PUBLICATION_FROM: &str = "dataset_publications x JOIN datasets d ON d.id = x.dataset_id
     JOIN projects p ON p.id = d.project_id JOIN users u ON u.id = x.owner_id";

fn publication_from_row(r: &rusqlite::Row) -> rusqlite::Result<DatasetPublication> {
    Ok(DatasetPublication {
        project: r.get(0)?,
        dataset: r.get(1)?,
        owner: r.get(2)?,
        policy: json_column(r, 3)?,
        readers: optional_json_column(r, 4)?,
        unit: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
        dataset_id: r.get(8)?,
    })
}

/// A dataset table's identity: `<project>/<dataset>[@v<N>]/<table>`.
pub fn dataset_table_name(project: &str, dataset: &str, version: Option<i64>, table: &str) -> String {
    match version {
        Some(v) => format!("{project}/{dataset}@v{v}/{table}"),
        None => format!("{project}/{dataset}/{table}"),
    }
}

/// The project and dataset a dataset table's identity names.
fn parse_dataset_table_name(name: &str) -> Option<(&str, &str)> {
    let mut parts = name.split('/');
    let (project, dataset, _table) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some((project, dataset.split_once('@').map_or(dataset, |(d, _)| d)))
}

impl Store {
    /// Publishes (or re-polices) a dataset's tables to outside analysts.
    pub fn publish_dataset(
        &self,
        dataset: &DatasetInfo,
        owner: &User,
        policy: &Policy,
        readers: Option<&[String]>,
        unit: Option<&str>,
    ) -> StoreResult<DatasetPublication> {
        if let Some(unit) = unit
            && (unit.is_empty() || unit.len() > 256)
        {
            return Err(StoreError::invalid("unit", "must be a metadata key of 1 to 256 bytes"));
        }
        let readers_json = readers.map(serde_json::to_string).transpose()?;
        self.db().write(|tx| {
            let at = now();
            tx.execute(
                "INSERT INTO dataset_publications (dataset_id, owner_id, policy, readers, unit, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (dataset_id) DO UPDATE SET owner_id = ?2, policy = ?3, readers = ?4, unit = ?5, updated_at = ?6",
                params![dataset.id, owner.id, serde_json::to_string(policy)?, readers_json, unit, at],
            )?;
            Ok(())
        })?;
        self.dataset_publication(dataset)?
            .ok_or_else(|| StoreError::Corrupt(format!("the publication of dataset {:?} vanished", dataset.name)))
    }

    pub fn dataset_publication(&self, dataset: &DatasetInfo) -> StoreResult<Option<DatasetPublication>> {
        self.db().read(|conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {PUBLICATION_COLUMNS} FROM {PUBLICATION_FROM} WHERE x.dataset_id = ?1"),
                    [dataset.id],
                    publication_from_row,
                )
                .optional()?)
        })
    }

    /// Every published dataset, by project and dataset name.
    pub fn dataset_publications(&self) -> StoreResult<Vec<DatasetPublication>> {
        self.db().read(|conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {PUBLICATION_COLUMNS} FROM {PUBLICATION_FROM} ORDER BY p.name, d.name"))?;
            let rows = stmt.query_map([], publication_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Withdraws a publication; its pending review requests are closed unanswered.
    pub fn unpublish_dataset(&self, dataset: &DatasetInfo) -> StoreResult<()> {
        self.db().write(|tx| {
            let n = tx.execute("DELETE FROM dataset_publications WHERE dataset_id = ?1", [dataset.id])?;
            if n == 0 {
                return Err(StoreError::not_found(format!("a publication of dataset {:?}", dataset.name)));
            }
            close_requests_about(tx, &dataset.uid, &format!("dataset {:?} was unpublished", dataset.name))
        })
    }
}

/// Closes the pending review requests that read something of identity `uid`.
pub(crate) fn close_requests_about(tx: &rusqlite::Connection, uid: &str, why: &str) -> StoreResult<()> {
    tx.execute(
        "UPDATE review_requests SET state = 'rejected', decided_by = 'milkglass', decision_reason = ?1, decided_at = ?2
         WHERE state = 'pending' AND EXISTS (SELECT 1 FROM json_each(table_uids) WHERE value = ?3)",
        params![why, now(), uid],
    )?;
    Ok(())
}

/// The uid and owners of a dataset table's identity: the dataset's uid, the project's
/// owners and the publication's owner. `None` when no such dataset exists now.
pub(crate) fn dataset_table_identity(
    conn: &rusqlite::Connection,
    name: &str,
) -> StoreResult<Option<crate::guarded::TableIdentity>> {
    let Some((project, dataset)) = parse_dataset_table_name(name) else { return Ok(None) };
    let found: Option<(i64, String, i64)> = conn
        .query_row(
            "SELECT d.id, d.uid, p.id FROM datasets d JOIN projects p ON p.id = d.project_id WHERE p.name = ?1 AND d.name = ?2",
            [project, dataset],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((dataset_id, uid, project_id)) = found else { return Ok(None) };
    let mut stmt = conn.prepare_cached(
        "SELECT u.name FROM project_members m JOIN users u ON u.id = m.user_id WHERE m.project_id = ?1 AND m.role = 'owner'
         UNION SELECT u.name FROM dataset_publications x JOIN users u ON u.id = x.owner_id WHERE x.dataset_id = ?2
         ORDER BY 1",
    )?;
    let owners = stmt.query_map(params![project_id, dataset_id], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
    Ok(Some((uid, owners)))
}

impl Store {
    /// The uid and owners of a guarded or dataset table as it is now; `None` if none.
    pub fn table_identity(&self, name: &str) -> StoreResult<Option<(String, Vec<String>)>> {
        self.db().read(|conn| {
            Ok(crate::guarded::table_identities(conn, std::slice::from_ref(&name.to_string()))?.pop().flatten())
        })
    }
}
