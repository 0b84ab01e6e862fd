//! What released answers covered: for each pool of analysts and guarded table, the row
//! sets of earlier answers, so that the guard can refuse a query whose rows differ from
//! one of them by a few people. The sets themselves are opaque bytes here (the guard's
//! roaring bitmaps); the store only keeps them and the pool each analyst belongs to.

use crate::{Store, StoreError, StoreResult, User, now};
use milkglass_core::check_name;
use rusqlite::{OptionalExtension, params};

/// Whose answers a memory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoverageOf {
    /// A guarded table's, by its catalog id (the memory goes with the table).
    Table(i64),
    /// A dataset table snapshot's, by its key (dataset uid, version, unit, table): row ids
    /// are that snapshot's units.
    DatasetTable(String),
}

impl CoverageOf {
    /// The memory's table, its key column and the key.
    fn place(&self) -> (&'static str, &'static str, rusqlite::types::Value) {
        match self {
            CoverageOf::Table(id) => ("answered_coverage", "table_id", (*id).into()),
            CoverageOf::DatasetTable(key) => ("answered_dataset_coverage", "table_key", key.clone().into()),
        }
    }
}

/// One earlier answer's coverage of a table.
#[derive(Debug, Clone)]
pub struct AnsweredCoverage {
    pub audit_id: i64,
    /// How many rows the set holds.
    pub rows: i64,
    pub coverage: Vec<u8>,
}

impl Store {
    /// The key under which `user`'s answers are remembered: the pool an administrator put
    /// them in, or the user alone (by id, so that no later user can inherit it).
    pub fn coverage_pool(&self, user: &User) -> StoreResult<String> {
        let pool: Option<String> = self.db().read(|conn| {
            Ok(conn.query_row("SELECT pool FROM users WHERE id = ?1", [user.id], |r| r.get(0)).optional()?.flatten())
        })?;
        Ok(match pool {
            Some(pool) => format!("pool:{pool}"),
            None => format!("user:{}", user.id),
        })
    }

    /// Puts an active user in a pool of analysts who may share results (`None`: alone).
    /// Their answers are compared with each other's from then on.
    pub fn set_user_pool(&self, name: &str, pool: Option<&str>) -> StoreResult<()> {
        if let Some(pool) = pool {
            check_name("pool", pool)?;
        }
        self.db().write(|tx| {
            let n =
                tx.execute("UPDATE users SET pool = ?1 WHERE name = ?2 AND revoked_at IS NULL", params![pool, name])?;
            if n == 0 {
                return Err(StoreError::not_found(format!("active user {name:?}")));
            }
            Ok(())
        })
    }

    /// Earlier answers' coverage of a table in `pool`, oldest first.
    pub fn answered_coverage(&self, pool: &str, of: &CoverageOf) -> StoreResult<Vec<AnsweredCoverage>> {
        let (table, column, key) = of.place();
        self.db().read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT audit_id, rows, coverage FROM {table} WHERE pool = ?1 AND {column} = ?2 ORDER BY id"
            ))?;
            let rows = stmt.query_map(params![pool, key], |r| {
                Ok(AnsweredCoverage { audit_id: r.get(0)?, rows: r.get(1)?, coverage: r.get(2)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Remembers what a released answer (audit entry `audit_id`) covered of a table.
    pub fn remember_coverage(
        &self,
        pool: &str,
        of: &CoverageOf,
        audit_id: i64,
        rows: i64,
        coverage: &[u8],
    ) -> StoreResult<()> {
        let (table, column, key) = of.place();
        self.db().write(|tx| {
            tx.execute(
                &format!(
                    "INSERT INTO {table} (pool, {column}, audit_id, rows, coverage, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                ),
                params![pool, key, audit_id, rows, coverage, now()],
            )?;
            Ok(())
        })
    }
}
