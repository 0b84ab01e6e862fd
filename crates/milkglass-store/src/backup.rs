//! Online backups of a data directory, and their restore.
//!
//! A backup is consistent while uploads and queries run. The catalog is copied first, with
//! SQLite's backup API in one step (a read transaction: writers go on, and the copy is the catalog
//! as it was at one commit). Everything the copy can refer to was on disk before that commit and
//! is never rewritten: embedding files only grow (a batch syncs its vectors before the commit
//! that refers to them, so the files copied afterwards are at least as long as the copy needs),
//! table files, snapshots and hosted assets are written once under fresh names. Files are copied
//! after the catalog, then checked against it: a table file the copy names that was dropped
//! meanwhile fails the backup, which is run again.
//!
//! Search indexes (`indexes/`) are left out: they are rebuilt from the rows on first use. Files
//! and directories whose names start with '.' are staging and are left out too.
//!
//! The backup holds the keys (`asset-signing.key`, `catalog-secrets.key`): whoever holds the
//! backup can open the sealed secrets, so it is kept like the data directory itself.

use crate::{Store, StoreError, StoreResult, now};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest's name in a backup directory.
pub const MANIFEST: &str = "milkglass-backup.json";
const CATALOG: &str = "catalog.db";
/// Derived from the rows and rebuilt on first use.
const LEFT_OUT: [&str; 1] = ["indexes"];

/// What a backup holds, written last: a directory without it is not a finished backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub created_at: String,
    pub milkglass_version: String,
    /// Rows per catalog table at the backup's commit.
    pub counts: BTreeMap<String, i64>,
    /// The audit log's last hash at the backup's commit (the chain's head).
    pub audit_head: Option<String>,
    /// Every file, relative to the backup directory, with its size and SHA-256.
    pub files: Vec<BackedUpFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackedUpFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// The catalog tables a manifest counts, so that a restore can check it has them all.
const COUNTED: [&str; 9] =
    ["users", "tokens", "projects", "datasets", "frames", "labels", "guarded_tables", "audit_log", "review_requests"];

/// Progress of a backup or restore, for a progress bar: bytes done of bytes in all.
pub trait Progress {
    fn files(&self, total_bytes: u64);
    fn advance(&self, bytes: u64);
}

impl Progress for () {
    fn files(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

impl Store {
    /// Backs the data directory up into `dest`, which must not exist or be empty.
    pub fn backup_to(&self, dest: &Path, progress: &dyn Progress) -> StoreResult<Manifest> {
        prepare_empty(dest)?;
        // 1. The catalog, as of one commit.
        let catalog = dest.join(CATALOG);
        self.db().read(|conn| {
            let mut copy = Connection::open(&catalog)?;
            rusqlite::backup::Backup::new(conn, &mut copy)?.step(-1)?;
            Ok(())
        })?;
        let copy = Connection::open(&catalog)?;
        copy.pragma_update(None, "journal_mode", "DELETE")?;
        let (counts, audit_head) = catalog_facts(&copy)?;
        // 2. The files, which the catalog copy may refer to.
        let sources = data_files(self.dir())?;
        progress.files(sources.iter().map(|(_, bytes)| bytes).sum());
        let mut files = vec![hash_file(dest, CATALOG)?];
        for (relative, _) in &sources {
            let (from, to) = (self.dir().join(relative), dest.join(relative));
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            }
            match std::fs::copy(&from, &to) {
                Ok(bytes) => progress.advance(bytes),
                // Removed since it was listed (a dropped table's old file, a replaced snapshot):
                // whether the catalog copy needed it is checked below.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(&from, e)),
            }
            files.push(hash_file(dest, relative)?);
        }
        // 3. Every table file the catalog copy names is in the backup.
        for file in table_files(&copy)? {
            if !dest.join(&file).is_file() {
                return Err(StoreError::Conflict(format!(
                    "table file {file} was removed while the backup ran (a table was replaced or dropped); \
                     run the backup again"
                )));
            }
        }
        drop(copy);
        let manifest = Manifest {
            format: 1,
            created_at: now(),
            milkglass_version: env!("CARGO_PKG_VERSION").to_string(),
            counts,
            audit_head,
            files,
        };
        write_manifest(dest, &manifest)?;
        Ok(manifest)
    }
}

/// Restores the backup in `backup` into `data_dir`, which must not exist or be empty. Every file
/// is checked against the manifest, and the restored store against its counts, its integrity and
/// its audit chain, before the directory takes its name: a failed restore leaves nothing behind.
pub fn restore(backup: &Path, data_dir: &Path, progress: &dyn Progress) -> StoreResult<Manifest> {
    let manifest_path = backup.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        StoreError::Corrupt(format!(
            "{} is not a finished milkglass backup: cannot read its {MANIFEST} ({e})",
            backup.display()
        ))
    })?;
    let manifest: Manifest = serde_json::from_str(&text)?;
    if manifest.format != 1 {
        return Err(StoreError::Corrupt(format!("backup format {} is not one this milkglass reads", manifest.format)));
    }
    prepare_empty(data_dir)?;
    let parent = data_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let staging = parent.join(format!(
        ".{}.restoring-{:08x}",
        data_dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        rand::random::<u32>()
    ));
    let result = restore_into(backup, &staging, &manifest, progress);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
        return result.map(|_| manifest);
    }
    let _ = std::fs::remove_dir(data_dir);
    std::fs::rename(&staging, data_dir).map_err(|e| StoreError::io(data_dir, e))?;
    Ok(manifest)
}

