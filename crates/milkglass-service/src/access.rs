//! Who may do what: every access check of every front end, in one place.
//!
//! Things a caller may not see read exactly like things that do not exist, so that
//! names do not leak.

use crate::{ServiceError, ServiceResult};
use milkglass_core::{ProjectRole, Role};
use milkglass_store::{AuditEntry, DatasetInfo, GuardedTableInfo, ProjectInfo, ReviewRequest, Store, StoreError, User};

/// A project the caller may use with at least `needed` rights.
pub fn project(store: &Store, user: &User, name: &str, needed: ProjectRole) -> ServiceResult<ProjectInfo> {
    // Outside admins, a missing project and a forbidden one look the same.
    let project = match store.project(name) {
        Err(StoreError::NotFound { .. }) if user.role != Role::Admin => return Err(no_project_access(name)),
        other => other?,
    };
    match store.project_role(user, &project)? {
        Some(role) if role >= needed => Ok(project),
        Some(_) => Err(ServiceError::forbidden(format!("you can read project {name:?} but not change it"))),
        None => Err(no_project_access(name)),
    }
}

/// A dataset, once the caller has `needed` rights on its project.
pub fn dataset(
    store: &Store,
    user: &User,
    project: &str,
    dataset: &str,
    needed: ProjectRole,
) -> ServiceResult<(ProjectInfo, DatasetInfo)> {
    let project = self::project(store, user, project, needed)?;
    let dataset = store.dataset(&project.name, dataset)?;
    Ok((project, dataset))
}

/// The one refusal for a project the caller may not see, whether or not it exists.
pub fn no_project_access(project: &str) -> ServiceError {
    ServiceError::forbidden(format!("you have no access to a project {project:?}; ask its owner to add you"))
}

/// Creating projects is for admins and owners.
pub fn require_project_creator(user: &User) -> ServiceResult<()> {
    match user.role {
        Role::Admin | Role::Owner => Ok(()),
        role => {
            Err(ServiceError::forbidden(format!("a {role} cannot create projects; ask an admin for the owner role")))
        }
    }
}

/// Publishing tables is for admins and owners.
pub fn require_table_creator(user: &User) -> ServiceResult<()> {
    match user.role {
        Role::Admin | Role::Owner => Ok(()),
        role => Err(ServiceError::forbidden(format!("a {role} cannot publish tables; only owners and admins can"))),
    }
}

/// Managing users and tokens is for admins.
pub fn require_admin(user: &User) -> ServiceResult<()> {
    match user.role {
        Role::Admin => Ok(()),
        role => Err(ServiceError::forbidden(format!("a {role} cannot manage users and tokens; only admins can"))),
    }
}

/// A table the caller may read, or the same "not found" as a missing one.
pub fn readable_table(store: &Store, user: &User, name: &str) -> ServiceResult<GuardedTableInfo> {
    match store.guarded_table(name) {
        Ok(t) if t.readable_by(user) => Ok(t),
        Ok(_) | Err(StoreError::NotFound { .. }) => Err(ServiceError::not_found(format!("table {name:?} not found"))),
        Err(e) => Err(e.into()),
    }
}

/// A table the caller may replace, re-police or drop.
pub fn managed_table(store: &Store, user: &User, name: &str) -> ServiceResult<GuardedTableInfo> {
    let table = readable_table(store, user, name)?;
    if !table.managed_by(user) {
        return Err(ServiceError::forbidden(format!("only the owner of table {name:?} can change it")));
    }
    Ok(table)
}

/// Tables the caller may query.
pub fn readable_tables(store: &Store, user: &User) -> ServiceResult<Vec<GuardedTableInfo>> {
    Ok(store.guarded_tables()?.into_iter().filter(|t| t.readable_by(user)).collect())
}

/// Whether `user` may decide on a request: admins, and the owner of every table it reads,
/// those very tables (by uid), not later tables that took their names. A request older than
/// uids, or one whose table was dropped, is for admins only.
pub fn may_review(store: &Store, user: &User, request: &ReviewRequest) -> ServiceResult<bool> {
    if user.role == Role::Admin {
        return Ok(true);
    }
    if request.tables.is_empty() || request.table_uids.len() != request.tables.len() {
        return Ok(false);
    }
    for (table, uid) in request.tables.iter().zip(&request.table_uids) {
        match store.guarded_table(table) {
            Ok(t) if t.uid == *uid && t.managed_by(user) => {}
            Ok(_) => return Ok(false),
            // A dataset's table: its project's owners (and its publisher) decide.
            Err(StoreError::NotFound { .. }) => match store.table_identity(table)? {
                Some((now, owners)) if now == *uid && owners.contains(&user.name) => {}
                _ => return Ok(false),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Whether `user` may read an audit entry: admins all, everyone their own, owners those
/// about tables they owned when the entry was written (never a later owner of the name).
pub fn may_read_audit(user: &User, entry: &AuditEntry) -> bool {
    user.role == Role::Admin || entry.entry.user == user.name || reads_audit_in_full(user, entry)
}

/// Whether `user` reads an audit entry in full, as one who may know what the data behind it
/// holds (admins, and the owners of its tables when it was written), rather than only as its
/// author, who reads it as they were answered.
pub fn reads_audit_in_full(user: &User, entry: &AuditEntry) -> bool {
    user.role == Role::Admin || entry.table_owners.contains(&user.name)
}
