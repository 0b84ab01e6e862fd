use crate::{StoreError, StoreResult, migrations};
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// SQLite connections: one writer (SQLite allows one at a time anyway) and a pool
/// of readers, which WAL mode lets run beside the writer.
pub(crate) struct Db {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

const MAX_IDLE_READERS: usize = 8;

/// Page cache of the writer, in KiB: uploads rewrite the same B-tree pages batch after batch.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Page cache of each reader, in KiB. Readers are many (one per concurrent request, eight kept)
/// and each cache holds its own copy of the pages it read, for as long as the connection
/// lives; at the writer's size nine of them held over half a GiB under load, growing with the
/// catalog. Small, a repeated read costs a copy from the operating system's page cache instead.
const READER_CACHE_KIB: i64 = 8 * 1024;

impl Db {
    pub(crate) fn open(path: &Path) -> StoreResult<Db> {
        let mut writer = open_connection(path, WRITER_CACHE_KIB)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        migrations::migrate(&mut writer)?;
        Ok(Db { path: path.to_path_buf(), writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) })
    }

    /// Runs `f` on a read connection; it sees the last committed state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = self.readers.lock().expect("reader pool poisoned").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path, READER_CACHE_KIB)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().expect("reader pool poisoned");
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        result
    }

    /// Runs `f` in one write transaction: everything it does commits together or not at all.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Transaction) -> StoreResult<T>) -> StoreResult<T> {
        let mut conn = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

impl Db {
    /// Rewrites the database file without its free pages (which may still hold deleted values),
    /// and truncates the write-ahead log, which may hold them too.
    pub(crate) fn vacuum(&self) -> StoreResult<()> {
        let conn = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        conn.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }
}

pub(crate) fn open_connection(path: &Path, cache_kib: i64) -> StoreResult<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Corrupt(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    // NORMAL is durable in WAL mode except for the last transactions on power loss;
    // a process crash (the SIGKILL case) loses nothing that committed.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Negative: a size in KiB, not a count of pages.
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Reads a JSON text column into `T`; text that does not parse is reported as a
/// conversion failure of that column.
pub(crate) fn json_column<T: serde::de::DeserializeOwned>(row: &rusqlite::Row, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    parse_json_column(index, &text)
}

/// Like [`json_column`] for a nullable column.
pub(crate) fn optional_json_column<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row,
    index: usize,
) -> rusqlite::Result<Option<T>> {
    let text: Option<String> = row.get(index)?;
    text.map(|t| parse_json_column(index, &t)).transpose()
}

fn parse_json_column<T: serde::de::DeserializeOwned>(index: usize, text: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, e.into()))
}
