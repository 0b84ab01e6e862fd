use crate::{Store, StoreError, StoreResult, now, timestamp};
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
    /// When it stops working by itself (`None`: when revoked).
    pub expires_at: Option<String>,
    /// What its owner said it is for.
    pub label: Option<String>,
}

/// A token just issued: the only time its text is known.
#[derive(Debug, Clone, Serialize)]
pub struct IssuedToken {
    pub id: i64,
    pub token: String,
    pub created_at: String,
    pub expires_at: Option<String>,
}

/// What a new token is for and how long it works.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub valid_for: Option<chrono::Duration>,
    pub label: Option<String>,
}

const TOKEN_PREFIX: &str = "mg_";

/// Tokens are stored only as SHA-256 hashes: a copy of the data directory does not
/// leak usable credentials. The tokens carry 256 random bits, so an unsalted fast
/// hash is enough (there is nothing to brute-force).
fn hash_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Whether `token` has the form milkglass gives tokens; anything else is looked up nowhere.
fn could_be_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX) && token.len() <= 256
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
    pub fn new_token(&self, name: &str, spec: &TokenSpec) -> StoreResult<IssuedToken> {
        let token = new_token();
        let created_at = now();
        let expires_at = spec.valid_for.map(|d| timestamp(chrono::Utc::now() + d));
        let id = self.db().write(|tx| {
            let user_id = active_user_id(tx, name)?;
            tx.execute(
                "INSERT INTO tokens (user_id, token_hash, created_at, expires_at, label) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user_id, hash_token(&token), created_at, expires_at, spec.label],
            )?;
            Ok(tx.last_insert_rowid())
        })?;
        Ok(IssuedToken { id, token, created_at, expires_at })
    }

    /// A user's tokens, oldest first (revoked ones too).
    pub fn user_tokens(&self, name: &str) -> StoreResult<Vec<TokenInfo>> {
        self.db().read(|conn| {
            let user_id: i64 = conn
                .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::not_found(format!("user {name:?}")))?;
            let mut stmt = conn.prepare(
                "SELECT id, created_at, revoked_at, expires_at, label FROM tokens WHERE user_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([user_id], |r| {
                Ok(TokenInfo {
                    id: r.get(0)?,
                    created_at: r.get(1)?,
                    revoked_at: r.get(2)?,
                    expires_at: r.get(3)?,
                    label: r.get(4)?,
                })
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
                        (SELECT count(*) FROM tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL
                            AND (t.expires_at IS NULL OR t.expires_at > ?1))
                 FROM users u ORDER BY u.name",
            )?;
            let rows = stmt.query_map([now()], |r| {
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
        if !could_be_token(token) {
            return Ok(None);
        }
        let hash = hash_token(token);
        self.db().read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT u.id, u.name, u.role FROM tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1 AND t.revoked_at IS NULL AND u.revoked_at IS NULL
                       AND (t.expires_at IS NULL OR t.expires_at > ?2)",
                    params![hash, now()],
                    |r| Ok(User { id: r.get(0)?, name: r.get(1)?, role: parse_role(r.get::<_, String>(2)?) }),
                )
                .optional()?)
        })
    }

    /// Whose a token that no longer works was, and why it does not (`revoked token`, `expired
    /// token`): who tried a credential that once worked.
    pub fn failed_token_owner(&self, token: &str) -> StoreResult<Option<(String, &'static str)>> {
        if !could_be_token(token) {
            return Ok(None);
        }
        let hash = hash_token(token);
        let found: Option<(String, bool)> = self.db().read(|conn| {
            Ok(conn
                .query_row(
                    "SELECT u.name, t.revoked_at IS NOT NULL OR u.revoked_at IS NOT NULL
                     FROM tokens t JOIN users u ON u.id = t.user_id
                     WHERE t.token_hash = ?1 AND (t.revoked_at IS NOT NULL OR u.revoked_at IS NOT NULL
                        OR t.expires_at <= ?2)",
                    params![hash, now()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?)
        })?;
        Ok(found.map(|(name, revoked)| (name, if revoked { "revoked token" } else { "expired token" })))
    }

    /// Signs in the identity provider's user `subject` of `issuer`: their milkglass user, created on
    /// the first sign-in under a free name made from `name_hint`, takes `role` (the provider's claims
    /// decide it at every sign-in) and a session token per `session`. A user an admin revoked stays
    /// revoked. One transaction.
    pub fn sign_in_external(
        &self,
        issuer: &str,
        subject: &str,
        name_hint: &str,
        role: Role,
        session: &TokenSpec,
    ) -> StoreResult<(User, IssuedToken, bool)> {
        let token = new_token();
        let at = now();
        let expires_at = session.valid_for.map(|d| timestamp(chrono::Utc::now() + d));
        let (user, id, created) = self.db().write(|tx| {
            let known: Option<(i64, String, Option<String>)> = tx
                .query_row(
                    "SELECT u.id, u.name, u.revoked_at FROM external_identities e JOIN users u ON u.id = e.user_id
                     WHERE e.issuer = ?1 AND e.subject = ?2",
                    params![issuer, subject],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let (user_id, name, created) = match known {
                Some((_, name, Some(_))) => {
                    return Err(StoreError::Conflict(format!(
                        "user {name:?} was revoked by an admin; signing in again does not restore them"
                    )));
                }
                Some((id, name, None)) => {
                    tx.execute("UPDATE users SET role = ?1 WHERE id = ?2", params![role.as_str(), id])?;
                    tx.execute(
                        "UPDATE external_identities SET signed_in_at = ?1 WHERE issuer = ?2 AND subject = ?3",
                        params![at, issuer, subject],
                    )?;
                    (id, name, false)
                }
                None => {
                    let name = free_name(tx, name_hint)?;
                    tx.execute(
                        "INSERT INTO users (name, role, created_at) VALUES (?1, ?2, ?3)",
                        params![name, role.as_str(), at],
                    )?;
                    let id = tx.last_insert_rowid();
                    tx.execute(
                        "INSERT INTO external_identities (issuer, subject, user_id, created_at, signed_in_at)
                         VALUES (?1, ?2, ?3, ?4, ?4)",
                        params![issuer, subject, id, at],
                    )?;
                    (id, name, true)
                }
            };
            tx.execute(
                "INSERT INTO tokens (user_id, token_hash, created_at, expires_at, label) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user_id, hash_token(&token), at, expires_at, session.label],
            )?;
            Ok((User { id: user_id, name, role }, tx.last_insert_rowid(), created))
        })?;
        Ok((user, IssuedToken { id, token, created_at: at, expires_at }, created))
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

/// A user name made from what an identity provider calls the user (an email's local part, a
/// preferred user name): only the characters names allow, and a number after it when another user,
/// local or from any provider, has it already (names are never reused: they are not identities).
fn free_name(tx: &rusqlite::Transaction, hint: &str) -> StoreResult<String> {
    let local = hint.split('@').next().unwrap_or(hint);
    let mut base: String = local
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') { c } else { '-' })
        .take(100)
        .collect();
    base = base.trim_start_matches(['.', '-']).to_string();
    if base.is_empty() {
        base = "user".into();
    }
    let taken = |name: &str| -> StoreResult<bool> {
        Ok(tx.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(())).optional()?.is_some())
    };
    if !taken(&base)? {
        return Ok(base);
    }
    for n in 2.. {
        let candidate = format!("{base}-{n}");
        if !taken(&candidate)? {
            return Ok(candidate);
        }
    }
    unreachable!("some number is free")
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
        assert_eq!(store.failed_token_owner(&token).unwrap(), None, "a working token has not failed");
        store.revoke_user("alice").unwrap();
        assert!(store.authenticate(&token).unwrap().is_none());
        assert_eq!(store.failed_token_owner(&token).unwrap(), Some(("alice".into(), "revoked token")));
        assert_eq!(store.failed_token_owner("mg_nope").unwrap(), None);
    }

    #[test]
    fn one_token_is_revoked_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store.add_user("carol", Role::Scientist).unwrap();
        let second = store.new_token("carol", &TokenSpec::default()).unwrap();
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
    fn a_token_stops_working_when_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("erin", Role::Scientist).unwrap();
        let spec =
            |ms: i64| TokenSpec { valid_for: Some(chrono::Duration::milliseconds(ms)), label: Some("sdk".into()) };
        let lasting = store.new_token("erin", &spec(60_000)).unwrap();
        let brief = store.new_token("erin", &spec(1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(store.authenticate(&lasting.token).unwrap().is_some());
        assert!(store.authenticate(&brief.token).unwrap().is_none());
        assert_eq!(store.failed_token_owner(&brief.token).unwrap(), Some(("erin".into(), "expired token")));
        assert_eq!(store.list_users().unwrap()[0].active_tokens, 2, "the first token and the lasting one");
        let listed = store.user_tokens("erin").unwrap();
        assert_eq!(listed[1].label.as_deref(), Some("sdk"));
        assert_eq!(listed[1].expires_at, lasting.expires_at);
    }

    #[test]
    fn an_external_identity_is_one_user_found_by_subject_never_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_user("alice", Role::Admin).unwrap();
        let session = TokenSpec { valid_for: Some(chrono::Duration::hours(12)), label: Some("sign-in".into()) };
        let (first, token, created) =
            store.sign_in_external("https://idp", "sub-1", "alice@example.com", Role::Scientist, &session).unwrap();
        assert!(created);
        assert_eq!((first.name.as_str(), first.role), ("alice-2", Role::Scientist), "the local alice keeps her name");
        assert_eq!(store.authenticate(&token.token).unwrap().unwrap().name, "alice-2");
        // Again: the same user, with the role the claims give now.
        let (again, _, created) =
            store.sign_in_external("https://idp", "sub-1", "someone-else", Role::Owner, &session).unwrap();
        assert!(!created);
        assert_eq!((again.id, again.role), (first.id, Role::Owner));
        // Another provider's subject of the same value is another person.
        let (other, _, _) = store.sign_in_external("https://other", "sub-1", "alice", Role::Viewer, &session).unwrap();
        assert_eq!(other.name, "alice-3");
        // Revoked by an admin: signing in does not bring them back.
        store.revoke_user("alice-2").unwrap();
        let err = store.sign_in_external("https://idp", "sub-1", "alice", Role::Owner, &session).unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        let (odd, _, _) =
            store.sign_in_external("https://idp", "sub-2", "../ Bob Smith", Role::Viewer, &session).unwrap();
        assert_eq!(odd.name, "Bob-Smith");
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
