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

/// One of a user's tokens, as an admin lists them: never the token itself, which only its
/// hash records.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A token just issued: the only time its text is known.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    pub id: i64,
    pub token: String,
    pub created_at: String,
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
    pub fn new_token(&self, name: &str) -> StoreResult<IssuedToken> {
        let token = new_token();
        let created_at = now();
        let id = self.db().write(|tx| {
            let user_id = active_user_id(tx, name)?;
            tx.execute(
                "INSERT INTO tokens (user_id, token_hash, created_at) VALUES (?1, ?2, ?3)",
                params![user_id, hash_token(&token), created_at],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        Ok(IssuedToken { id, token, created_at })
    }

    /// A user's tokens, oldest first (revoked ones too).
    pub fn user_tokens(&self, name: &str) -> StoreResult<Vec<TokenInfo>> {
        self.db().read(|conn| {
            let user_id: i64 = conn
                .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found(format!("user {name:?}")))?;
            let mut stmt =
                conn.prepare("SELECT id, created_at, revoked_at FROM tokens WHERE user_id = ?1 ORDER BY id")?;
            let rows = stmt.query_map([user_id], |r| {
                Ok(TokenInfo { id: r.get(0)?, created_at: r.get(1)?, revoked_at: r.get(2)? })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Revokes one of a user's tokens; its other tokens keep working.
    pub fn revoke_token(&self, name: &str, id: i64) -> StoreResult<()> {
        self.db().write(|tx| {
            let n = tx.execute(
                "UPDATE tokens SET revoked_at = ?1
                 WHERE id = ?2 AND revoked_at IS NULL AND user_id = (SELECT id FROM users WHERE name = ?3)",
                params![now(), id, name],
            )?;
            if n == 0 {
                return Err(StoreError::not_found(format!("active token {id} of user {name:?}")));
            }
            Ok(())
        })
    }

    /// Changes an active user's global role.
    pub fn set_user_role(&self, name: &str, role: Role) -> StoreResult<()> {
        self.db().write(|tx| {
            let user_id = active_user_id(tx, name)?;
            tx.execute("UPDATE users SET role = ?1 WHERE id = ?2", params![role.as_str(), user_id])?;
            Ok(())
        })
    }

    /// Revokes a user and all of its tokens.
    pub fn revoke_user(&self, name: &str) -> StoreResult<()> {
        self.db().write(|tx| {
            let user_id = active_user_id(tx, name)?;
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

fn active_user_id(tx: &rusqlite::Transaction, name: &str) -> StoreResult<i64> {
    tx.query_row("SELECT id FROM users WHERE name = ?1 AND revoked_at IS NULL", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::not_found(format!("active user {name:?}")))
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
    fn one_token_is_revoked_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.add_user("carol", Role::Scientist).unwrap();
        let second = store.new_token("carol").unwrap();
        store.revoke_token("carol", second.id).unwrap();
        assert!(store.authenticate(&second.token).unwrap().is_none());
        assert!(store.authenticate(&first).unwrap().is_some());
        let tokens = store.user_tokens("carol").unwrap();
        assert_eq!(tokens.iter().map(|t| t.revoked_at.is_some()).collect::<Vec<_>>(), [false, true]);
        // Another user's token id is not this user's to revoke.
        store.add_user("dan", Role::Scientist).unwrap();
        assert!(matches!(store.revoke_token("dan", tokens[0].id), Err(StoreError::NotFound { .. })));
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
