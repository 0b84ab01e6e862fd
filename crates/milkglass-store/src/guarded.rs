//! Guarded tables: an owner's data, stored as Parquet with a hidden row id, and the
//! policy that decides what may be revealed of it.

use crate::db::{json_column, optional_json_column};
use crate::{Store, StoreError, StoreResult, User, now};
use arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use milkglass_core::{Policy, Role, check_name};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How long a staging file may be in use: a request, or an upload session of the Aquarium
/// adapter (a day), with a margin.
const STAGING_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 24 * 3600);

/// Name of the hidden row-id column, last in every stored guarded table.
pub const ROW_ID: &str = "__mg_row";

#[derive(Debug, Clone, Serialize)]
pub struct GuardedTableInfo {
    /// The table's row in the catalog (what its answered coverage hangs off).
    #[serde(skip)]
    pub id: i64,
    /// The table's identity, never reused: a table dropped and published again under its
    /// name is another table, with another uid, and inherits none of the old one's audit
    /// entries or review requests. A replacement by its owner keeps it.
    #[serde(skip)]
    pub uid: String,
    pub name: String,
    pub owner: String,
    pub policy: Policy,
    /// Scientists who may query the table; `None` means every scientist.
    pub readers: Option<Vec<String>>,
    pub rows: i64,
    pub columns: Vec<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip)]
    pub file: PathBuf,
}

impl GuardedTableInfo {
    /// Whether `user` may query the table (owners and admins always may).
    pub fn readable_by(&self, user: &User) -> bool {
        user.role == Role::Admin || self.owner == user.name || among_readers(self.readers.as_deref(), user)
    }

    /// Whether `user` may replace, drop or re-police the table.
    pub fn managed_by(&self, user: &User) -> bool {
        user.role == Role::Admin || (user.role == Role::Owner && self.owner == user.name)
    }

    /// DataFusion providers over the stored file: as callers see it, and with the row id.
    pub fn providers(&self) -> StoreResult<(Arc<dyn TableProvider>, Arc<dyn TableProvider>)> {
        parquet_providers(&self.file)
    }
}

/// Whether `user` is a scientist a publication's `readers` admit (`None`: every scientist).
pub(crate) fn among_readers(readers: Option<&[String]>, user: &User) -> bool {
    user.role == Role::Scientist && readers.is_none_or(|r| r.contains(&user.name))
}

/// Providers over a Parquet file whose last column is [`ROW_ID`]: as callers see it
/// (without the row id), and whole.
pub(crate) fn parquet_providers(file: &Path) -> StoreResult<(Arc<dyn TableProvider>, Arc<dyn TableProvider>)> {
    let internal = parquet_table(file, None)?;
    let schema = internal.schema();
    let visible_fields: Vec<_> = schema.fields().iter().filter(|f| f.name() != ROW_ID).cloned().collect();
    let visible = parquet_table(file, Some(Arc::new(arrow::datatypes::Schema::new(visible_fields))))?;
    Ok((visible, internal))
}

fn parquet_table(path: &Path, schema: Option<arrow::datatypes::SchemaRef>) -> StoreResult<Arc<dyn TableProvider>> {
    let corrupt = |e: datafusion::error::DataFusionError| StoreError::Corrupt(format!("{}: {e}", path.display()));
    let url = ListingTableUrl::parse(path.to_string_lossy()).map_err(corrupt)?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let schema = match schema {
        Some(schema) => schema,
        None => {
            let file = std::fs::File::open(path).map_err(|e| StoreError::io(path, e))?;
            let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
            reader.schema().clone()
        }
    };
    let config = ListingTableConfig::new(url).with_listing_options(options).with_schema(schema);
    Ok(Arc::new(ListingTable::try_new(config).map_err(corrupt)?))
}

fn info_from_row(r: &rusqlite::Row, dir: &Path) -> rusqlite::Result<GuardedTableInfo> {
    let file: String = r.get(4)?;
    Ok(GuardedTableInfo {
        id: r.get(9)?,
        name: r.get(0)?,
        owner: r.get(1)?,
        policy: json_column(r, 2)?,
        readers: optional_json_column(r, 3)?,
        file: dir.join(file),
        rows: r.get(5)?,
        columns: json_column(r, 6)?,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
        uid: r.get(10)?,
    })
}

const TABLE_COLUMNS: &str =
    "t.name, u.name, t.policy, t.readers, t.file, t.rows, t.columns, t.created_at, t.updated_at, t.id, t.uid";

impl Store {
    fn tables_dir(&self) -> PathBuf {
        self.dir().join("tables")
    }

