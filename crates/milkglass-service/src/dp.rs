//! Differential privacy in the query service: the ledger around the guard's DP mode.
//!
//! For a query over a table whose policy has a `dp` block: a question answered before is
//! replayed from the ledger (no cost, the same noise); otherwise the budget is checked
//! from the plan alone, the query runs and is noised (`milkglass_guard::dp`), and the
//! charge, the stored answer and the audit entry commit in one transaction before the
//! answer leaves. `EXPLAIN PRIVACY <query>` says what a query would cost and how wrong
//! its numbers may be, and what is left, without running it or spending anything.

use crate::query::Answer;
use crate::{ErrorKind, ServiceError, ServiceResult, Services, access, on_store};
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use milkglass_core::{DpPer, DpPolicy};
use milkglass_guard::Prepared;
use milkglass_guard::dp::DpQuery;
use milkglass_store::{DpCharge, DpLimits, DpSpent, NewAuditEntry, Store, User};
use serde::Serialize;
use std::sync::Arc;

/// `EXPLAIN PRIVACY <query>`'s query, if `sql` is one.
pub(crate) fn explained(sql: &str) -> Option<&str> {
    let trimmed = sql.trim_start();
    let mut words = trimmed.splitn(3, char::is_whitespace);
    let (first, second) = (words.next()?, words.next()?);
    (first.eq_ignore_ascii_case("explain") && second.eq_ignore_ascii_case("privacy"))
        .then(|| words.next().unwrap_or(""))
}

/// Whose budget a query spends.
fn principal(store: &Store, user: &User, policy: &DpPolicy) -> ServiceResult<String> {
    Ok(match policy.per {
        DpPer::Analyst => format!("user:{}", user.id),
        DpPer::Group => store.coverage_pool(user)?,
    })
}

fn limits(policy: &DpPolicy) -> DpLimits {
    // A renewing budget counts what was spent within its period, up to now.
    let since = policy
        .renewal_days
        .map(|days| chrono::Utc::now() - chrono::Duration::milliseconds((days * 86_400_000.0) as i64));
    DpLimits { epsilon: policy.epsilon, delta: policy.delta, table_epsilon: policy.table_epsilon, since }
}

fn left_text(policy: &DpPolicy, spent: &DpSpent) -> String {
    format!(
        "{:.4} of epsilon {} and {:.3e} of delta {:.3e} are left",
        (policy.epsilon - spent.epsilon).max(0.0),
        policy.epsilon,
        (policy.delta - spent.delta).max(0.0),
        policy.delta
    )
}

fn to_ipc(batch: &RecordBatch) -> ServiceResult<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut writer =
        arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema()).map_err(ServiceError::internal)?;
    writer.write(batch).map_err(ServiceError::internal)?;
    writer.finish().map_err(ServiceError::internal)?;
    drop(writer);
    Ok(bytes)
}

fn from_ipc(bytes: &[u8]) -> ServiceResult<RecordBatch> {
    let reader = arrow::ipc::reader::StreamReader::try_new(bytes, None).map_err(ServiceError::internal)?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(ServiceError::internal)?;
    let schema = batches.first().map(|b| b.schema()).ok_or_else(|| ServiceError::internal("an empty stored answer"))?;
    arrow::compute::concat_batches(&schema, &batches).map_err(ServiceError::internal)
}

fn rows(query: &DpQuery, core: &RecordBatch, audit_id: i64, note: String) -> ServiceResult<Answer> {
    let batch = query.finish(core).map_err(ServiceError::from)?;
    let columns = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    Ok(Answer::Rows { batches: vec![batch], columns, flagged: None, masked: Vec::new(), audit_id, privacy: Some(note) })
}

/// The table's DP policy and uid, as the query found them.
pub(crate) struct DpTarget {
    pub policy: DpPolicy,
    pub uid: String,
}

