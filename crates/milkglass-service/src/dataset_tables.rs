//! Datasets as tables under the guard: the dataset face's labels, inferences and
//! metadata, queried with the table face's SQL, decided by the one guard.
//!
//! Who reads what:
//! - members of a dataset's project (viewers and owners) read its tables openly, under a
//!   policy that allows every query; their queries are audited like any other;
//! - scientists read a dataset its owner published to them, under the publication's
//!   policy: minimum aggregation counted in frames or in a metadata key's values (the
//!   snapshot's row ids are those units), sanitized columns, log/reject/review.
//!
//! Tables: `frames`, `labels`, `inferences_<set>`, and the insight scores `frame_scores`,
//! `label_scores` and `issues_<set>` (see milkglass-store's `scores`).
//!
//! SQL names: `<dataset>.<table>` (`shapes.labels`, `shapes.inferences_model_v1`), and
//! `"<dataset>@v<N>".<table>` for version N. Where two datasets the caller may read share
//! a name, `<project>.<dataset>.<table>` tells them apart. Each table's identity in
//! decisions and logs is `<project>/<dataset>[@v<N>]/<table>`.

use crate::insights::IndexCache;
use crate::{ServiceError, ServiceResult, Services, access, on_store};
use milkglass_core::{Policy, ProjectRole, Role, Rule, UnsafeHandling};
use milkglass_guard::{ProtectedTable, TableReference};
use milkglass_store::{
    CoverageOf, DatasetInfo, DatasetPublication, DatasetSnapshot, SnapshotTable, Store, User, dataset_table_name,
    is_score_table,
};
use serde::Serialize;
use std::collections::HashMap;

/// A dataset the caller may query, and under which policy.
#[derive(Debug, Clone)]
pub struct ReadableDataset {
    pub dataset: DatasetInfo,
    pub policy: Policy,
    /// The metadata key the policy's minimums count; `None`: frames.
    pub unit: Option<String>,
    /// True for project members: nothing is refused, and no answers need remembering.
    pub open: bool,
    /// Whether the short name `<dataset>.<table>` is this dataset's (no other readable
    /// dataset has its name).
    pub short_name: bool,
}

/// The policy members read their own datasets under: everything is in the safe zone.
fn members_policy() -> Policy {
    Policy {
        safe_zone: Rule::Constant(true),
        unsafe_handling: UnsafeHandling::Log,
        sanitized_columns: Vec::new(),
        savable: false,
        allow_extremes: true,
        dp: None,
    }
}

