//! The privacy ledger: what each principal (an analyst, or the pool of analysts who share
//! results) has spent of each differentially private table's budget, and the answers
//! released, so that the same question asked again replays its answer at no cost.
//!
//! A charge is one write transaction: replay-or-check-or-charge, the stored answer and the
//! audit entry commit together or not at all, and SQLite's single writer makes two
//! concurrent charges take turns, so the last epsilon is spent once.

use crate::audit::{AuditEntry, NewAuditEntry, append};
use crate::{Store, StoreResult, now};
use rusqlite::{OptionalExtension, params};

/// What a principal may spend of one table.
#[derive(Debug, Clone, Copy)]
pub struct DpLimits {
    pub epsilon: f64,
    pub delta: f64,
    /// All principals together (against collusion); `None`: no cap.
    pub table_epsilon: Option<f64>,
    /// Only charges after this moment count (a renewing budget); `None`: all do.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

impl DpLimits {
    fn since(&self) -> Option<String> {
        self.since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

/// What was spent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DpSpent {
    pub epsilon: f64,
    pub delta: f64,
    pub queries: i64,
}

/// How a charge went.
#[derive(Debug)]
pub enum DpCharge {
    /// The question was answered before: its stored answer, nothing spent.
    Replayed { answer: Vec<u8>, audit_id: i64 },
    /// Charged; the answer is stored and audited.
    Charged { audit: Box<AuditEntry>, spent: DpSpent },
    /// Not enough budget left: nothing spent, nothing stored (the caller audits the refusal).
    Exhausted { spent: DpSpent, table_epsilon_spent: f64 },
}

/// Slack for floating-point sums of epsilons (ten charges of 0.1 make 0.9999999999999999).
const SLACK: f64 = 1e-9;

/// What `principal` spent: every charge, or those after `since` (a renewing budget, counted
/// from the stored answers, each of which records its charge).
fn spent_in(
    conn: &rusqlite::Connection,
    table_uid: &str,
    principal: &str,
    since: Option<&str>,
) -> StoreResult<DpSpent> {
    let spent = match since {
        None => conn
            .query_row(
                "SELECT epsilon_spent, delta_spent, queries FROM dp_budgets WHERE table_uid = ?1 AND principal = ?2",
                params![table_uid, principal],
                |r| Ok(DpSpent { epsilon: r.get(0)?, delta: r.get(1)?, queries: r.get(2)? }),
            )
            .optional()?,
        Some(since) => Some(conn.query_row(
            "SELECT COALESCE(SUM(epsilon), 0), COALESCE(SUM(delta), 0), COUNT(*) FROM dp_answers
             WHERE table_uid = ?1 AND principal = ?2 AND created_at >= ?3",
            params![table_uid, principal, since],
            |r| Ok(DpSpent { epsilon: r.get(0)?, delta: r.get(1)?, queries: r.get(2)? }),
        )?),
    };
    Ok(spent.unwrap_or_default())
}

fn table_spent_in(conn: &rusqlite::Connection, table_uid: &str, since: Option<&str>) -> StoreResult<f64> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(epsilon), 0) FROM dp_answers WHERE table_uid = ?1 AND (?2 IS NULL OR created_at >= ?2)",
        params![table_uid, since],
        |r| r.get(0),
    )?)
}

fn stored_in(
    conn: &rusqlite::Connection,
    table_uid: &str,
    principal: &str,
    question: &str,
) -> StoreResult<Option<(Vec<u8>, i64)>> {
    Ok(conn
        .query_row(
            "SELECT answer, audit_id FROM dp_answers WHERE table_uid = ?1 AND principal = ?2 AND question = ?3",
            params![table_uid, principal, question],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

impl Store {
    /// What `principal` spent of the table's budget (since `limits.since`, for a renewing one).
    pub fn dp_spent(&self, table_uid: &str, principal: &str, limits: &DpLimits) -> StoreResult<DpSpent> {
        self.db().read(|conn| spent_in(conn, table_uid, principal, limits.since().as_deref()))
    }

    /// What every principal together spent of the table's budget.
    pub fn dp_table_spent(&self, table_uid: &str, limits: &DpLimits) -> StoreResult<f64> {
        self.db().read(|conn| table_spent_in(conn, table_uid, limits.since().as_deref()))
    }

    /// The answer released for this question before, if any.
    pub fn dp_stored_answer(
        &self,
        table_uid: &str,
        principal: &str,
        question: &str,
    ) -> StoreResult<Option<(Vec<u8>, i64)>> {
        self.db().read(|conn| stored_in(conn, table_uid, principal, question))
    }

    /// Charges `cost` (epsilon, delta) and stores `answer` with its audit entry, in one
    /// transaction; or replays the stored answer; or, where the budget would be passed,
    /// changes nothing.
    #[allow(clippy::too_many_arguments)]
    pub fn dp_charge(
        &self,
        table_uid: &str,
        principal: &str,
        question: &str,
        cost: (f64, f64),
        limits: DpLimits,
        answer: &[u8],
        audit: NewAuditEntry,
    ) -> StoreResult<DpCharge> {
        self.db().write(|tx| {
            if let Some((answer, audit_id)) = stored_in(tx, table_uid, principal, question)? {
                return Ok(DpCharge::Replayed { answer, audit_id });
            }
            let since = limits.since();
            let spent = spent_in(tx, table_uid, principal, since.as_deref())?;
            let table_spent = table_spent_in(tx, table_uid, since.as_deref())?;
            let over_table = limits.table_epsilon.is_some_and(|cap| table_spent + cost.0 > cap + SLACK);
            if spent.epsilon + cost.0 > limits.epsilon + SLACK
                || spent.delta + cost.1 > limits.delta + SLACK
                || over_table
            {
                return Ok(DpCharge::Exhausted { spent, table_epsilon_spent: table_spent });
            }
            let entry = append(tx, audit)?;
            let at = now();
            tx.execute(
                "INSERT INTO dp_budgets (table_uid, principal, epsilon_spent, delta_spent, queries, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5)
                 ON CONFLICT (table_uid, principal) DO UPDATE SET
                   epsilon_spent = epsilon_spent + excluded.epsilon_spent,
                   delta_spent = delta_spent + excluded.delta_spent,
                   queries = queries + 1, updated_at = excluded.updated_at",
                params![table_uid, principal, cost.0, cost.1, at],
            )?;
            tx.execute(
                "INSERT INTO dp_answers (table_uid, principal, question, answer, epsilon, delta, audit_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![table_uid, principal, question, answer, cost.0, cost.1, entry.id, at],
            )?;
            let spent = spent_in(tx, table_uid, principal, since.as_deref())?;
            Ok(DpCharge::Charged { audit: Box::new(entry), spent })
        })
    }
}
