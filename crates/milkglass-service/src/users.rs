//! Users, their global roles and their tokens: the admin's side of the server. Every
//! operation is for admins only, checked here, whatever the front end shows.

use crate::{ServiceError, ServiceResult, Services, access};
use milkglass_core::Role;
use milkglass_store::{IssuedToken, TokenInfo, User, UserInfo};

/// Every user, revoked ones too. Blocking.
pub fn list(services: &Services, admin: &User) -> ServiceResult<Vec<UserInfo>> {
    access::require_admin(admin)?;
    Ok(services.store.list_users()?)
}

/// Creates a user with its first token, whose text is answered this once. Blocking.
pub fn create(services: &Services, admin: &User, name: &str, role: Role) -> ServiceResult<(UserInfo, String)> {
    access::require_admin(admin)?;
    let token = services.store.add_user(name, role)?;
    Ok((info(services, name)?, token))
}

/// Changes a user's global role. An admin cannot change their own: the server would lose
/// the admin who is changing things. Blocking.
pub fn set_role(services: &Services, admin: &User, name: &str, role: Role) -> ServiceResult<UserInfo> {
    access::require_admin(admin)?;
    if name == admin.name && role != Role::Admin {
        return Err(ServiceError::invalid("role", "you cannot take the admin role from yourself; ask another admin"));
    }
    services.store.set_user_role(name, role)?;
    info(services, name)
}

/// Revokes a user and every token of theirs; not oneself. Blocking.
pub fn revoke(services: &Services, admin: &User, name: &str) -> ServiceResult<()> {
    access::require_admin(admin)?;
    if name == admin.name {
        return Err(ServiceError::invalid("user", "you cannot revoke yourself; ask another admin"));
    }
    Ok(services.store.revoke_user(name)?)
}

/// A user's tokens (ids and dates, never the tokens). Blocking.
pub fn tokens(services: &Services, admin: &User, name: &str) -> ServiceResult<Vec<TokenInfo>> {
    access::require_admin(admin)?;
    Ok(services.store.user_tokens(name)?)
}

/// Issues another token for an active user; its text is answered this once. Blocking.
pub fn issue_token(services: &Services, admin: &User, name: &str) -> ServiceResult<IssuedToken> {
    access::require_admin(admin)?;
    Ok(services.store.new_token(name)?)
}

/// Revokes one token of a user's. Blocking.
pub fn revoke_token(services: &Services, admin: &User, name: &str, id: i64) -> ServiceResult<()> {
    access::require_admin(admin)?;
    Ok(services.store.revoke_token(name, id)?)
}

fn info(services: &Services, name: &str) -> ServiceResult<UserInfo> {
    services
        .store
        .list_users()?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ServiceError::not_found(format!("user {name:?} not found")))
}
