//! The query service: every guarded query goes through here, whatever its front end
//! (HTTP, Flight SQL, the web app). Plan, run, decide, audit; nothing leaves before
//! the decision.

use crate::{ErrorKind, ServiceError, ServiceResult, Services, access, on_store};
use arrow::array::RecordBatch;
use milkglass_core::{Policy, UnsafeHandling};
use milkglass_guard::{Coverage, Decision, GuardError, Outcome, Prepared, ProtectedTable, prepare_within};
use milkglass_store::{CoverageOf, GuardedTableInfo, NewAuditEntry, Reveals, User};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The longest a caller may ask a held query to wait for the owner's decision.
pub const MAX_REVIEW_WAIT: Duration = Duration::from_secs(600);

/// What a query gives its caller.
pub enum Answer {
    Rows {
        batches: Vec<RecordBatch>,
        columns: Vec<String>,
        flagged: Option<String>,
        masked: Vec<String>,
        audit_id: i64,
        /// Under differential privacy: what was spent and what is left (each number's 95%
        /// error bound is in its field's metadata, `milkglass.dp.ci95`).
        privacy: Option<String>,
    },
    Held {
        request_id: i64,
        reason: String,
    },
}

/// Tables the user may read, as the guard needs them, with their policies and ids: every
/// guarded table they may read, and the dataset tables `sql` names.
async fn readable(services: &Services, user: &User, sql: &str) -> ServiceResult<(Vec<ProtectedTable>, Policies)> {
    let datasets = crate::dataset_tables::referenced(services, user, sql).await?;
    let user = user.clone();
    on_store(services, move |store| readable_now(store, &user, datasets)).await
}

fn readable_now(
    store: &milkglass_store::Store,
    user: &User,
    datasets: Vec<crate::dataset_tables::DatasetTable>,
) -> ServiceResult<(Vec<ProtectedTable>, Policies)> {
    let tables = access::readable_tables(store, user)?;
    let mut protected = Vec::with_capacity(tables.len() + datasets.len());
    let mut policies = Policies::default();
    for table in tables {
        let (visible, internal) = table.providers()?;
        policies.by_name.insert(table.name.clone(), table.policy.clone());
        policies.memory.insert(table.name.clone(), Some(CoverageOf::Table(table.id)));
        policies.uids.insert(table.name.clone(), table.uid.clone());
        let rows = u64::try_from(table.rows).unwrap_or(0);
        let reference = milkglass_guard::TableReference::bare(table.name.as_str());
        protected.push(ProtectedTable {
            name: table.name,
            reference,
            policy: table.policy,
            visible,
            internal,
            rows,
            shared_ids: false,
        });
    }
    for table in datasets {
        let name = table.protected.name.clone();
        policies.by_name.insert(name.clone(), table.protected.policy.clone());
        policies.memory.insert(name.clone(), table.memory);
        policies.uids.insert(name, table.uid);
        protected.push(table.protected);
    }
    Ok((protected, policies))
}

/// The policies of the tables a query may read, by name, and the tables' identities.
#[derive(Default)]
struct Policies {
    by_name: HashMap<String, Policy>,
    /// Where each table's memory of released answers lives; `None`: nothing to remember
    /// (members' open reads of their own datasets).
    memory: HashMap<String, Option<CoverageOf>>,
    /// Each table's identity, for what is bound to the table itself (approvals).
    uids: HashMap<String, String>,
}

/// What earlier released answers of the caller's pool covered, for the tables one
/// answer covers. The guard refuses an answer whose rows differ from an earlier one's by
/// fewer than the table's minimum; a released answer is remembered.
struct Earlier {
    pool: String,
    /// By table name: where the table's memory lives and the earlier sets.
    sets: HashMap<String, (Option<CoverageOf>, Vec<Coverage>)>,
}

