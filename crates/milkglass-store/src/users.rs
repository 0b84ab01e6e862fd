use crate::{Store, StoreError, StoreResult, now};
use milkglass_core::{Role, check_name};
use rand::RngCore;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// An authenticated user, as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
}

/// A user as listed by `milkglass user list`.
#[derive(Debug, Clone, Serialize)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub created_at: String,
    pub revoked: bool,
    pub active_tokens: i64,
}

const TOKEN_PREFIX: &str = "mg_";

/// Tokens are stored only as SHA-256 hashes: a copy of the data directory does not
/// leak usable credentials. The tokens carry 256 random bits, so an unsalted fast
/// hash is enough (there is nothing to brute-force).
fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

impl Store {
    /// Creates a user and returns its first token, which is shown only this once.
    pub fn add_user(&self, name: &str, role: Role) -> StoreResult<String> {
        check_name("name", name)?;
        let token = new_token();
        self.db().write(|tx| {
            let exists: Option<Option<String>> =
                tx.query_row("SELECT revoked_at FROM users WHERE name = ?1", [name], |r| r.get(0)).optional()?;
            if exists.is_some() {
                return Err(StoreError::Conflict(format!("user {name:?} already exists; pick another name")));
            }
            tx.execute(
                "INSERT INTO users (name, role, created_at) VALUES (?1, ?2, ?3)",
                params![name, role.as_str(), now()],
            )?;
            let user_id = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO tokens (user_id, token_hash, created_at) VALUES (?1, ?2, ?3)",
                params![user_id, hash_token(&token), now()],
            )?;
            Ok(())
        })?;
        Ok(token)
    }

    /// Issues another token for an existing, active user.
    pub fn new_token(&self, name: &str) -> StoreResult<String> {
        let token = new_token();
        self.db().write(|tx| {
            let user_id: i64 = tx
                .query_row("SELECT id FROM users WHERE name = ?1 AND revoked_at IS NULL", [name], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found(format!("active user {name:?}")))?;
            tx.execute(
                "INSERT INTO tokens (user_id, token_hash, created_at) VALUES (?1, ?2, ?3)",
                params![user_id, hash_token(&token), now()],
            )?;
            Ok(())
        })?;
        Ok(token)
    }

    /// Revokes a user and all of its tokens.
    pub fn revoke_user(&self, name: &str) -> StoreResult<()> {
        self.db().write(|tx| {
            let user_id: i64 = tx
                .query_row("SELECT id FROM users WHERE name = ?1 AND revoked_at IS NULL", [name], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found(format!("active user {name:?}")))?;
            let at = now();
            tx.execute("UPDATE users SET revoked_at = ?1 WHERE id = ?2", params![at, user_id])?;
            tx.execute(
                "UPDATE tokens SET revoked_at = ?1 WHERE user_id = ?2 AND revoked_at IS NULL",
                params![at, user_id],
            )?;
            Ok(())
        })
    }

    pub fn list_users(&self) -> StoreResult<Vec<UserInfo>> {
        self.db().read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT u.name, u.role, u.created_at, u.revoked_at IS NOT NULL,
                        (SELECT count(*) FROM tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL)
                 FROM users u ORDER BY u.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(UserInfo {
                    name: r.get(0)?,
                    role: parse_role(r.get::<_, String>(1)?),
                    created_at: r.get(2)?,
                    revoked: r.get(3)?,
                    active_tokens: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The user a bearer token belongs to, if the token is valid and not revoked.
    pub fn authenticate(&self, token: &str) -> StoreResult<Option<User>> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 256 {
            return Ok(None);
        }
        let hash = hash_token(token);
        self.db().read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT u.id, u.name, u.role FROM tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1 AND t.revoked_at IS NULL AND u.revoked_at IS NULL",
                    [hash],
                    |r| Ok(User { id: r.get(0)?, name: r.get(1)?, role: parse_role(r.get::<_, String>(2)?) }),
                )
                .optional()?)
        })
    }

    pub fn user_by_name(&self, name: &str) -> StoreResult<User> {
        self.db().read(|conn| {
            conn.query_row("SELECT id, name, role FROM users WHERE name = ?1 AND revoked_at IS NULL", [name], |r| {
                Ok(User { id: r.get(0)?, name: r.get(1)?, role: parse_role(r.get::<_, String>(2)?) })
            })
            .optional()?
            .ok_or_else(|| StoreError::not_found(format!("user {name:?}")))
        })
    }
}

/// Roles are written only by this module and constrained by a CHECK, so an unknown
/// value means a hand-edited database; reading it as the weakest role is the safe side.
fn parse_role(text: String) -> Role {
    text.parse().unwrap_or(Role::Viewer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_authenticate_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let token = store.add_user("alice", Role::Owner).unwrap();
        let user = store.authenticate(&token).unwrap().unwrap();
        assert_eq!((user.name.as_str(), user.role), ("alice", Role::Owner));
        assert!(store.authenticate("mg_nope").unwrap().is_none());
        assert!(matches!(store.add_user("alice", Role::Viewer), Err(StoreError::Conflict(_))));
        store.revoke_user("alice").unwrap();
        assert!(store.authenticate(&token).unwrap().is_none());
    }

    #[test]
    fn tokens_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let token = store.add_user("bob", Role::Admin).unwrap();
        let needle = token.as_bytes();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                let raw = std::fs::read(&path).unwrap();
                assert!(!raw.windows(needle.len()).any(|w| w == needle), "token in {path:?}");
            }
        }
    }
}