fn restore_into(backup: &Path, staging: &Path, manifest: &Manifest, progress: &dyn Progress) -> StoreResult<()> {
    progress.files(manifest.files.iter().map(|f| f.bytes).sum());
    for file in &manifest.files {
        let relative = safe_relative(&file.path)?;
        let (from, to) = (backup.join(&relative), staging.join(&relative));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        }
        std::fs::copy(&from, &to).map_err(|e| StoreError::io(&from, e))?;
        let copied = hash_file(staging, &file.path)?;
        if copied.sha256 != file.sha256 || copied.bytes != file.bytes {
            return Err(StoreError::Corrupt(format!("{} in the backup does not match its manifest", file.path)));
        }
        progress.advance(file.bytes);
    }
    #[cfg(unix)]
    for key in ["asset-signing.key", crate::secrets::KEY_FILE] {
        use std::os::unix::fs::PermissionsExt;
        let path = staging.join(key);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::io(&path, e))?;
        }
    }
    let store = Store::open(staging)?;
    let integrity = store.integrity_check()?;
    if integrity != ["ok"] {
        return Err(StoreError::Corrupt(format!("the restored catalog fails SQLite's check: {integrity:?}")));
    }
    if let Err(id) = store.verify_audit()? {
        return Err(StoreError::Corrupt(format!("the restored audit log's chain breaks at entry {id}")));
    }
    let (counts, head) = store.db().read(catalog_facts)?;
    if counts != manifest.counts || head != manifest.audit_head {
        return Err(StoreError::Corrupt(format!(
            "the restored catalog holds {counts:?}, the manifest says {:?}",
            manifest.counts
        )));
    }
    Ok(())
}

/// Creates `dir`, or accepts it when it exists and is empty.
fn prepare_empty(dir: &Path) -> StoreResult<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(StoreError::Conflict(format!("{} is not empty; name a new directory", dir.display())));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))
        }
        Err(e) => Err(StoreError::io(dir, e)),
    }
}