    /// Publishes (or replaces) a table from a Parquet file that already carries the row id
    /// (from [`Store::import_table_file`]). The catalog points at the new file only once it
    /// is complete; the old file is removed after the switch.
    pub fn publish_table(
        &self,
        owner: &User,
        name: &str,
        policy: &Policy,
        readers: Option<&[String]>,
        data: &ImportedTable,
    ) -> StoreResult<GuardedTableInfo> {
        check_name("name", name)?;
        let (rows, columns) = (data.rows, &data.columns);
        let relative = data
            .file
            .strip_prefix(self.dir())
            .map_err(|_| StoreError::Corrupt("table files live in the data directory".into()))?
            .to_string_lossy()
            .to_string();
        let old_file: Option<String> = self.db().write(|tx| {
            let existing: Option<(String, String)> = tx
                .query_row(
                    "SELECT u.name, t.file FROM guarded_tables t JOIN users u ON u.id = t.owner_id WHERE t.name = ?1",
                    [name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let at = now();
            let policy = serde_json::to_string(policy)?;
            let readers = readers.map(serde_json::to_string).transpose()?;
            let columns = serde_json::to_string(columns)?;
            match &existing {
                Some((table_owner, _)) if table_owner != &owner.name && owner.role != Role::Admin => {
                    return Err(StoreError::Conflict(format!("table {name:?} belongs to {table_owner:?}; choose another name")));
                }
                Some(_) => {
                    // New rows under the same ids: what earlier answers covered no longer
                    // names the same people.
                    tx.execute(
                        "DELETE FROM answered_coverage WHERE table_id = (SELECT id FROM guarded_tables WHERE name = ?1)",
                        [name],
                    )?;
                    tx.execute(
                        "UPDATE guarded_tables SET policy = ?1, readers = ?2, file = ?3, rows = ?4, columns = ?5, updated_at = ?6 WHERE name = ?7",
                        params![policy, readers, relative, rows, columns, at, name],
                    )?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO guarded_tables (name, owner_id, policy, readers, file, rows, columns, created_at, updated_at, uid)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, lower(hex(randomblob(16))))",
                        params![name, owner.id, policy, readers, relative, rows, columns, at],
                    )?;
                }
            }
            Ok(existing.map(|e| e.1))
        })?;
        if let Some(old) = old_file
            && old != relative
        {
            let _ = std::fs::remove_file(self.dir().join(old));
        }
        self.guarded_table(name)
    }

    /// A fresh path for a table file being written (not yet in the catalog).
    pub fn new_table_file(&self, name: &str) -> StoreResult<PathBuf> {
        check_name("name", name)?;
        self.fresh_path(&self.tables_dir(), &format!("{name}-"), ".parquet")
    }

    /// A fresh path for an upload on its way in; the caller removes it when done.
    pub fn staging_file(&self) -> StoreResult<PathBuf> {
        self.fresh_path(&self.staging_dir(), "upload-", "")
    }

    fn staging_dir(&self) -> PathBuf {
        self.tables_dir().join(".staging")
    }

