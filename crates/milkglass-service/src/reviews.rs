//! The review queue and the audit log, as owners and scientists see them.

use crate::{ServiceError, ServiceResult, Services, access};
use milkglass_core::Role;
use milkglass_store::{AuditEntry, NewAuditEntry, ReviewRequest, User};

/// Requests the caller may decide on, plus their own; `state` filters by state.
pub fn list(services: &Services, user: &User, state: Option<&str>) -> ServiceResult<Vec<ReviewRequest>> {
    let mut visible = Vec::new();
    for request in services.store.review_requests(state)? {
        if request.user == user.name || access::may_review(&services.store, user, &request.tables)? {
            visible.push(request);
        }
    }
    Ok(visible)
}

/// Approves or rejects a held query; wakes the requester if they are waiting.
pub fn decide(
    services: &Services,
    user: &User,
    id: i64,
    approve: bool,
    reason: Option<&str>,
) -> ServiceResult<ReviewRequest> {
    let request = services.store.review_request(id)?;
    if !access::may_review(&services.store, user, &request.tables)? {
        return Err(ServiceError::forbidden(format!(
            "only the owner of {} can decide on request {id}",
            request.tables.join(", ")
        )));
    }
    let decided = services.store.decide_review(id, approve, user, reason)?;
    services.store.audit(NewAuditEntry {
        user: user.name.clone(),
        tables: decided.tables.clone(),
        query: decided.query.clone(),
        decision: if approve { "approved".into() } else { "rejected".into() },
        reason: decided.decision_reason.clone(),
        request_id: Some(id),
        ..Default::default()
    })?;
    services.reviews_decided.notify_waiters();
    Ok(decided)
}

/// Audit entries the caller may read: owners their tables' entries, everyone their
/// own, admins all; `table` narrows to one table.
pub fn audit_log(services: &Services, user: &User, table: Option<&str>) -> ServiceResult<Vec<AuditEntry>> {
    let store = &services.store;
    Ok(match table {
        Some(table) => {
            let managed = store.guarded_table(table).map(|t| t.managed_by(user)).unwrap_or(false);
            let own = if managed || user.role == Role::Admin { None } else { Some(user.name.as_str()) };
            store.audit_entries(Some(table), own)?
        }
        None if user.role == Role::Admin => store.audit_entries(None, None)?,
        None => {
            let managed: Vec<String> =
                store.guarded_tables()?.into_iter().filter(|t| t.managed_by(user)).map(|t| t.name).collect();
            let mut entries = store.audit_entries(None, None)?;
            entries.retain(|e| e.entry.user == user.name || e.entry.tables.iter().any(|t| managed.contains(t)));
            entries
        }
    })
}