/// Answers a DP query: replayed, or measured and charged, or refused for want of budget.
pub(crate) async fn answer(
    services: &Services,
    user: &User,
    prepared: &Arc<Prepared>,
    target: DpTarget,
    base: NewAuditEntry,
) -> ServiceResult<Answer> {
    let query = match prepared.dp.as_ref() {
        Some(Ok(query)) => query,
        _ => return Err(ServiceError::internal("not a DP query")),
    };
    let cost = (query.epsilon, query.delta);
    let (question, policy, uid) = (query.question.clone(), target.policy.clone(), target.uid.clone());
    let user_now = user.clone();
    let (who, stored, spent, table_spent) = on_store(services, move |store| {
        let who = principal(store, &user_now, &policy)?;
        let stored = store.dp_stored_answer(&uid, &who, &question)?;
        let spent = store.dp_spent(&uid, &who, &limits(&policy))?;
        Ok((who, stored, spent, store.dp_table_spent(&uid, &limits(&policy))?))
    })
    .await?;
    let policy = &target.policy;
    if let Some((bytes, earlier)) = stored {
        let core = from_ipc(&bytes)?;
        let note = format!("differential privacy: the answer released in audit entry {earlier}, replayed at no cost");
        let id = crate::query::audit(
            services,
            NewAuditEntry { decision: "answered".into(), reason: Some(note.clone()), ..base },
        )
        .await?;
        return rows(query, &core, id, note);
    }
    let exhausted = |spent: &DpSpent, table_spent: f64| {
        let over_table = policy.table_epsilon.is_some_and(|cap| table_spent + cost.0 > cap + 1e-9);
        let why = if over_table {
            "the table's total budget for all analysts is spent".to_string()
        } else {
            format!("this query costs epsilon {} and delta {:.3e}; {}", cost.0, cost.1, left_text(policy, spent))
        };
        format!("Refused: the privacy budget is exhausted: {why}")
    };
    let over = spent.epsilon + cost.0 > policy.epsilon + 1e-9
        || spent.delta + cost.1 > policy.delta + 1e-9
        || policy.table_epsilon.is_some_and(|cap| table_spent + cost.0 > cap + 1e-9);
    if over {
        let why = exhausted(&spent, table_spent);
        crate::query::audit(
            services,
            NewAuditEntry { decision: "refused".into(), reason: Some(why.clone()), rows_returned: Some(0), ..base },
        )
        .await?;
        return Err(ServiceError::new(ErrorKind::Refused, "budget_exhausted", why));
    }
    // Runs at the gate like any query.
    let permit = services.query_gate.admit(user)?;
    let running = prepared.clone();
    let measured = services
        .query_runtime
        .run(async move {
            let _permit = permit;
            let Some(Ok(query)) = running.dp.as_ref() else { unreachable!("checked above") };
            running.dp_measure(query).await
        })
        .await?;
    let core = match measured {
        Ok(core) => core,
        Err(e) => {
            // The detail may quote data: the audit log has it, the caller gets the generic text.
            let detail = match &e {
                milkglass_guard::GuardError::Execution(detail) => detail.clone(),
                other => other.to_string(),
            };
            crate::query::audit(services, NewAuditEntry { decision: "failed".into(), reason: Some(detail), ..base })
                .await?;
            return Err(ServiceError::from(e));
        }
    };
    let bytes = to_ipc(&core)?;
    let explanation = query.explain();
    let reason = format!(
        "differential privacy: {}; epsilon {} delta {:.3e} spent; {} groups released",
        explanation.mechanism,
        cost.0,
        cost.1,
        core.num_rows()
    );
    let entry = NewAuditEntry {
        decision: "answered".into(),
        reason: Some(reason),
        rows_returned: Some(core.num_rows() as i64),
        ..base.clone()
    };
    let (question, uid, dp_limits) = (query.question.clone(), target.uid.clone(), limits(policy));
    let charged =
        on_store(services, move |store| Ok(store.dp_charge(&uid, &who, &question, cost, dp_limits, &bytes, entry)?))
            .await?;
    match charged {
        DpCharge::Charged { audit, spent } => {
            let note = format!("differential privacy: spent epsilon {}; {}", cost.0, left_text(policy, &spent));
            rows(query, &core, audit.id, note)
        }
        // A concurrent run of the same question was charged first: its answer is the one.
        DpCharge::Replayed { answer, audit_id } => {
            rows(query, &from_ipc(&answer)?, audit_id, "differential privacy: replayed at no cost".into())
        }
        DpCharge::Exhausted { spent, table_epsilon_spent } => {
            let why = exhausted(&spent, table_epsilon_spent);
            crate::query::audit(
                services,
                NewAuditEntry { decision: "refused".into(), reason: Some(why.clone()), rows_returned: Some(0), ..base },
            )
            .await?;
            Err(ServiceError::new(ErrorKind::Refused, "budget_exhausted", why))
        }
    }
}

