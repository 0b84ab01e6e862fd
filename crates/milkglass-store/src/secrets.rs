//! Secrets at rest: the fetch settings' header values and S3 credentials are sealed (AES-256-GCM)
//! before they reach `catalog.db`, under a key in `DATA_DIR/catalog-secrets.key` (mode 0600, beside
//! `asset-signing.key`). A copy of the catalog alone holds no usable credential.
//!
//! Each sealed value names the key that sealed it, so a key can be rotated while a server runs:
//! [`Store::rotate_secrets_key`] seals every value again under a new key kept as
//! `catalog-secrets.key.next`, makes the old key `catalog-secrets.key.previous` and the new one
//! current, then seals again what a server wrote under the old key meanwhile. At every step each
//! sealed value's key is in one of the three files, so a crash anywhere loses nothing; a server that
//! meets a key it does not know reads the files again.
//!
//! Values are bound to their row and column (the associated data), so a sealed value copied into
//! another project's row does not open there.

use crate::key_file;
use crate::{Store, StoreError, StoreResult};
use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rusqlite::{Transaction, params};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

pub const KEY_FILE: &str = "catalog-secrets.key";
const PREVIOUS_FILE: &str = "catalog-secrets.key.previous";
const NEXT_FILE: &str = "catalog-secrets.key.next";
/// What a sealed value starts with; anything else is a value written before sealing existed.
const SEALED: &str = "mgsealed1:";

/// The columns that hold secrets, all of `project_fetch_settings` (keyed by `project_id`).
const SECRET_COLUMNS: [&str; 2] = ["headers", "s3"];

struct SealKey {
    /// The first 16 hex digits of the key's SHA-256: names the key without revealing it.
    id: String,
    key: LessSafeKey,
}

impl SealKey {
    fn new(bytes: &[u8]) -> StoreResult<SealKey> {
        let unbound = UnboundKey::new(&AES_256_GCM, &bytes[..key_file::KEY_LEN])
            .map_err(|_| StoreError::Corrupt("the secrets key is not an AES-256 key".into()))?;
        Ok(SealKey { id: hex::encode(&Sha256::digest(bytes)[..8]), key: LessSafeKey::new(unbound) })
    }
}

/// The keys a store knows: the current one seals, all of them open.
struct Keyring {
    current: SealKey,
    others: Vec<SealKey>,
}

pub(crate) struct Secrets {
    dir: PathBuf,
    keys: RwLock<Keyring>,
}

fn key_io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::io(path, e)
}

impl Secrets {
    /// Loads the keys, making the current one on a new data directory.
    pub(crate) fn open(dir: &Path) -> StoreResult<Secrets> {
        let path = dir.join(KEY_FILE);
        key_file::load_or_create(&path).map_err(|e| key_io(&path, e))?;
        Ok(Secrets { dir: dir.to_path_buf(), keys: RwLock::new(read_keyring(dir)?) })
    }

    /// Reads the key files again (another process may have rotated the key).
    fn reload(&self) -> StoreResult<()> {
        let keyring = read_keyring(&self.dir)?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keyring;
        Ok(())
    }

    /// Seals `plain` for `column` of `row` under the current key. Called inside the write
    /// transaction, after reading the key files again: a rotation holds the write lock while it
    /// changes them, so what is sealed here is under the key that is current when it commits.
    pub(crate) fn seal(&self, column: &str, row: i64, plain: &str) -> StoreResult<String> {
        self.reload()?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        Ok(seal_with(&keys.current, column, row, plain))
    }

    /// Opens a value of `column` of `row`: a sealed one with whichever known key sealed it, a value
    /// from before sealing as it is.
    pub(crate) fn open_value(&self, column: &str, row: i64, stored: &str) -> StoreResult<String> {
        let Some(sealed) = stored.strip_prefix(SEALED) else { return Ok(stored.to_string()) };
        let (id, _) = sealed.split_once(':').ok_or_else(|| corrupt(column, row, "no key id"))?;
        let known = |keys: &Keyring| keys.current.id == id || keys.others.iter().any(|k| k.id == id);
        if !known(&self.keys.read().unwrap_or_else(|e| e.into_inner())) {
            self.reload()?;
        }
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        open_with(&keys, column, row, sealed)
    }
}