    /// Removes staging files older than [`STAGING_TTL`]: a staging file lives as long as one
    /// request or one upload session (at most a day), so an older one was left by a process that
    /// stopped mid-upload. Younger ones may belong to a server running on the same directory
    /// (the CLI opens the store beside it), so they stay. Returns how many were removed.
    pub(crate) fn sweep_staging(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.staging_dir()) else { return 0 };
        let stale = |entry: &std::fs::DirEntry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STAGING_TTL)
        };
        entries.flatten().filter(stale).filter(|e| std::fs::remove_file(e.path()).is_ok()).count()
    }

    fn fresh_path(&self, dir: &Path, prefix: &str, suffix: &str) -> StoreResult<PathBuf> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut nonce = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
        Ok(dir.join(format!("{prefix}{}{suffix}", hex::encode(nonce))))
    }

    pub fn guarded_table(&self, name: &str) -> StoreResult<GuardedTableInfo> {
        let dir = self.dir().to_path_buf();
        self.db().read(|conn| {
            conn.query_row(
                &format!(
                    "SELECT {TABLE_COLUMNS} FROM guarded_tables t JOIN users u ON u.id = t.owner_id WHERE t.name = ?1"
                ),
                [name],
                |r| info_from_row(r, &dir),
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found(format!("table {name:?}")))
        })
    }

    pub fn guarded_tables(&self) -> StoreResult<Vec<GuardedTableInfo>> {
        let dir = self.dir().to_path_buf();
        self.db().read(|conn| {
            let mut stmt = conn.prepare(&format!(
                "SELECT {TABLE_COLUMNS} FROM guarded_tables t JOIN users u ON u.id = t.owner_id ORDER BY t.name"
            ))?;
            let rows = stmt.query_map([], |r| info_from_row(r, &dir))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub fn set_table_policy(
        &self,
        name: &str,
        policy: &Policy,
        readers: Option<Option<&[String]>>,
    ) -> StoreResult<GuardedTableInfo> {
        self.db().write(|tx| {
            let policy = serde_json::to_string(policy)?;
            let n = match readers {
                Some(readers) => tx.execute(
                    "UPDATE guarded_tables SET policy = ?1, readers = ?2, updated_at = ?3 WHERE name = ?4",
                    params![policy, readers.map(serde_json::to_string).transpose()?, now(), name],
                )?,
                None => tx.execute(
                    "UPDATE guarded_tables SET policy = ?1, updated_at = ?2 WHERE name = ?3",
                    params![policy, now(), name],
                )?,
            };
            if n == 0 {
                return Err(StoreError::not_found(format!("table {name:?}")));
            }
            Ok(())
        })?;
        self.guarded_table(name)
    }

    /// Drops a table, and closes its pending review requests (rejected, saying why) in the
    /// same transaction, so no later table of that name inherits them. Its audit entries stay.
    pub fn drop_table(&self, name: &str) -> StoreResult<()> {
        let file: String = self.db().write(|tx| {
            let (file, uid): (String, String) = tx
                .query_row("SELECT file, uid FROM guarded_tables WHERE name = ?1", [name], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?
                .ok_or_else(|| StoreError::not_found(format!("table {name:?}")))?;
            tx.execute("DELETE FROM guarded_tables WHERE name = ?1", [name])?;
            crate::publications::close_requests_about(tx, &uid, &format!("table {name:?} was dropped"))?;
            Ok(file)
        })?;
        let _ = std::fs::remove_file(self.dir().join(file));
        Ok(())
    }
}

/// A table's uid and its owners (a dataset table has its project's owners).
pub(crate) type TableIdentity = (String, Vec<String>);

/// The identity of each named table as it is now (`None` for a name with no table): a
/// guarded table's, or a dataset table's (`<project>/<dataset>/<table>`).
pub(crate) fn table_identities(
    conn: &rusqlite::Connection,
    names: &[String],
) -> StoreResult<Vec<Option<TableIdentity>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT t.uid, u.name FROM guarded_tables t JOIN users u ON u.id = t.owner_id WHERE t.name = ?1",
    )?;
    let mut found = Vec::with_capacity(names.len());
    for name in names {
        let guarded = stmt.query_row([name], |r| Ok((r.get(0)?, vec![r.get(1)?]))).optional()?;
        found.push(match guarded {
            Some(identity) => Some(identity),
            None => crate::publications::dataset_table_identity(conn, name)?,
        });
    }
    Ok(found)
}

/// The uids of the named tables that exist now.
pub(crate) fn table_uids(conn: &rusqlite::Connection, names: &[String]) -> StoreResult<Vec<String>> {
    Ok(table_identities(conn, names)?.into_iter().flatten().map(|(uid, _)| uid).collect())
}

/// A table file written into the data directory, not yet in the catalog.
#[derive(Debug, Clone)]
pub struct ImportedTable {
    pub file: PathBuf,
    pub rows: i64,
    pub columns: Vec<String>,
}

/// File formats an owner may upload a table in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Csv,
    Parquet,
    ArrowIpc,
}

impl TableFormat {
    /// From a format name or a file name's extension.
    pub fn parse(text: &str) -> Option<TableFormat> {
        let ext = text.rsplit('.').next().unwrap_or(text).to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(TableFormat::Csv),
            "parquet" | "pq" => Some(TableFormat::Parquet),
            "arrow" | "arrows" | "ipc" | "feather" => Some(TableFormat::ArrowIpc),
            _ => None,
        }
    }
}

/// Where a table's rows come from.
enum TableSource<'a> {
    File(&'a Path, TableFormat),
    Batches(Vec<RecordBatch>),
}

impl Store {
    /// Converts an uploaded file into a table file with row ids; returns (path, rows, columns).
    /// The result is complete and synced before it is returned; on error nothing is left behind.
    /// With `cluster_by` (a DP table's privacy unit), rows are stored sorted by that column, so
    /// that each person's rows lie together: the DP mode's bounding then finds a person's
    /// state in cache instead of missing it on nearly every row. A column the file lacks is
    /// left to the policy check that follows.
    pub async fn import_table_file(
        &self,
        name: &str,
        source: &Path,
        format: TableFormat,
        cluster_by: Option<&str>,
    ) -> StoreResult<ImportedTable> {
        self.import_table(name, TableSource::File(source, format), cluster_by).await
    }