/// Every dataset `user` may query. Blocking.
pub fn readable_datasets(store: &Store, user: &User) -> ServiceResult<Vec<ReadableDataset>> {
    let mut found: Vec<ReadableDataset> = Vec::new();
    for project in store.list_projects(user)? {
        for dataset in store.list_datasets(&project.name)? {
            found.push(ReadableDataset { dataset, policy: members_policy(), unit: None, open: true, short_name: true });
        }
    }
    for publication in store.dataset_publications()? {
        if !publication.readable_by(user) || found.iter().any(|r| r.dataset.id == publication.dataset_id) {
            continue;
        }
        let dataset = store.dataset(&publication.project, &publication.dataset)?;
        found.push(ReadableDataset {
            dataset,
            policy: publication.policy,
            unit: publication.unit,
            open: false,
            short_name: true,
        });
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    for r in &found {
        *names.entry(r.dataset.name.clone()).or_default() += 1;
    }
    for r in &mut found {
        r.short_name = names[&r.dataset.name] == 1;
    }
    Ok(found)
}

/// A dataset table in a query, as the guard and the service need it.
pub struct DatasetTable {
    pub protected: ProtectedTable,
    /// The dataset's uid (what audit entries and review requests bind to).
    pub uid: String,
    /// Where the memory of released answers lives; `None` for members' open reads.
    pub memory: Option<CoverageOf>,
}

/// Up to this many frames, a version's score tables are made right after its upload and on
/// a listing (the exact 10-NN graph takes seconds); past it, on the first query naming one.
const EAGER_SCORE_FRAMES: u64 = 20_000;

/// The snapshot's insight-score tables (`frame_scores`, `label_scores`, `issues_<set>`): read
/// when written before, else computed from the insights and written. Scores are computed for
/// the dataset's current version only; an earlier version has them if they were made while it
/// was current. Blocking.
fn score_tables(
    indexes: &IndexCache,
    store: &Store,
    dataset: &DatasetInfo,
    snapshot: &DatasetSnapshot,
) -> ServiceResult<Vec<SnapshotTable>> {
    if let Some(tables) = store.snapshot_scores(snapshot)? {
        return Ok(tables);
    }
    if snapshot.version != dataset.version {
        return Err(ServiceError::invalid(
            "sql",
            format!(
                "insight scores of version {} were not kept (they are made for the current version, {}); \
                 query the current version's score tables",
                snapshot.version, dataset.version
            ),
        ));
    }
    let scores = crate::insights::insight_scores(indexes, store, dataset)?;
    Ok(store.write_snapshot_scores(snapshot, &scores)?)
}

/// Splits `shapes@v3` into the dataset name and the version; `None` for a malformed version,
/// which then names no dataset table (the planner says it does not exist).
fn schema_version(schema: &str) -> Option<(&str, Option<i64>)> {
    let Some((name, version)) = schema.split_once('@') else { return Some((schema, None)) };
    let number = version.strip_prefix('v').and_then(|v| v.parse::<i64>().ok())?;
    Some((name, Some(number)))
}

/// The dataset tables `sql` names that the caller may read, with snapshots taken as needed.
/// A name matching no readable dataset is left to the planner, which says it does not exist.
pub async fn referenced(services: &Services, user: &User, sql: &str) -> ServiceResult<Vec<DatasetTable>> {
    // SQL that does not parse names nothing; the guard refuses it, and the refusal is audited.
    let Ok(references) = milkglass_guard::referenced_tables(sql) else { return Ok(Vec::new()) };
    let wanted: Vec<TableReference> =
        references.into_iter().filter(|r| !matches!(r, TableReference::Bare { .. })).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let (user, indexes) = (user.clone(), services.indexes.clone());
    on_store(services, move |store| {
        let readable = readable_datasets(store, &user)?;
        let mut snapshots: HashMap<(i64, i64), DatasetSnapshot> = HashMap::new();
        let mut scores: HashMap<(i64, i64), Vec<SnapshotTable>> = HashMap::new();
        let mut tables = Vec::new();
        for reference in wanted {
            let (project, schema, table) = match &reference {
                TableReference::Partial { schema, table } => (None, schema.as_ref(), table.as_ref()),
                TableReference::Full { catalog, schema, table } => {
                    (Some(catalog.as_ref()), schema.as_ref(), table.as_ref())
                }
                TableReference::Bare { .. } => continue,
            };
            let Some((name, version)) = schema_version(schema) else { continue };
            let Some(readable) = readable
                .iter()
                .find(|r| r.dataset.name == name && project.map_or(r.short_name, |p| p == r.dataset.project))
            else {
                continue;
            };
            let dataset = &readable.dataset;
            let at = version.unwrap_or(dataset.version);
            let key = (dataset.id, at);
            let snapshot = match snapshots.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(store.dataset_snapshot(dataset, at, readable.unit.as_deref())?)
                }
            };
            let found = match snapshot.tables.iter().find(|t| t.name == table) {
                Some(found) => found,
                None if is_score_table(table) => {
                    let tables = match scores.entry(key) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(score_tables(&indexes, store, dataset, snapshot)?)
                        }
                    };
                    let Some(found) = tables.iter().find(|t| t.name == table) else { continue };
                    found
                }
                None => continue,
            };
            let (visible, internal) = found.providers()?;
            let identity = dataset_table_name(&dataset.project, &dataset.name, version, table);
            let unit = readable.unit.as_deref().unwrap_or("frames");
            let memory =
                (!readable.open).then(|| CoverageOf::DatasetTable(format!("{}@v{at}/{unit}/{table}", dataset.uid)));
            tables.push(DatasetTable {
                protected: ProtectedTable {
                    name: identity,
                    reference: reference.clone(),
                    policy: readable.policy.clone(),
                    visible,
                    internal,
                    rows: found.units,
                    shared_ids: true,
                },
                uid: dataset.uid.clone(),
                memory,
            });
        }
        Ok(tables)
    })
    .await
}