fn corrupt(column: &str, row: i64, what: &str) -> StoreError {
    StoreError::Corrupt(format!("the sealed {column} of project {row} cannot be opened: {what}"))
}

fn read_keyring(dir: &Path) -> StoreResult<Keyring> {
    let read = |name: &str| {
        let path = dir.join(name);
        key_file::load(&path).map_err(|e| key_io(&path, e))
    };
    let current = read(KEY_FILE)?.ok_or_else(|| {
        StoreError::Corrupt(format!(
            "{} is missing: the catalog's secrets cannot be opened without it; restore it from a backup",
            dir.join(KEY_FILE).display()
        ))
    })?;
    let mut others = Vec::new();
    for name in [PREVIOUS_FILE, NEXT_FILE] {
        if let Some(bytes) = read(name)? {
            others.push(SealKey::new(&bytes)?);
        }
    }
    Ok(Keyring { current: SealKey::new(&current)?, others })
}

fn aad(column: &str, row: i64) -> String {
    format!("project_fetch_settings.{column}.{row}")
}

fn seal_with(key: &SealKey, column: &str, row: i64, plain: &str) -> String {
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let mut bytes = plain.as_bytes().to_vec();
    key.key
        .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(aad(column, row)), &mut bytes)
        .expect("AES-GCM seals any value shorter than 64 GiB");
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&bytes);
    format!("{SEALED}{}:{}", key.id, base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out))
}

fn open_with(keys: &Keyring, column: &str, row: i64, sealed: &str) -> StoreResult<String> {
    let (id, body) = sealed.split_once(':').ok_or_else(|| corrupt(column, row, "no key id"))?;
    let key = std::iter::once(&keys.current)
        .chain(&keys.others)
        .find(|k| k.id == id)
        .ok_or_else(|| corrupt(column, row, &format!("key {id} is not in the data directory")))?;
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| corrupt(column, row, "not base64"))?;
    if bytes.len() < NONCE_LEN {
        return Err(corrupt(column, row, "too short"));
    }
    let mut sealed_part = bytes.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| corrupt(column, row, "bad nonce"))?;
    let plain = key
        .key
        .open_in_place(nonce, Aad::from(aad(column, row)), &mut sealed_part)
        .map_err(|_| corrupt(column, row, "it was altered, or belongs to another row"))?;
    String::from_utf8(plain.to_vec()).map_err(|_| corrupt(column, row, "not text"))
}

/// What a rotation did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rotation {
    /// The id of the key that is current now.
    pub key_id: String,
    /// Values sealed again.
    pub values: usize,
}

impl Store {
    /// Seals, under the current key, every secret value not sealed under it (values from before
    /// sealing, and values under older keys). Returns how many it sealed. Runs in one transaction.
    pub fn seal_secrets(&self) -> StoreResult<usize> {
        let secrets = self.secrets();
        self.db().write(|tx| {
            secrets.reload()?;
            let keys = secrets.keys.read().unwrap_or_else(|e| e.into_inner());
            reseal_all(tx, &keys, &keys.current)
        })
    }

    /// At open: seals what was written before sealing existed (catalogs of older versions), then
    /// rewrites the database file so that the old pages holding those values in clear are gone.
    pub(crate) fn seal_secrets_written_in_clear(&self) -> StoreResult<()> {
        let in_clear: i64 = self.db().read(|conn| {
            Ok(conn.query_row(
                &format!(
                    "SELECT count(*) FROM project_fetch_settings
                     WHERE headers NOT LIKE '{SEALED}%' OR (s3 IS NOT NULL AND s3 NOT LIKE '{SEALED}%')"
                ),
                [],
                |r| r.get(0),
            )?)
        })?;
        if in_clear > 0 {
            self.seal_secrets()?;
            self.db().vacuum()?;
            tracing::info!("sealed the secrets of {in_clear} projects written before sealing existed");
        }
        Ok(())
    }

