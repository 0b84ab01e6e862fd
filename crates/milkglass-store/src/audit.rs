//! The audit log: every query, answered or not, appended with a hash chain so that
//! any edit, deletion or reordering of past entries is detectable.

use crate::db::json_column;
use crate::{Store, StoreResult, now};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One query as the audit log records it: what the caller logged, plus its place in
/// the chain.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    #[serde(flatten)]
    pub entry: NewAuditEntry,
    pub hash: String,
    /// The uids and owners of `entry.tables` when the entry was written (empty for entries
    /// older than uids, and for names with no table): entries belong to those tables and
    /// their owners at the time, never to a later table of the same name.
    #[serde(skip)]
    pub table_uids: Vec<String>,
    #[serde(skip)]
    pub table_owners: Vec<String>,
}

/// What the caller knows about a query when it is logged.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NewAuditEntry {
    pub user: String,
    pub tables: Vec<String>,
    pub query: String,
    /// answered, flagged, held, refused, invalid, failed, approved, rejected, released, saved
    pub decision: String,
    pub reason: Option<String>,
    pub rows_returned: Option<i64>,
    pub columns: Vec<String>,
    pub smallest_group: Option<i64>,
    pub request_id: Option<i64>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of an entry: SHA-256 over the previous hash and every field, each
/// length-prefixed so that no two different entries serialize the same.
fn entry_hash(prev: &str, entry: &AuditEntry) -> String {
    let e = &entry.entry;
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(prev.as_bytes());
    field(entry.id.to_string().as_bytes());
    field(entry.at.as_bytes());
    field(e.user.as_bytes());
    field(serde_json::to_string(&e.tables).unwrap_or_default().as_bytes());
    field(e.query.as_bytes());
    field(e.decision.as_bytes());
    field(e.reason.as_deref().unwrap_or("\u{0}").as_bytes());
    field(format!("{:?}", e.rows_returned).as_bytes());
    field(serde_json::to_string(&e.columns).unwrap_or_default().as_bytes());
    field(format!("{:?}", e.smallest_group).as_bytes());
    field(format!("{:?}", e.request_id).as_bytes());
    // Entries written before tables had uids hash as they always did.
    if !entry.table_uids.is_empty() {
        field(serde_json::to_string(&entry.table_uids).unwrap_or_default().as_bytes());
        field(serde_json::to_string(&entry.table_owners).unwrap_or_default().as_bytes());
    }
    hex::encode(h.finalize())
}

fn entry_from_row(r: &rusqlite::Row) -> rusqlite::Result<(AuditEntry, String)> {
    Ok((
        AuditEntry {
            id: r.get(0)?,
            at: r.get(1)?,
            entry: NewAuditEntry {
                user: r.get(2)?,
                tables: json_column(r, 3)?,
                query: r.get(4)?,
                decision: r.get(5)?,
                reason: r.get(6)?,
                rows_returned: r.get(7)?,
                columns: json_column(r, 8)?,
                smallest_group: r.get(9)?,
                request_id: r.get(10)?,
            },
            hash: r.get(12)?,
            table_uids: crate::db::optional_json_column(r, 13)?.unwrap_or_default(),
            table_owners: crate::db::optional_json_column(r, 14)?.unwrap_or_default(),
        },
        r.get(11)?,
    ))
}

const AUDIT_COLUMNS: &str = "id, at, user_name, tables, query, decision, reason, rows_returned, columns, \
     smallest_group, request_id, prev_hash, hash, table_uids, table_owners";

impl Store {
    /// Appends an entry; the chain is extended inside the same transaction.
    pub fn audit(&self, new: NewAuditEntry) -> StoreResult<AuditEntry> {
        self.db().write(|tx| append(tx, new))
    }

    /// Entries, oldest first, optionally only those touching `table` or made by `user`.
    pub fn audit_entries(&self, table: Option<&str>, user: Option<&str>) -> StoreResult<Vec<AuditEntry>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log
                 WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM json_each(tables) WHERE value = ?1))
                   AND (?2 IS NULL OR user_name = ?2)
                 ORDER BY id"
            ))?;
            let rows = stmt.query_map(params![table, user], entry_from_row)?;
            Ok(rows.map(|r| r.map(|(e, _)| e)).collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Walks the whole chain; returns the id of the first entry that does not match, if any.
    pub fn verify_audit(&self) -> StoreResult<Result<usize, i64>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id"))?;
            let mut rows = stmt.query([])?;
            let mut expected_prev = GENESIS.to_string();
            let mut count = 0;
            while let Some(row) = rows.next()? {
                let (entry, prev) = entry_from_row(row)?;
                if prev != expected_prev || entry_hash(&prev, &entry) != entry.hash {
                    return Ok(Err(entry.id));
                }
                expected_prev = entry.hash;
                count += 1;
            }
            Ok(Ok(count))
        })
    }
}

/// Appends an entry inside `tx`, extending the chain: for writes that must commit together
/// with their audit entry (a privacy budget's charge).
pub(crate) fn append(tx: &rusqlite::Transaction, new: NewAuditEntry) -> StoreResult<AuditEntry> {
    let prev: String = tx
        .query_row("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
        .optional()?
        .unwrap_or_else(|| GENESIS.to_string());
    let id: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM audit_log", [], |r| r.get(0))?;
    let found = crate::guarded::table_identities(tx, &new.tables)?;
    let (mut table_uids, mut table_owners) = (Vec::new(), Vec::new());
    for (uid, owners) in found.into_iter().flatten() {
        table_uids.push(uid);
        table_owners.extend(owners);
    }
    let mut entry = AuditEntry { id, at: now(), entry: new, hash: String::new(), table_uids, table_owners };
    entry.hash = entry_hash(&prev, &entry);
    let e = &entry.entry;
    tx.execute(
        &format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
        ),
        params![
            entry.id,
            entry.at,
            e.user,
            serde_json::to_string(&e.tables)?,
            e.query,
            e.decision,
            e.reason,
            e.rows_returned,
            serde_json::to_string(&e.columns)?,
            e.smallest_group,
            e.request_id,
            prev,
            entry.hash,
            serde_json::to_string(&entry.table_uids)?,
            serde_json::to_string(&entry.table_owners)?
        ],
    )?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..3 {
            store
                .audit(NewAuditEntry {
                    user: "sam".into(),
                    query: format!("SELECT {i}"),
                    decision: "answered".into(),
                    ..Default::default()
                })
                .unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), Ok(3));
        // Triggers refuse edits through SQL; a forger who drops them is still caught.
        let conn = rusqlite::Connection::open(dir.path().join("catalog.db")).unwrap();
        assert!(conn.execute("UPDATE audit_log SET decision = 'refused' WHERE id = 2", []).is_err());
        conn.execute_batch("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET query = 'SELECT 42' WHERE id = 2;")
            .unwrap();
        assert_eq!(store.verify_audit().unwrap(), Err(2));
    }
}