impl Earlier {
    /// Loads the pool's memory for the tables `outcome` covered and compares them.
    async fn compare(
        services: &Services,
        user: &User,
        policies: &Policies,
        outcome: &mut Outcome,
    ) -> ServiceResult<Earlier> {
        let mut memories = Vec::new();
        for table in outcome.coverage.keys() {
            // A table the caller may not read is not in the query; fail closed all the same.
            let memory = policies
                .memory
                .get(table)
                .cloned()
                .ok_or_else(|| ServiceError::internal(format!("no id for table {table}")))?;
            memories.push((table.clone(), memory));
        }
        let user = user.clone();
        let earlier = on_store(services, move |store| {
            let pool = store.coverage_pool(&user)?;
            let mut sets = HashMap::new();
            for (table, memory) in memories {
                let answered = match &memory {
                    Some(of) => store.answered_coverage(&pool, of)?,
                    None => Vec::new(),
                };
                let earlier = answered
                    .iter()
                    .map(|answer| Coverage::from_bytes(&answer.coverage))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ServiceError::internal)?;
                sets.insert(table, (memory, earlier));
            }
            Ok(Earlier { pool, sets })
        })
        .await?;
        for (table, (_, sets)) in &earlier.sets {
            outcome.compare_with_earlier(table, sets);
        }
        Ok(earlier)
    }

    /// Remembers what a released answer covered, unless the same set already is.
    async fn remember(&self, services: &Services, outcome: &Outcome, audit_id: i64) -> ServiceResult<()> {
        let mut new = Vec::new();
        for (table, coverage) in &outcome.coverage {
            let Some((Some(memory), earlier)) = self.sets.get(table) else { continue };
            if earlier.iter().any(|e| e.differs_by(coverage) == 0) {
                continue;
            }
            new.push((memory.clone(), i64::try_from(coverage.len()).unwrap_or(i64::MAX), coverage.to_bytes()));
        }
        let pool = self.pool.clone();
        on_store(services, move |store| {
            for (memory, rows, bytes) in new {
                store.remember_coverage(&pool, &memory, audit_id, rows, &bytes)?;
            }
            Ok(())
        })
        .await
    }
}

pub(crate) async fn audit(services: &Services, entry: NewAuditEntry) -> ServiceResult<i64> {
    on_store(services, move |store| Ok(store.audit(entry)?.id)).await
}