/// The snapshot's score tables where they exist or are cheap to make now (see
/// [`EAGER_SCORE_FRAMES`]); empty where they wait for a query. Blocking.
fn eager_score_tables(
    indexes: &IndexCache,
    store: &Store,
    dataset: &DatasetInfo,
    snapshot: &DatasetSnapshot,
) -> ServiceResult<Vec<SnapshotTable>> {
    let frames = snapshot.tables.iter().find(|t| t.name == "frames").map_or(0, |t| t.rows);
    if snapshot.version == dataset.version && frames <= EAGER_SCORE_FRAMES {
        return score_tables(indexes, store, dataset, snapshot);
    }
    Ok(store.snapshot_scores(snapshot)?.unwrap_or_default())
}

/// Writes the current version's tables ahead of its first query: counted in frames (members)
/// and in the publication's unit, if it names one, with their score tables. Blocking.
pub(crate) fn prepare(indexes: &IndexCache, store: &Store, dataset: &DatasetInfo) -> ServiceResult<()> {
    // Another upload may have landed since: work on the version that is current now.
    let dataset = store.dataset(&dataset.project, &dataset.name)?;
    let snapshot = store.dataset_snapshot(&dataset, dataset.version, None)?;
    eager_score_tables(indexes, store, &dataset, &snapshot)?;
    if let Some(unit) = store.dataset_publication(&dataset)?.and_then(|p| p.unit) {
        let snapshot = store.dataset_snapshot(&dataset, dataset.version, Some(&unit))?;
        eager_score_tables(indexes, store, &dataset, &snapshot)?;
    }
    Ok(())
}

/// One dataset table as a listing shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TableListing {
    pub project: String,
    pub dataset: String,
    /// What SQL calls it: `shapes.labels`, or `demo.shapes.labels` where names clash.
    pub sql_name: String,
    /// The SQL name's parts: the catalog (`None`: the default), schema and table.
    pub catalog: Option<String>,
    pub schema: String,
    pub table: String,
    pub version: i64,
    pub rows: u64,
    /// Units the policy counts (frames, or values of the unit key).
    pub units: u64,
    pub columns: Vec<ColumnListing>,
    /// True when the caller reads it as a project member, false under a publication.
    pub member: bool,
    /// The publication's policy the caller's queries are decided by (absent for members, who
    /// read openly), and the metadata key its minimums count (absent: frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<milkglass_core::Policy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColumnListing {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(skip)]
    pub arrow_type: milkglass_guard::DataType,
    /// Sanitized by the publication's policy: it reads as NULL and may not be a key.
    pub sanitized: bool,
}

/// Quotes an SQL identifier where it is not a plain lower-case word.
fn sql_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// The current tables of every dataset the caller may query (or of one, with `only`),
/// with their columns. Takes each current snapshot that does not exist yet; score tables are
/// listed once made (at once for versions of up to 20,000 frames). Blocking.
pub fn list(services: &Services, user: &User, only: Option<(&str, &str)>) -> ServiceResult<Vec<TableListing>> {
    let store = &services.store;
    let mut listings = Vec::new();
    for readable in readable_datasets(store, user)? {
        let dataset = &readable.dataset;
        if only.is_some_and(|(p, d)| p != dataset.project || d != dataset.name) {
            continue;
        }
        let snapshot = store.dataset_snapshot(dataset, dataset.version, readable.unit.as_deref())?;
        let scores = eager_score_tables(&services.indexes, store, dataset, &snapshot)?;
        for table in snapshot.tables.iter().chain(&scores) {
            let (visible, _) = table.providers()?;
            let columns = visible
                .schema()
                .fields()
                .iter()
                .map(|f| ColumnListing {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                    arrow_type: f.data_type().clone(),
                    sanitized: readable.policy.sanitized_columns.contains(f.name()),
                })
                .collect();
            let catalog = (!readable.short_name).then(|| dataset.project.clone());
            let sql_name = match &catalog {
                Some(c) => format!("{}.{}.{}", sql_ident(c), sql_ident(&dataset.name), sql_ident(&table.name)),
                None => format!("{}.{}", sql_ident(&dataset.name), sql_ident(&table.name)),
            };
            listings.push(TableListing {
                project: dataset.project.clone(),
                dataset: dataset.name.clone(),
                sql_name,
                catalog,
                schema: dataset.name.clone(),
                table: table.name.clone(),
                version: snapshot.version,
                rows: table.rows,
                units: table.units,
                columns,
                member: readable.open,
                policy: (!readable.open).then(|| readable.policy.clone()),
                unit: readable.unit.clone(),
            });
        }
    }
    Ok(listings)
}

