//! The review queue and the audit log, as owners and scientists see them.

use crate::{ServiceError, ServiceResult, Services, access};
use milkglass_store::{AuditEntry, NewAuditEntry, ReviewRequest, User};

/// Requests the caller may decide on, plus their own; `state` filters by state. What an answer
/// would reveal is for its reviewers: the requester would read in it the row count and the
/// exact small group the guard held the query for.
pub fn list(services: &Services, user: &User, state: Option<&str>) -> ServiceResult<Vec<ReviewRequest>> {
    let mut visible = Vec::new();
    for mut request in services.store.review_requests(state)? {
        if access::may_review(&services.store, user, &request)? {
            visible.push(request);
        } else if request.user == user.name {
            request.reveals = None;
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
    if !access::may_review(&services.store, user, &request)? {
        // The requester knows what they asked; anyone else is told what a missing id is told.
        if request.user != user.name {
            return Err(ServiceError::not_found(format!("review request {id} not found")));
        }
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

/// What walking the audit log's hash chain found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuditVerification {
    /// Every entry's hash matches its content and the previous entry's hash.
    pub verified: bool,
    /// Entries verified; 0 when one does not match.
    pub entries: usize,
    /// The first entry that does not match, when one does not.
    pub first_mismatch: Option<i64>,
}

/// Walks the whole chain (owners and admins: a scientist has no tables whose log to check).
/// Only the verdict is answered, never an entry the caller may not read.
pub fn verify_audit(services: &Services, user: &User) -> ServiceResult<AuditVerification> {
    access::require_table_creator(user)
        .map_err(|_| ServiceError::forbidden("only owners and admins verify the audit log"))?;
    Ok(match services.store.verify_audit()? {
        Ok(entries) => AuditVerification { verified: true, entries, first_mismatch: None },
        Err(id) => AuditVerification { verified: false, entries: 0, first_mismatch: Some(id) },
    })
}

/// Audit entries the caller may read ([`access::may_read_audit`]); `table` narrows to the
/// entries that name it, `by` to those one user made (a scientist's history is `by` themselves).
pub fn audit_log(
    services: &Services,
    user: &User,
    table: Option<&str>,
    by: Option<&str>,
) -> ServiceResult<Vec<AuditEntry>> {
    let mut entries = services.store.audit_entries(table, by)?;
    entries.retain(|e| access::may_read_audit(user, e));
    for entry in entries.iter_mut().filter(|e| !access::reads_audit_in_full(user, e)) {
        as_answered(&mut entry.entry);
    }
    Ok(entries)
}

/// An entry as its author was answered: without what only the data's owner may know, the
/// exact smallest group behind a refusal or a hold, and a failure's detail (which may quote a
/// value). The entry's hash still covers the whole entry, which only owners and admins verify.
fn as_answered(entry: &mut milkglass_store::NewAuditEntry) {
    entry.smallest_group = None;
    if entry.decision == "failed" {
        entry.reason = Some(milkglass_guard::GuardError::Execution(String::new()).to_string());
    }
}