fn catalog_facts(conn: &Connection) -> StoreResult<(BTreeMap<String, i64>, Option<String>)> {
    let mut counts = BTreeMap::new();
    for table in COUNTED {
        counts.insert(table.to_string(), conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?);
    }
    let head = conn
        .query_row("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })?;
    Ok((counts, head))
}

fn table_files(conn: &Connection) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare("SELECT file FROM guarded_tables")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The data directory's files to copy (relative paths and sizes): all but the catalog (copied
/// through SQLite), its journal files, staging, and what is rebuilt on use.
fn data_files(dir: &Path) -> StoreResult<Vec<(PathBuf, u64)>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let path = dir.join(&relative);
        let entries = std::fs::read_dir(&path).map_err(|e| StoreError::io(&path, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&path, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let top = relative.as_os_str().is_empty();
            if name.starts_with('.') || (top && (name.starts_with(CATALOG) || LEFT_OUT.contains(&name.as_str()))) {
                continue;
            }
            let file_type = entry.file_type().map_err(|e| StoreError::io(&entry.path(), e))?;
            if file_type.is_dir() {
                pending.push(relative.join(&name));
            } else if file_type.is_file() {
                // Gone since it was listed: nothing to copy, as for a file removed while copying.
                let Ok(meta) = entry.metadata() else { continue };
                found.push((relative.join(&name), meta.len()));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn hash_file(root: &Path, relative: impl AsRef<Path>) -> StoreResult<BackedUpFile> {
    let path = root.join(relative.as_ref());
    let mut file = std::fs::File::open(&path).map_err(|e| StoreError::io(&path, e))?;
    let (mut hasher, mut bytes, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let n = file.read(&mut buf).map_err(|e| StoreError::io(&path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let path_text = relative.as_ref().to_string_lossy().replace('\\', "/");
    Ok(BackedUpFile { path: path_text, bytes, sha256: hex::encode(hasher.finalize()) })
}

/// A manifest path as a relative path that stays inside the directory (a manifest is input: a
/// tampered one must not write outside the restore's target).
fn safe_relative(path: &str) -> StoreResult<PathBuf> {
    let relative = Path::new(path);
    let inside = relative.components().all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside || path.is_empty() {
        return Err(StoreError::Corrupt(format!("the manifest names {path:?}, which is not inside the backup")));
    }
    Ok(relative.to_path_buf())
}

fn write_manifest(dest: &Path, manifest: &Manifest) -> StoreResult<()> {
    let path = dest.join(MANIFEST);
    let text = serde_json::to_string_pretty(manifest)?;
    let temp = dest.join(format!(".{MANIFEST}.tmp"));
    std::fs::write(&temp, text).map_err(|e| StoreError::io(&temp, e))?;
    std::fs::rename(&temp, &path).map_err(|e| StoreError::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_paths_stay_inside_the_backup() {
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
        assert_eq!(safe_relative("tables/t.parquet").unwrap(), PathBuf::from("tables/t.parquet"));
    }

    #[test]
    fn a_backup_restores_with_its_counts_and_refuses_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("data")).unwrap();
        store.add_user("admin", milkglass_core::Role::Admin).unwrap();
        store
            .audit(crate::NewAuditEntry { user: "admin".into(), decision: "answered".into(), ..Default::default() })
            .unwrap();
        let manifest = store.backup_to(&dir.path().join("b"), &()).unwrap();
        assert_eq!(manifest.counts["users"], 1);
        assert_eq!(manifest.counts["audit_log"], 1);
        assert!(manifest.files.iter().any(|f| f.path == "catalog-secrets.key"), "{:?}", manifest.files);
        assert!(
            matches!(store.backup_to(&dir.path().join("b"), &()), Err(StoreError::Conflict(_))),
            "not over a backup"
        );

        let restored = restore(&dir.path().join("b"), &dir.path().join("r"), &()).unwrap();
        assert_eq!(restored, manifest);
        let again = Store::open(dir.path().join("r")).unwrap();
        assert_eq!(again.list_users().unwrap().len(), 1);

        // A backup file that changed after the backup is refused, and leaves no directory.
        std::fs::write(dir.path().join("b/catalog-secrets.key"), [7u8; 32]).unwrap();
        let err = restore(&dir.path().join("b"), &dir.path().join("r2"), &()).unwrap_err();
        assert!(err.to_string().contains("does not match its manifest"), "{err}");
        assert!(!dir.path().join("r2").exists() || std::fs::read_dir(dir.path().join("r2")).unwrap().next().is_none());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("restoring"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