/// What an owner sends to publish a dataset's tables.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicationSpec {
    pub policy: serde_json::Value,
    #[serde(default)]
    pub readers: Option<Vec<String>>,
    /// A metadata key whose values the policy's minimums count; absent: frames.
    #[serde(default)]
    pub unit: Option<String>,
}

/// Publishes (or re-polices) a dataset's tables to outside analysts. For the project's
/// owners. Every sanitized column and the unit key must exist in the dataset's tables.
pub async fn publish(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
    spec: PublicationSpec,
) -> ServiceResult<DatasetPublication> {
    let policy = Policy::from_value(spec.policy)?;
    if let Some(readers) = &spec.readers {
        for (i, reader) in readers.iter().enumerate() {
            milkglass_core::check_name(&format!("readers[{i}]"), reader)?;
        }
    }
    let (user, project, name) = (user.clone(), project.to_string(), name.to_string());
    on_store(services, move |store| {
        let (_, dataset) = access::dataset(store, &user, &project, &name, ProjectRole::Owner)?;
        if let Some(readers) = &spec.readers {
            for (i, reader) in readers.iter().enumerate() {
                match store.user_by_name(reader) {
                    Ok(u) if u.role == Role::Scientist => {}
                    _ => {
                        return Err(ServiceError::invalid(
                            format!("readers[{i}]"),
                            format!("{reader:?} is not a scientist of this server"),
                        ));
                    }
                }
            }
        }
        let snapshot = store.dataset_snapshot(&dataset, dataset.version, None)?;
        let columns: Vec<&str> = snapshot
            .tables
            .iter()
            .flat_map(|t| t.columns.iter().map(String::as_str))
            .chain(milkglass_store::SCORE_COLUMNS)
            .collect();
        for (i, column) in policy.sanitized_columns.iter().enumerate() {
            if !columns.contains(&column.as_str()) {
                return Err(ServiceError::invalid(
                    format!("policy.sanitized_columns[{i}]"),
                    format!("no table of dataset {name:?} has a column {column:?}"),
                ));
            }
        }
        if let Some(unit) = &spec.unit {
            let frames = snapshot.tables.iter().find(|t| t.name == "frames");
            let column = milkglass_store::metadata_column(unit);
            if !frames.is_some_and(|f| column.as_ref().is_some_and(|c| f.columns.contains(c))) {
                return Err(ServiceError::invalid("unit", format!("dataset {name:?} has no metadata key {unit:?}")));
            }
        }
        Ok(store.publish_dataset(&dataset, &user, &policy, spec.readers.as_deref(), spec.unit.as_deref())?)
    })
    .await
}

/// The dataset's publication, for the project's members.
pub fn publication(
    services: &Services,
    user: &User,
    project: &str,
    name: &str,
) -> ServiceResult<Option<DatasetPublication>> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Viewer)?;
    Ok(services.store.dataset_publication(&dataset)?)
}

/// Withdraws the publication; the project's owners only.
pub fn unpublish(services: &Services, user: &User, project: &str, name: &str) -> ServiceResult<()> {
    let (_, dataset) = access::dataset(&services.store, user, project, name, ProjectRole::Owner)?;
    Ok(services.store.unpublish_dataset(&dataset)?)
}