    /// Like [`Store::import_table_file`], from batches already in memory (a saved result), so
    /// they need no round trip through a file.
    pub async fn import_table_batches(&self, name: &str, batches: Vec<RecordBatch>) -> StoreResult<ImportedTable> {
        self.import_table(name, TableSource::Batches(batches), None).await
    }

    async fn import_table(
        &self,
        name: &str,
        source: TableSource<'_>,
        cluster_by: Option<&str>,
    ) -> StoreResult<ImportedTable> {
        use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
        use futures::StreamExt;
        let invalid = |e: &dyn std::fmt::Display| StoreError::invalid("file", format!("cannot read the file: {e}"));
        let target = self.new_table_file(name)?;
        let partial = target.with_extension("partial");
        let result: StoreResult<(i64, Vec<String>)> = async {
            let ctx = SessionContext::new();
            let in_memory = |batches: Vec<RecordBatch>| {
                let schema =
                    batches.first().map(|b| b.schema()).ok_or_else(|| invalid(&"the file holds no record batch"))?;
                let table =
                    datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(|e| invalid(&e))?;
                ctx.read_table(Arc::new(table)).map_err(|e| invalid(&e))
            };
            let frame = match source {
                TableSource::File(path, TableFormat::Csv) => ctx
                    .read_csv(
                        path.to_string_lossy().as_ref(),
                        CsvReadOptions::new().has_header(true).file_extension(""),
                    )
                    .await
                    .map_err(|e| invalid(&e))?,
                TableSource::File(path, TableFormat::Parquet) => ctx
                    .read_parquet(path.to_string_lossy().as_ref(), ParquetReadOptions::default().file_extension(""))
                    .await
                    .map_err(|e| invalid(&e))?,
                TableSource::File(path, TableFormat::ArrowIpc) => {
                    in_memory(read_arrow_ipc(path).map_err(|e| invalid(&e))?)?
                }
                TableSource::Batches(batches) => in_memory(batches)?,
            };
            let frame = match cluster_by {
                Some(column) if frame.schema().has_column_with_unqualified_name(column) => {
                    frame.sort(vec![datafusion::prelude::ident(column).sort(true, true)]).map_err(|e| invalid(&e))?
                }
                _ => frame,
            };
            let mut stream: datafusion::execution::SendableRecordBatchStream =
                frame.execute_stream().await.map_err(|e| invalid(&e))?;
            let schema = stream.schema();
            let mut columns = Vec::new();
            for field in schema.fields() {
                let name = field.name();
                if name.is_empty() || name.starts_with("__mg") {
                    return Err(StoreError::invalid("file", format!("column name {name:?} is reserved or empty")));
                }
                if columns.contains(name) {
                    return Err(StoreError::invalid("file", format!("column {name:?} appears twice")));
                }
                columns.push(name.clone());
            }
            let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
            fields.push(Arc::new(arrow::datatypes::Field::new(ROW_ID, arrow::datatypes::DataType::Int64, false)));
            let stored_schema = Arc::new(arrow::datatypes::Schema::new(fields));
            let file = std::fs::File::create(&partial).map_err(|e| StoreError::io(&partial, e))?;
            let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, stored_schema.clone(), None)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut rows = 0i64;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| invalid(&e))?;
                let ids = arrow::array::Int64Array::from_iter_values(rows..rows + batch.num_rows() as i64);
                rows += batch.num_rows() as i64;
                let mut columns = batch.columns().to_vec();
                columns.push(Arc::new(ids));
                let batch =
                    arrow::array::RecordBatch::try_new(stored_schema.clone(), columns).map_err(|e| invalid(&e))?;
                writer.write(&batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            }
            let file = writer.into_inner().map_err(|e| StoreError::Corrupt(e.to_string()))?;
            file.sync_all().map_err(|e| StoreError::io(&partial, e))?;
            Ok((rows, columns))
        }
        .await;
        match result {
            Ok((rows, columns)) => {
                std::fs::rename(&partial, &target).map_err(|e| StoreError::io(&target, e))?;
                Ok(ImportedTable { file: target, rows, columns })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                Err(e)
            }
        }
    }
}

fn read_arrow_ipc(path: &Path) -> Result<Vec<arrow::array::RecordBatch>, arrow::error::ArrowError> {
    let bytes = std::fs::read(path)?;
    crate::decode_untrusted(|| {
        if bytes.starts_with(b"ARROW1") {
            arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)?.collect()
        } else {
            let stream = crate::CheckedIpcStream::new(std::io::Cursor::new(bytes));
            arrow::ipc::reader::StreamReader::try_new(stream, None)?.collect()
        }
    })
}
