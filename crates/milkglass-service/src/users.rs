//! Users, their global roles and their tokens: the admin's side of the server, where every
//! operation is for admins only (checked here, whatever the front end shows), and each user's own
//! personal tokens, which always expire.

use crate::{ServiceError, ServiceResult, Services, access};
use milkglass_core::Role;
use milkglass_store::{IssuedToken, TokenInfo, TokenSpec, User, UserInfo};

/// How long a personal token lasts when its owner does not say, and at most.
pub const PERSONAL_TOKEN_DAYS: i64 = 90;
pub const PERSONAL_TOKEN_MAX_DAYS: i64 = 365;

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
    Ok(services.store.new_token(name, &TokenSpec::default())?)
}

/// Revokes one token of a user's. Blocking.
pub fn revoke_token(services: &Services, admin: &User, name: &str, id: i64) -> ServiceResult<()> {
    access::require_admin(admin)?;
    Ok(services.store.revoke_token(name, id)?)
}

/// The caller's own tokens. Blocking.
pub fn own_tokens(services: &Services, user: &User) -> ServiceResult<Vec<TokenInfo>> {
    Ok(services.store.user_tokens(&user.name)?)
}

/// A personal token for the caller (for the SDK, a notebook): it carries the caller's own rights
/// and expires after `days` (default [`PERSONAL_TOKEN_DAYS`], at most [`PERSONAL_TOKEN_MAX_DAYS`]).
/// Its text is answered this once. Blocking.
pub fn mint_own_token(
    services: &Services,
    user: &User,
    days: Option<i64>,
    label: Option<String>,
) -> ServiceResult<IssuedToken> {
    let days = days.unwrap_or(PERSONAL_TOKEN_DAYS);
    if !(1..=PERSONAL_TOKEN_MAX_DAYS).contains(&days) {
        return Err(ServiceError::invalid(
            "expires_in_days",
            format!("must be between 1 and {PERSONAL_TOKEN_MAX_DAYS} (personal tokens always expire)"),
        ));
    }
    let label = label.map(|l| l.trim().to_string()).filter(|l| !l.is_empty());
    if let Some(label) = &label
        && (label.chars().count() > 100 || label.chars().any(char::is_control))
    {
        return Err(ServiceError::invalid("label", "must be at most 100 characters, without control characters"));
    }
    let spec = TokenSpec { valid_for: Some(chrono::Duration::days(days)), label };
    Ok(services.store.new_token(&user.name, &spec)?)
}

/// Revokes one of the caller's own tokens (the one in use too: that is signing out). Blocking.
pub fn revoke_own_token(services: &Services, user: &User, id: i64) -> ServiceResult<()> {
    Ok(services.store.revoke_token(&user.name, id)?)
}

fn info(services: &Services, name: &str) -> ServiceResult<UserInfo> {
    services
        .store
        .list_users()?
        .into_iter()
        .find(|u| u.name == name)
        .ok_or_else(|| ServiceError::not_found(format!("user {name:?} not found")))
}