/// Admission for guarded queries: at most `per_user` running for one user and `total`
/// for all, so that one scientist's heavy queries cannot starve the others. A query
/// over the caps is refused at once (HTTP 429), never queued without bound.
pub struct QueryGate {
    limits: milkglass_guard::Limits,
    per_user: usize,
    total: Arc<Semaphore>,
    users: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// A running query's place; dropping it frees the place.
pub struct QueryPermit {
    _total: OwnedSemaphorePermit,
    _user: OwnedSemaphorePermit,
}

impl QueryGate {
    pub fn new(limits: &crate::QueryLimits) -> Self {
        QueryGate {
            limits: limits.each.clone(),
            per_user: limits.per_user.max(1),
            total: Arc::new(Semaphore::new(limits.total.max(1))),
            users: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn admit(&self, user: &User) -> ServiceResult<QueryPermit> {
        let user_gate = {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users.entry(user.name.clone()).or_insert_with(|| Arc::new(Semaphore::new(self.per_user))).clone()
        };
        let busy = |what: String| ServiceError::new(ErrorKind::Busy, "too_many_queries", what);
        let user_permit = user_gate
            .try_acquire_owned()
            .map_err(|_| busy(format!("you already have {} queries running; wait for one to finish", self.per_user)))?;
        let total_permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy("the server is running as many queries as it allows; try again shortly".into()))?;
        Ok(QueryPermit { _total: total_permit, _user: user_permit })
    }
}

/// Plans `sql` for `user` under the server's per-query limits.
async fn prepare_for(services: &Services, sql: &str, tables: Vec<ProtectedTable>) -> Result<Arc<Prepared>, GuardError> {
    prepare_within(sql, tables, services.query_gate.limits.clone()).await.map(Arc::new)
}

/// [`prepare_for`], auditing a statement refused before or during planning as `invalid`,
/// with the tables it names among those the caller may read: their owners read the attempt
/// in their audit log, not only admins. (Names the caller may not read stay out of the
/// entry, which its author reads too.)
async fn prepare_audited(
    services: &Services,
    sql: &str,
    tables: Vec<ProtectedTable>,
    base: &NewAuditEntry,
) -> ServiceResult<Arc<Prepared>> {
    let references: Vec<_> = tables.iter().map(|t| (t.name.clone(), t.reference.clone())).collect();
    match prepare_for(services, sql, tables).await {
        Ok(prepared) => Ok(prepared),
        Err(e) => {
            let entry = NewAuditEntry {
                tables: milkglass_guard::tables_named(sql, &references),
                decision: "invalid".into(),
                reason: Some(e.to_string()),
                ..base.clone()
            };
            audit(services, entry).await?;
            Err(ServiceError::from(e))
        }
    }
}

/// Runs a prepared query, holding a place at the gate while it runs; failures are
/// audited with their detail (which may quote data) and answered without it.
async fn execute(
    services: &Services,
    user: &User,
    prepared: &Arc<Prepared>,
    base: &NewAuditEntry,
) -> ServiceResult<Outcome> {
    // Fail closed: a query over a DP table is never answered without its noise.
    if prepared.dp.is_some() {
        return Err(ServiceError::internal("a query over a differentially private table ran outside the DP mode"));
    }
    let permit = services.query_gate.admit(user)?;
    let running = prepared.clone();
    // The place at the gate goes with the query, even if the caller stops waiting.
    let result = services
        .query_runtime
        .run(async move {
            let _permit = permit;
            running.execute().await
        })
        .await?;
    let e = match result {
        Ok(outcome) => return Ok(outcome),
        Err(e) => e,
    };
    let (decision, detail) = match &e {
        GuardError::Execution(detail) => ("failed", detail.clone()),
        GuardError::Stopped(message) => ("stopped", message.clone()),
        other => ("failed", other.to_string()),
    };
    audit(services, NewAuditEntry { decision: decision.into(), reason: Some(detail), ..base.clone() }).await?;
    Err(ServiceError::from(e))
}

/// Runs `sql` for `user` under the policies of the tables it reads. A held query waits
/// up to `wait` for the owner's decision.
pub async fn run(services: &Services, user: &User, sql: &str, wait: Duration) -> ServiceResult<Answer> {
    if let Some(inner) = crate::dp::explained(sql) {
        return explain_privacy(services, user, sql, inner).await;
    }
    let (tables, policies) = readable(services, user, sql).await?;
    let base = NewAuditEntry { user: user.name.clone(), query: sql.to_string(), ..Default::default() };
    let prepared = prepare_audited(services, sql, tables, &base).await?;
    let base = NewAuditEntry { tables: prepared.tables.clone(), columns: prepared.columns.clone(), ..base };
    // A table with a DP policy decides the whole query: noised and charged, or refused.
    if let Some(dp) = &prepared.dp {
        return match dp {
            Ok(query) => crate::dp::answer(services, user, &prepared, dp_target(&policies, query)?, base).await,
            Err(why) => Err(refuse_dp(services, why, base).await?),
        };
    }
    // A query the plan alone makes unsafe does not run unless its result is released
    // anyway (log handling): its errors and timing then cannot depend on the data.
    let before = prepared.decide_before_running(&policies.by_name, &user.name);
    let runs_now = !matches!(&before, Some(Decision::Unsafe { handling, .. }) if *handling != UnsafeHandling::Log);
    let mut outcome = if runs_now { Some(execute(services, user, &prepared, &base).await?) } else { None };
    let earlier = match &mut outcome {
        Some(outcome) => Some(Earlier::compare(services, user, &policies, outcome).await?),
        None => None,
    };
    let decision = match (&outcome, before) {
        (Some(outcome), _) => prepared.decide(Some(outcome), &policies.by_name, &user.name),
        (None, Some(decision)) => decision,
        (None, None) => unreachable!("a query that is not unsafe before running runs"),
    };
    let base = NewAuditEntry {
        rows_returned: outcome.as_ref().map(|o| o.rows as i64),
        smallest_group: outcome.as_ref().and_then(|o| o.smallest()).map(|n| n as i64),
        ..base
    };
    let rows = |outcome: &Outcome, flagged: Option<String>, audit_id: i64| Answer::Rows {
        batches: outcome.batches.clone(),
        columns: prepared.columns.clone(),
        flagged,
        masked: prepared.masked_columns(),
        audit_id,
        privacy: None,
    };
    match decision {
        Decision::Safe => {
            let (Some(outcome), Some(earlier)) = (&outcome, &earlier) else { unreachable!("a safe query ran") };
            let id = audit(services, NewAuditEntry { decision: "answered".into(), ..base }).await?;
            earlier.remember(services, outcome, id).await?;
            Ok(rows(outcome, None, id))
        }
        Decision::Unsafe { handling, .. } => {
            let explanation = decision.explanation();
            match handling {
                UnsafeHandling::Log => {
                    let (Some(outcome), Some(earlier)) = (&outcome, &earlier) else {
                        unreachable!("a logged query ran")
                    };
                    let id = audit(
                        services,
                        NewAuditEntry { decision: "flagged".into(), reason: Some(explanation.clone()), ..base },
                    )
                    .await?;
                    earlier.remember(services, outcome, id).await?;
                    Ok(rows(outcome, Some(explanation), id))
                }
                UnsafeHandling::Reject => {
                    audit(
                        services,
                        NewAuditEntry {
                            decision: "refused".into(),
                            reason: Some(explanation.clone()),
                            rows_returned: Some(0),
                            ..base
                        },
                    )
                    .await?;
                    Err(ServiceError::new(ErrorKind::Refused, "refused", explanation))
                }
                UnsafeHandling::Review => {
                    let explanation = explanation.trim_start_matches("Refused: ").trim_end_matches('.').to_string();
                    let request = {
                        let (user, sql, tables, why) =
                            (user.clone(), sql.to_string(), prepared.tables.clone(), explanation.clone());
                        // What the owner needs to judge the answer: what the guard already knows.
                        let reveals = Reveals {
                            columns: prepared.columns.clone(),
                            rows: base.rows_returned,
                            smallest_group: base.smallest_group,
                        };
                        on_store(
                            services,
                            move |store| Ok(store.hold_for_review(&user, &sql, &tables, &why, &reveals)?),
                        )
                        .await?
                    };
                    audit(
                        services,
                        NewAuditEntry {
                            decision: "held".into(),
                            reason: Some(explanation.clone()),
                            rows_returned: Some(0),
                            request_id: Some(request.id),
                            ..base.clone()
                        },
                    )
                    .await?;
                    let deadline = Instant::now() + wait;
                    loop {
                        // Listening before reading the state: a decision in between still wakes us.
                        let decided = services.reviews_decided.notified();
                        tokio::pin!(decided);
                        decided.as_mut().enable();
                        let current = review_request(services, request.id).await?;
                        match current.state.as_str() {
                            "approved" => {
                                let (outcome, earlier) = match (outcome, earlier) {
                                    (Some(outcome), Some(earlier)) => (outcome, earlier),
                                    // Approved before it ever ran: run it now.
                                    _ => {
                                        let mut outcome = execute(services, user, &prepared, &base).await?;
                                        let earlier = Earlier::compare(services, user, &policies, &mut outcome).await?;
                                        (outcome, earlier)
                                    }
                                };
                                if !deliver_review(services, request.id).await? {
                                    return Err(already_delivered(request.id));
                                }
                                let id = audit(
                                    services,
                                    NewAuditEntry {
                                        decision: "released".into(),
                                        request_id: Some(request.id),
                                        rows_returned: Some(outcome.rows as i64),
                                        smallest_group: outcome.smallest().map(|n| n as i64),
                                        ..base
                                    },
                                )
                                .await?;
                                earlier.remember(services, &outcome, id).await?;
                                return Ok(rows(
                                    &outcome,
                                    Some(format!("approved by {}", current.decided_by.unwrap_or_default())),
                                    id,
                                ));
                            }
                            "rejected" => return Err(rejected(&current)),
                            _ => {}
                        }
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Ok(Answer::Held { request_id: request.id, reason: explanation });
                        }
                        let _ = tokio::time::timeout(left, decided).await;
                    }
                }
            }
        }
    }
}

/// The DP policy and identity of the table a DP query reads.
fn dp_target(policies: &Policies, query: &milkglass_guard::dp::DpQuery) -> ServiceResult<crate::dp::DpTarget> {
    let policy = policies.by_name.get(&query.table).and_then(|p| p.dp.clone());
    let uid = policies.uids.get(&query.table).cloned();
    match (policy, uid) {
        (Some(policy), Some(uid)) => Ok(crate::dp::DpTarget { policy, uid }),
        _ => Err(ServiceError::internal(format!("no DP policy for table {}", query.table))),
    }
}

/// Audits a DP refusal and returns the error to answer with.
async fn refuse_dp(services: &Services, why: &str, base: NewAuditEntry) -> ServiceResult<ServiceError> {
    let entry =
        NewAuditEntry { decision: "refused".into(), reason: Some(why.to_string()), rows_returned: Some(0), ..base };
    audit(services, entry).await?;
    Ok(ServiceError::new(ErrorKind::Refused, "refused", why.to_string()))
}

/// `EXPLAIN PRIVACY <query>`: what the query would cost under differential privacy, how
/// wrong its numbers may be, and what is left, without running it.
async fn explain_privacy(services: &Services, user: &User, sql: &str, inner: &str) -> ServiceResult<Answer> {
    let (tables, policies) = readable(services, user, inner).await?;
    let base = NewAuditEntry { user: user.name.clone(), query: sql.to_string(), ..Default::default() };
    let prepared = prepare_audited(services, inner, tables, &base).await?;
    let base = NewAuditEntry { tables: prepared.tables.clone(), columns: prepared.columns.clone(), ..base };
    match &prepared.dp {
        None => Err(ServiceError::invalid(
            "sql",
            "no table this query reads has a differential-privacy policy; its policy's thresholds decide it",
        )),
        Some(Err(why)) => Err(refuse_dp(services, why, base).await?),
        Some(Ok(query)) => crate::dp::explain(services, user, query, dp_target(&policies, query)?, base).await,
    }
}

async fn review_request(services: &Services, id: i64) -> ServiceResult<milkglass_store::ReviewRequest> {
    on_store(services, move |store| Ok(store.review_request(id)?)).await
}

/// Marks an approved request delivered; false when it already was (a result leaves once).
async fn deliver_review(services: &Services, id: i64) -> ServiceResult<bool> {
    on_store(services, move |store| Ok(store.deliver_review(id)?)).await
}

fn already_delivered(id: i64) -> ServiceError {
    ServiceError::new(ErrorKind::Gone, "delivered", format!("the result of request {id} was already delivered"))
}

/// Plans `sql` for `user` without running it: checks it and returns its result's schema
/// (for prepared statements). Invalid SQL is audited like any query.
pub async fn plan_schema(services: &Services, user: &User, sql: &str) -> ServiceResult<arrow::datatypes::SchemaRef> {
    if crate::dp::explained(sql).is_some() {
        return Ok(crate::dp::explain_schema());
    }
    let (tables, _) = readable(services, user, sql).await?;
    let base = NewAuditEntry { user: user.name.clone(), query: sql.to_string(), ..Default::default() };
    Ok(prepare_audited(services, sql, tables, &base).await?.output_schema())
}

/// Hands over an approved request's result once, to its requester.
pub async fn collect_request(services: &Services, user: &User, id: i64) -> ServiceResult<Answer> {
    let request = review_request(services, id).await?;
    if request.user != user.name {
        return Err(ServiceError::not_found(format!("review request {id} not found")));
    }
    match request.state.as_str() {
        "pending" => Ok(Answer::Held { request_id: id, reason: request.reason }),
        "rejected" => Err(rejected(&request)),
        "delivered" => Err(already_delivered(id)),
        _ => {
            let (tables, policies) = readable(services, user, &request.query).await?;
            // The approval was for those very tables: a table dropped and published again
            // under the name since then is another table, with another owner.
            let now: Vec<&str> =
                request.tables.iter().filter_map(|name| policies.uids.get(name).map(String::as_str)).collect();
            if now.len() != request.table_uids.len() || now.iter().zip(&request.table_uids).any(|(a, b)| a != b) {
                return Err(ServiceError::new(
                    ErrorKind::Gone,
                    "tables_changed",
                    format!("a table of request {id} was dropped since it was approved; ask again"),
                ));
            }
            let prepared = prepare_for(services, &request.query, tables).await.map_err(ServiceError::from)?;
            let base = NewAuditEntry {
                user: user.name.clone(),
                tables: prepared.tables.clone(),
                query: request.query.clone(),
                columns: prepared.columns.clone(),
                request_id: Some(id),
                ..Default::default()
            };
            let mut outcome = execute(services, user, &prepared, &base).await?;
            let earlier = Earlier::compare(services, user, &policies, &mut outcome).await?;
            if !deliver_review(services, id).await? {
                return Err(already_delivered(id));
            }
            let audit_id = audit(
                services,
                NewAuditEntry {
                    decision: "released".into(),
                    rows_returned: Some(outcome.rows as i64),
                    smallest_group: outcome.smallest().map(|n| n as i64),
                    ..base
                },
            )
            .await?;
            earlier.remember(services, &outcome, audit_id).await?;
            Ok(Answer::Rows {
                batches: outcome.batches,
                columns: prepared.columns.clone(),
                flagged: Some(format!("approved by {}", request.decided_by.unwrap_or_default())),
                masked: prepared.masked_columns(),
                audit_id,
                privacy: None,
            })
        }
    }
}

fn rejected(request: &milkglass_store::ReviewRequest) -> ServiceError {
    let reason = request.decision_reason.clone().unwrap_or_else(|| "no reason given".into());
    let by = request.decided_by.clone().unwrap_or_default();
    // Closed by milkglass itself: its table was dropped while the request waited.
    let message = if by == "milkglass" {
        format!("this query was closed without an answer: {reason}")
    } else {
        format!("the owner ({by}) rejected this query: {reason}")
    };
    ServiceError::new(ErrorKind::Rejected, "rejected", message)
        .with_details(serde_json::json!({ "request_id": request.id }))
}

/// Saves a query's result as a new guarded table, when every table it reads is
/// `savable` and the result is within every safe zone. The new table inherits the
/// sources' policies (all their safe zones must hold, the strictest handling), belongs
/// to the sources' owner, and only the requester may read it.
pub async fn save_result(services: &Services, user: &User, sql: &str, name: &str) -> ServiceResult<GuardedTableInfo> {
    milkglass_core::check_name("save_as", name)?;
    let taken = name.to_string();
    if on_store(services, move |store| Ok(store.guarded_table(&taken).is_ok())).await? {
        return Err(ServiceError::conflict(format!("a table named {name:?} already exists")));
    }
    let (tables, policies) = readable(services, user, sql).await?;
    let base = NewAuditEntry { user: user.name.clone(), query: sql.to_string(), ..Default::default() };
    let prepared = prepare_for(services, sql, tables).await.map_err(ServiceError::from)?;
    let base = NewAuditEntry { tables: prepared.tables.clone(), columns: prepared.columns.clone(), ..base };
    let refuse = async |reason: String| -> ServiceResult<GuardedTableInfo> {
        let entry = NewAuditEntry {
            decision: "refused".into(),
            reason: Some(reason.clone()),
            rows_returned: Some(0),
            ..base.clone()
        };
        audit(services, entry).await?;
        Err(ServiceError::new(ErrorKind::Forbidden, "not_savable", reason))
    };
    if prepared.tables.is_empty() {
        return refuse("only results derived from guarded tables are saved as tables".into()).await;
    }
    if let Some(table) = prepared.tables.iter().find(|t| policies.by_name.get(*t).is_some_and(|p| p.dp.is_some())) {
        let reason = format!(
            "Refused: table \"{table}\" is differentially private; its answers are noisy releases, never saved tables"
        );
        audit(services, NewAuditEntry { decision: "refused".into(), reason: Some(reason.clone()), ..base }).await?;
        return Err(ServiceError::new(ErrorKind::Forbidden, "not_savable", reason));
    }
    if let Some(table) = prepared.tables.iter().find(|t| policies.by_name.get(*t).is_some_and(|p| !p.savable)) {
        return refuse(format!(
            "Refused: table \"{table}\" does not allow saving results derived from it (savable: false)"
        ))
        .await;
    }
    if let Some(decision) = prepared.decide_before_running(&policies.by_name, &user.name) {
        let explanation = decision.explanation();
        return refuse(format!(
            "{}; only results within every table's safe zone can be saved.",
            explanation.trim_end_matches('.')
        ))
        .await;
    }
    let mut outcome = execute(services, user, &prepared, &base).await?;
    let earlier = Earlier::compare(services, user, &policies, &mut outcome).await?;
    let decision = prepared.decide(Some(&outcome), &policies.by_name, &user.name);
    if decision != Decision::Safe {
        let explanation = decision.explanation();
        return refuse(format!(
            "{}; only results within every table's safe zone can be saved.",
            explanation.trim_end_matches('.')
        ))
        .await;
    }
    if outcome.batches.iter().all(|b| b.num_rows() == 0) {
        return Err(ServiceError::invalid("sql", "the result has no rows; there is nothing to save"));
    }
    let sources: Vec<Policy> = prepared.tables.iter().filter_map(|t| policies.by_name.get(t).cloned()).collect();
    let policy = inherited_policy(&sources, &prepared.masked_columns());
    let imported = services.store.import_table_batches(name, outcome.batches.clone()).await?;
    let (source, reader, saved_name) = (prepared.tables[0].clone(), user.name.clone(), name.to_string());
    let table = on_store(services, move |store| {
        // The derived table belongs to the source table's owner, and only its maker may read it.
        let owner = store.user_by_name(&store.guarded_table(&source)?.owner)?;
        Ok(store.publish_table(&owner, &saved_name, &policy, Some(std::slice::from_ref(&reader)), &imported)?)
    })
    .await?;
    let audit_id = audit(
        services,
        NewAuditEntry {
            decision: "saved".into(),
            reason: Some(format!("saved as table {name:?}")),
            rows_returned: Some(outcome.rows as i64),
            smallest_group: outcome.smallest().map(|n| n as i64),
            ..base
        },
    )
    .await?;
    earlier.remember(services, &outcome, audit_id).await?;
    Ok(table)
}

/// The policy a derived table carries: every source's safe zone must hold, the
/// strictest handling applies, outputs of sanitized columns stay sanitized.
fn inherited_policy(sources: &[Policy], masked: &[String]) -> Policy {
    use milkglass_core::{AtLeast, Rule};
    let safe_zone = match sources {
        [one] => one.safe_zone.clone(),
        many => Rule::AtLeast {
            at_least: AtLeast { n: many.len(), of: many.iter().map(|p| p.safe_zone.clone()).collect() },
        },
    };
    let unsafe_handling = sources.iter().map(|p| p.unsafe_handling).max().unwrap_or_default();
    Policy {
        safe_zone,
        unsafe_handling,
        sanitized_columns: masked.to_vec(),
        savable: sources.iter().all(|p| p.savable),
        allow_extremes: sources.iter().all(|p| p.allow_extremes),
        // Results of a differentially private table are never saved (see `save`).
        dp: None,
    }
}
