//! The review queue: unsafe queries held for the owner's decision. Requests live in
//! the catalog, so they survive a restart.

use crate::db::json_column;
use crate::{Store, StoreError, StoreResult, User, now};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// What a held query's answer would reveal, as the guard knew it when it held the query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Reveals {
    /// The answer's columns.
    pub columns: Vec<String>,
    /// Rows of the answer; `None` when the plan alone put the query outside the safe zone,
    /// so it was not run before the owner's decision.
    pub rows: Option<i64>,
    /// The fewest table rows behind one result row, when the guard ran and counted it.
    pub smallest_group: Option<i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReviewRequest {
    pub id: i64,
    pub user: String,
    pub query: String,
    pub tables: Vec<String>,
    /// Why the guard held it.
    pub reason: String,
    /// pending, approved, rejected, or delivered (an approved result handed over once).
    pub state: String,
    pub decided_by: Option<String>,
    pub decision_reason: Option<String>,
    pub created_at: String,
    pub decided_at: Option<String>,
    /// What the answer would reveal; `None` for requests held before this was kept.
    pub reveals: Option<Reveals>,
    /// The uids of `tables` when the query was held (empty for requests older than uids):
    /// only the owner of those very tables may decide.
    #[serde(skip)]
    pub table_uids: Vec<String>,
}

const REQUEST_COLUMNS: &str = "r.id, u.name, r.query, r.tables, r.reason, r.state, r.decided_by, r.decision_reason, \
     r.created_at, r.decided_at, r.table_uids, r.reveals";

fn request_from_row(r: &rusqlite::Row) -> rusqlite::Result<ReviewRequest> {
    Ok(ReviewRequest {
        id: r.get(0)?,
        user: r.get(1)?,
        query: r.get(2)?,
        tables: json_column(r, 3)?,
        reason: r.get(4)?,
        state: r.get(5)?,
        decided_by: r.get(6)?,
        decision_reason: r.get(7)?,
        created_at: r.get(8)?,
        decided_at: r.get(9)?,
        table_uids: crate::db::optional_json_column(r, 10)?.unwrap_or_default(),
        reveals: crate::db::optional_json_column(r, 11)?,
    })
}

impl Store {
    pub fn hold_for_review(
        &self,
        user: &User,
        query: &str,
        tables: &[String],
        reason: &str,
        reveals: &Reveals,
    ) -> StoreResult<ReviewRequest> {
        let id = self.db().write(|tx| {
            let uids = crate::guarded::table_uids(tx, tables)?;
            tx.execute(
                "INSERT INTO review_requests (user_id, query, tables, reason, state, created_at, table_uids, reveals)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7)",
                params![
                    user.id,
                    query,
                    serde_json::to_string(tables)?,
                    reason,
                    now(),
                    serde_json::to_string(&uids)?,
                    serde_json::to_string(reveals)?
                ],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        self.review_request(id)
    }

    pub fn review_request(&self, id: i64) -> StoreResult<ReviewRequest> {
        self.db().read(|conn| {
            conn.query_row(
                &format!(
                    "SELECT {REQUEST_COLUMNS} FROM review_requests r JOIN users u ON u.id = r.user_id WHERE r.id = ?1"
                ),
                [id],
                request_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(format!("review request {id}")))
        })
    }

    /// Requests, newest first; `state` filters (e.g. "pending").
    pub fn review_requests(&self, state: Option<&str>) -> StoreResult<Vec<ReviewRequest>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {REQUEST_COLUMNS} FROM review_requests r JOIN users u ON u.id = r.user_id
                 WHERE ?1 IS NULL OR r.state = ?1 ORDER BY r.id DESC"
            ))?;
            let rows = stmt.query_map([state], request_from_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Records the owner's decision on a pending request.
    pub fn decide_review(&self, id: i64, approve: bool, by: &User, reason: Option<&str>) -> StoreResult<ReviewRequest> {
        self.db().write(|tx| {
            let n = tx.execute(
                "UPDATE review_requests SET state = ?1, decided_by = ?2, decision_reason = ?3, decided_at = ?4
                 WHERE id = ?5 AND state = 'pending'",
                params![if approve { "approved" } else { "rejected" }, by.name, reason, now(), id],
            )?;
            if n == 0 {
                let state: Option<String> =
                    tx.query_row("SELECT state FROM review_requests WHERE id = ?1", [id], |r| r.get(0)).optional()?;
                return Err(match state {
                    None => StoreError::not_found(format!("review request {id}")),
                    Some(state) => StoreError::Conflict(format!("review request {id} is already {state}")),
                });
            }
            Ok(())
        })?;
        self.review_request(id)
    }

    /// Marks an approved request's result as handed over; true only the first time.
    pub fn deliver_review(&self, id: i64) -> StoreResult<bool> {
        self.db().write(|tx| {
            Ok(tx
                .execute("UPDATE review_requests SET state = 'delivered' WHERE id = ?1 AND state = 'approved'", [id])?
                == 1)
        })
    }
}
