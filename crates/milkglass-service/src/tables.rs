//! Publishing guarded tables: the owner's side of the table face.

use crate::{ServiceError, ServiceResult, Services, access, on_store};
use milkglass_core::Policy;
use milkglass_store::{GuardedTableInfo, TableFormat, User};
use std::path::Path;

/// Tables the caller may query. Blocking.
pub fn list(services: &Services, user: &User) -> ServiceResult<Vec<GuardedTableInfo>> {
    access::readable_tables(&services.store, user)
}

/// A table the caller may query, or "not found" (the same for one they may not see). Blocking.
pub fn get(services: &Services, user: &User, name: &str) -> ServiceResult<GuardedTableInfo> {
    access::readable_table(&services.store, user, name)
}

/// A fresh file in the data directory for an owner's upload to land in before it is
/// published; the caller removes it.
pub fn staging_file(services: &Services) -> ServiceResult<std::path::PathBuf> {
    Ok(services.store.staging_file()?)
}

/// What an owner sends to publish a table; the data is already in a file.
pub struct Publication<'a> {
    pub name: &'a str,
    pub policy: Policy,
    /// Scientists who may query it; `None`: every scientist.
    pub readers: Option<Vec<String>>,
    pub file: &'a Path,
    pub format: TableFormat,
}

/// Publishes (or, for its owner, replaces) a table. Nothing is in the catalog until the
/// data is completely written and the policy fits its columns.
pub async fn publish(services: &Services, user: &User, table: Publication<'_>) -> ServiceResult<GuardedTableInfo> {
    access::require_table_creator(user)?;
    milkglass_core::check_name("name", table.name)?;
    if table.policy.sanitized_columns.iter().any(String::is_empty) {
        return Err(ServiceError::invalid("policy.sanitized_columns", "column names must not be empty"));
    }
    let store = &services.store;
    let name = table.name.to_string();
    if let Some(existing) = on_store(services, move |store| Ok(store.guarded_table(&name).ok())).await?
        && !existing.managed_by(user)
    {
        return Err(ServiceError::conflict(format!(
            "table {:?} belongs to someone else; choose another name",
            table.name
        )));
    }
    let unit = table.policy.dp.as_ref().and_then(|dp| dp.privacy_unit.as_deref());
    let imported = store.import_table_file(table.name, table.file, table.format, unit).await?;
    if imported.rows == 0 {
        let _ = std::fs::remove_file(&imported.file);
        return Err(ServiceError::invalid("file", "the table has no rows; publish a file with at least one row"));
    }
    if let Some(missing) = table.policy.sanitized_columns.iter().find(|c| !imported.columns.contains(c)) {
        let _ = std::fs::remove_file(&imported.file);
        return Err(ServiceError::invalid("policy.sanitized_columns", format!("the table has no column {missing:?}")));
    }
    let (store, owner, name) = (store.clone(), user.clone(), table.name.to_string());
    let (policy, readers) = (table.policy, table.readers);
    tokio::task::spawn_blocking(move || store.publish_table(&owner, &name, &policy, readers.as_deref(), &imported))
        .await
        .map_err(ServiceError::internal)?
        .map_err(ServiceError::from)
}

/// Replaces a table's policy (as the owner wrote it: checked only once the caller may
/// change the table), and its readers when `readers` is given (`Some(None)`: every
/// scientist).
pub fn set_policy(
    services: &Services,
    user: &User,
    name: &str,
    policy: serde_json::Value,
    readers: Option<Option<&[String]>>,
) -> ServiceResult<GuardedTableInfo> {
    let table = access::managed_table(&services.store, user, name)?;
    let policy = Policy::from_value(policy)?;
    if let Some(missing) = policy.sanitized_columns.iter().find(|c| !table.columns.contains(c)) {
        return Err(ServiceError::invalid("policy.sanitized_columns", format!("the table has no column {missing:?}")));
    }
    Ok(services.store.set_table_policy(name, &policy, readers)?)
}

/// Drops a table the caller manages.
/// Drops a table. Its pending review requests are closed (the requester learns the table is
/// gone), and its audit entries stay readable by admins and by the owner who had it.
pub fn drop(services: &Services, user: &User, name: &str) -> ServiceResult<()> {
    access::managed_table(&services.store, user, name)?;
    services.store.drop_table(name)?;
    services.reviews_decided.notify_waiters();
    Ok(())
}