/// The columns `EXPLAIN PRIVACY` answers with.
pub(crate) fn explain_schema() -> arrow::datatypes::SchemaRef {
    let names = [
        ("table", DataType::Utf8, false),
        ("column", DataType::Utf8, false),
        ("ci95", DataType::Float64, true),
        ("epsilon", DataType::Float64, false),
        ("delta", DataType::Float64, false),
        ("mechanism", DataType::Utf8, false),
        ("suppressed_below_units", DataType::Float64, true),
        ("epsilon_left", DataType::Float64, false),
        ("delta_left", DataType::Float64, false),
    ];
    Arc::new(Schema::new(names.iter().map(|(n, t, null)| Field::new(*n, t.clone(), *null)).collect::<Vec<_>>()))
}

/// What `EXPLAIN PRIVACY` answers: one row per output column.
pub(crate) async fn explain(
    services: &Services,
    user: &User,
    query: &DpQuery,
    target: DpTarget,
    base: NewAuditEntry,
) -> ServiceResult<Answer> {
    let (policy, uid, user_now) = (target.policy.clone(), target.uid.clone(), user.clone());
    let (spent, stored) = {
        let question = query.question.clone();
        on_store(services, move |store| {
            let who = principal(store, &user_now, &policy)?;
            let spent = store.dp_spent(&uid, &who, &limits(&policy))?;
            Ok((spent, store.dp_stored_answer(&uid, &who, &question)?.is_some()))
        })
        .await?
    };
    let e = query.explain();
    let (cost_epsilon, cost_delta) = if stored { (0.0, 0.0) } else { (e.epsilon, e.delta) };
    let n = e.errors.len();
    let text = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
    let number = |v: f64| Arc::new(Float64Array::from(vec![v; n])) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        text(&e.table),
        Arc::new(StringArray::from(e.errors.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(e.errors.iter().map(|(_, v)| *v).collect::<Vec<_>>())),
        number(cost_epsilon),
        number(cost_delta),
        text(&e.mechanism),
        Arc::new(Float64Array::from(vec![e.selection_threshold; n])),
        number((target.policy.epsilon - spent.epsilon).max(0.0)),
        number((target.policy.delta - spent.delta).max(0.0)),
    ];
    let batch = RecordBatch::try_new(explain_schema(), columns).map_err(ServiceError::internal)?;
    let id = crate::query::audit(
        services,
        NewAuditEntry { decision: "explained".into(), rows_returned: Some(n as i64), ..base },
    )
    .await?;
    let columns = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
    Ok(Answer::Rows { batches: vec![batch], columns, flagged: None, masked: Vec::new(), audit_id: id, privacy: None })
}

/// One DP table's budget, as its analyst sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Budget {
    pub table: String,
    pub per: DpPer,
    pub epsilon: f64,
    pub delta: f64,
    pub query_epsilon: f64,
    pub epsilon_spent: f64,
    pub delta_spent: f64,
    pub queries: i64,
    pub epsilon_left: f64,
    pub delta_left: f64,
}

/// The caller's budget on every DP table they may read. Blocking.
pub fn budgets(store: &Store, user: &User) -> ServiceResult<Vec<Budget>> {
    let mut out = Vec::new();
    for table in access::readable_tables(store, user)? {
        let Some(policy) = &table.policy.dp else { continue };
        out.push(budget(store, user, table.name.clone(), &table.uid, policy)?);
    }
    // A published dataset under a DP policy: one budget for all its tables (they describe the
    // same people), kept under the dataset's uid and named as audit entries name it.
    for readable in crate::dataset_tables::readable_datasets(store, user)? {
        let Some(policy) = readable.policy.dp.as_ref().filter(|_| !readable.open) else { continue };
        let name = format!("{}/{}/*", readable.dataset.project, readable.dataset.name);
        out.push(budget(store, user, name, &readable.dataset.uid, policy)?);
    }
    Ok(out)
}

fn budget(store: &Store, user: &User, table: String, uid: &str, policy: &DpPolicy) -> ServiceResult<Budget> {
    let spent = store.dp_spent(uid, &principal(store, user, policy)?, &limits(policy))?;
    Ok(Budget {
        table,
        per: policy.per,
        epsilon: policy.epsilon,
        delta: policy.delta,
        query_epsilon: policy.per_query_epsilon(),
        epsilon_spent: spent.epsilon,
        delta_spent: spent.delta,
        queries: spent.queries,
        epsilon_left: (policy.epsilon - spent.epsilon).max(0.0),
        delta_left: (policy.delta - spent.delta).max(0.0),
    })
}