    /// Makes a new key current and seals every secret under it; the old key stays as
    /// `catalog-secrets.key.previous` until the next rotation. Safe while a server runs on the
    /// directory (see the module's comment).
    pub fn rotate_secrets_key(&self) -> StoreResult<Rotation> {
        let next_path = self.dir().join(NEXT_FILE);
        // A rotation that stopped after sealing under `.next` is finished first: values may be
        // sealed under that key alone.
        let mut values = 0;
        if key_file::load(&next_path).map_err(|e| key_io(&next_path, e))?.is_some() {
            values += self.make_next_current()?;
        }
        // 1. Every value under a new key, which is only `.next` so far (current stays current).
        let new: [u8; key_file::KEY_LEN] = rand::random();
        let new_key = SealKey::new(&new)?;
        let secrets = self.secrets();
        values += self.db().write(|tx| {
            key_file::write_new(&next_path, &new).map_err(|e| key_io(&next_path, e))?;
            secrets.reload()?;
            let keys = secrets.keys.read().unwrap_or_else(|e| e.into_inner());
            reseal_all(tx, &keys, &new_key)
        })?;
        values += self.make_next_current()?;
        Ok(Rotation { key_id: new_key.id, values })
    }

    /// Steps 2 and 3 of a rotation: the current key becomes `.previous` (copied first, so that a key
    /// file exists at every moment), `.next` becomes current, and what a server sealed under the
    /// old key meanwhile is sealed again.
    fn make_next_current(&self) -> StoreResult<usize> {
        let dir = self.dir();
        let (next_path, key_path, previous_path) = (dir.join(NEXT_FILE), dir.join(KEY_FILE), dir.join(PREVIOUS_FILE));
        let old = key_file::load(&key_path)
            .map_err(|e| key_io(&key_path, e))?
            .ok_or_else(|| StoreError::Corrupt(format!("{} is missing", key_path.display())))?;
        let previous_tmp = dir.join(format!("{PREVIOUS_FILE}.tmp"));
        let _ = std::fs::remove_file(&previous_tmp);
        key_file::write_new(&previous_tmp, &old).map_err(|e| key_io(&previous_tmp, e))?;
        std::fs::rename(&previous_tmp, &previous_path).map_err(|e| key_io(&previous_path, e))?;
        std::fs::rename(&next_path, &key_path).map_err(|e| key_io(&key_path, e))?;
        self.seal_secrets()
    }
}

/// Seals under `to` every secret value of the table that is not already sealed under it, opening
/// each with `keys`.
fn reseal_all(tx: &Transaction, keys: &Keyring, to: &SealKey) -> StoreResult<usize> {
    let mut resealed = 0;
    for column in SECRET_COLUMNS {
        let rows: Vec<(i64, String)> = {
            let mut stmt = tx.prepare(&format!(
                "SELECT project_id, {column} FROM project_fetch_settings WHERE {column} IS NOT NULL"
            ))?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<Result<_, _>>()?
        };
        let mut update =
            tx.prepare(&format!("UPDATE project_fetch_settings SET {column} = ?1 WHERE project_id = ?2"))?;
        for (row, stored) in rows {
            if stored.strip_prefix(SEALED).is_some_and(|s| s.starts_with(&format!("{}:", to.id))) {
                continue;
            }
            let plain = match stored.strip_prefix(SEALED) {
                Some(sealed) => open_with(keys, column, row, sealed)?,
                None => stored,
            };
            update.execute(params![seal_with(to, column, row, &plain), row])?;
            resealed += 1;
        }
    }
    Ok(resealed)
}
