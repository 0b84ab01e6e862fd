//! The privacy guard.
//!
//! A query arrives as SQL. The guard plans it with DataFusion against the tables the
//! caller may read, where every sanitized column reads as NULL ([`sanitize`]) and
//! data-dependent runtime errors read as NULL too ([`no_errors`]). It rewrites the
//! optimized plan so that every output row carries how many distinct rows of each
//! guarded table determine it ([`track`]), runs it within memory and time limits, and
//! only then decides, against each table's policy, whether the result may leave.
//! Nothing is returned before the decision; what the guard does not understand is
//! unsafe.

mod coverage;
pub mod dp;
mod dp_bound;
mod lineage;
mod no_errors;
mod sanitize;
mod track;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::SessionState;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, Projection, TableScan};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use milkglass_core::{Policy, Rule, UnsafeHandling};
use sanitize::NullingTable;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use track::{Hidden, Level, RowSet, SideCheck, Tracker};

pub use arrow::datatypes::DataType;
pub use coverage::{Coverage, closest};
pub use datafusion::common::TableReference;

/// Name of the row-id column every stored guarded table carries last. Callers never see it.
pub const ROW_ID: &str = "__mg_row";

/// A guarded table as the guard needs it.
pub struct ProtectedTable {
    /// The table's identity in decisions, audit entries and coverage: unique per query.
    pub name: String,
    /// How SQL names it: `titanic`, or `shapes.labels` for a dataset's table.
    pub reference: TableReference,
    pub policy: Policy,
    /// The table as callers see it: every column but [`ROW_ID`].
    pub visible: Arc<dyn TableProvider>,
    /// The same rows with [`ROW_ID`] as the last column.
    pub internal: Arc<dyn TableProvider>,
    /// How many rows the table holds; their ids are `0..rows`.
    pub rows: u64,
    /// Whether rows share ids: a dataset table's id is its row's unit (its frame, or its
    /// frame's driver), so several rows carry one id, `rows` counts units, and every count
    /// the guard takes of the table is of distinct ids.
    pub shared_ids: bool,
}

/// Something the static analysis found that a policy may forbid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// A sanitized column reaches an output column; its values are replaced by nulls.
    Sanitized { table: String, column: String, output: String },
    /// A sanitized column is used as a filter, join, group or sort key: that reveals it.
    SanitizedKey { table: String, column: String, usage: String },
    /// A function that returns one individual's value reads the table.
    Revealing { table: String, function: String },
    /// An aggregate's argument over individual rows uses a function that can single
    /// rows out (turn a row's identity into a 0/1 weight), which no count can see.
    Indicator { table: String, function: String },
    /// The plan has a shape the guard cannot analyse.
    Unanalysable { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Not a single SELECT: DDL, DML, COPY, SET, several statements...
    #[error("{0}")]
    NotAQuery(String),
    /// SQL that does not parse or plan: syntax, unknown tables or columns.
    #[error("{0}")]
    Invalid(String),
    /// The query failed while running. The message is for the audit log only: it may
    /// quote data (a failed cast shows the value), so callers get a generic text.
    #[error("the query failed while running")]
    Execution(String),
    /// The query ran into a resource limit and was stopped; the message says which.
    #[error("{0}")]
    Stopped(String),
    /// Refused from the plan alone (differential privacy's query shapes).
    #[error("{0}")]
    Refused(String),
}

/// What one query may use. The server bounds how many run at once; each one is
/// bounded here.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Memory for operators that buffer (joins, sorts, aggregations): past it they
    /// spill where they can and the query stops where they cannot.
    pub memory_bytes: usize,
    /// Wall-clock time for planning and running; past it the query is cancelled.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_bytes: 2 << 30, time: Duration::from_secs(60) }
    }
}

/// A planned query, ready to run.
pub struct Prepared {
    state: SessionState,
    limits: Limits,
    /// The optimized plan as the caller wrote it (sanitized columns already NULL).
    original: LogicalPlan,
    /// The plan with hidden counts, when the guard could analyse it. Its output is the
    /// caller's columns, in the original order and found by identity, then `hidden`.
    rewritten: Option<LogicalPlan>,
    hidden: Vec<Hidden>,
    /// Row sets to compare when one table is read more than once.
    row_sets: Vec<RowSet>,
    /// Scalar subqueries' plans with their own counts, which must pass too.
    side_checks: Vec<SideCheck>,
    occurrences: Vec<String>,
    /// Each guarded table's row count, for whole-table coverage.
    table_rows: HashMap<String, u64>,
    pub findings: Vec<Finding>,
    /// Output columns that carry a sanitized column, returned as nulls.
    masked: Vec<usize>,
    /// Guarded tables the query reads, each once, sorted.
    pub tables: Vec<String>,
    /// The result's column names.
    pub columns: Vec<String>,
    /// Set when the query reads a table with a differential-privacy policy: how the DP mode
    /// answers it, or why it cannot. Such a query is never answered any other way.
    pub dp: Option<Result<dp::DpQuery, String>>,
}

/// A query's result, held back until the decision.
pub struct Outcome {
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// For each guarded table read: the fewest of its rows that determine any value of
    /// any result row (absent when the result has no rows, or the plan could not be
    /// analysed). Exact, for the owner's audit log; callers only learn "fewer than".
    pub smallest_group: BTreeMap<String, u64>,
    /// What that smallest count counts ("the group", "the rows that enter avg", ...).
    smallest_what: BTreeMap<String, std::sync::Arc<str>>,
    /// For each table read more than once: the fewest rows by which two of its
    /// occurrences' row sets differ, when they differ at all.
    pub closest_occurrences: BTreeMap<String, u64>,
    /// For each guarded table whose rows entered an aggregation: which rows did, over
    /// every occurrence. The server remembers it once the answer is released.
    pub coverage: BTreeMap<String, Coverage>,
    /// For each table: the fewest rows by which this answer's coverage differs from an
    /// earlier answer's, when the server compared them ([`Outcome::compare_with_earlier`]).
    pub closest_earlier: BTreeMap<String, u64>,
}

impl Outcome {
    /// The fewest source rows any result row stands for, over every guarded table.
    pub fn smallest(&self) -> Option<u64> {
        self.smallest_group.values().min().copied()
    }

    /// Compares this answer's coverage of `table` with earlier answers' (the same
    /// analyst's or pool's), so that the decision refuses a query whose rows differ
    /// from an earlier one's by fewer than the table's minimum.
    pub fn compare_with_earlier<'a>(&mut self, table: &str, earlier: impl IntoIterator<Item = &'a Coverage>) {
        let Some(current) = self.coverage.get(table) else { return };
        if let Some(d) = closest(current, earlier) {
            let entry = self.closest_earlier.entry(table.to_string()).or_insert(u64::MAX);
            *entry = (*entry).min(d);
        }
    }
}

/// What may happen to a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// In every table's safe zone.
    Safe,
    /// Outside some table's safe zone; `handling` is the strictest of those tables'.
    Unsafe { handling: UnsafeHandling, reasons: Vec<String> },
}

impl Decision {
    /// The explanation a data scientist reads.
    pub fn explanation(&self) -> String {
        match self {
            Decision::Safe => "Allowed: every result row is within the tables' policies.".into(),
            Decision::Unsafe { reasons, .. } => format!("Refused: {}.", reasons.join("; ")),
        }
    }
}

/// Plans `sql` against `tables` (only these exist for the query) and prepares the
/// guarded rewrite, with the default [`Limits`]. Refuses anything but one SELECT
/// before planning.
pub async fn prepare(sql: &str, tables: Vec<ProtectedTable>) -> Result<Prepared, GuardError> {
    prepare_within(sql, tables, Limits::default()).await
}

/// The session's defaults, which a bare table name resolves under.
const DEFAULT_CATALOG: &str = "datafusion";
const DEFAULT_SCHEMA: &str = "public";

/// The tables of one query, by identity and by the reference SQL resolves to.
#[derive(Default)]
pub(crate) struct Tables {
    by_name: HashMap<String, ProtectedTable>,
    /// Resolved (catalog, schema, table) to the table's name.
    by_reference: HashMap<(String, String, String), String>,
}

fn resolved(reference: &TableReference) -> (String, String, String) {
    let r = reference.clone().resolve(DEFAULT_CATALOG, DEFAULT_SCHEMA);
    (r.catalog.to_string(), r.schema.to_string(), r.table.to_string())
}

impl Tables {
    /// Two tables under one identity, or one SQL name for two tables, would let one
    /// table's policy decide about the other: refused.
    fn insert(&mut self, table: ProtectedTable) -> Result<(), GuardError> {
        let key = resolved(&table.reference);
        if self.by_name.contains_key(&table.name) || self.by_reference.contains_key(&key) {
            return Err(GuardError::Invalid(format!(
                "two tables you may read are both named {}; ask an admin to rename one",
                table.reference
            )));
        }
        self.by_reference.insert(key, table.name.clone());
        self.by_name.insert(table.name.clone(), table);
        Ok(())
    }

    /// The table a scan reads, by whatever spelling the query used (`t`, `public.t`,
    /// `datafusion.public.t`). `None` for a scan of something that is not a guarded table;
    /// the analyses treat such a scan as one they cannot check.
    pub(crate) fn scanned(&self, scan: &TableScan) -> Option<(&str, &ProtectedTable)> {
        let name = self.by_reference.get(&resolved(&scan.table_name))?;
        self.by_name.get(name).map(|t| (name.as_str(), t))
    }
}

/// Registers a table under its reference, creating its catalog and schema as needed.
fn register(ctx: &SessionContext, table: &ProtectedTable) -> Result<(), GuardError> {
    use datafusion::catalog::{MemoryCatalogProvider, MemorySchemaProvider};
    let (catalog, schema, _) = resolved(&table.reference);
    let invalid = |e: datafusion::error::DataFusionError| GuardError::Invalid(e.to_string());
    let catalog_provider = match ctx.catalog(&catalog) {
        Some(provider) => provider,
        None => {
            ctx.register_catalog(&catalog, Arc::new(MemoryCatalogProvider::new()));
            ctx.catalog(&catalog).ok_or_else(|| GuardError::Invalid(format!("catalog {catalog} vanished")))?
        }
    };
    if catalog_provider.schema(&schema).is_none() {
        catalog_provider.register_schema(&schema, Arc::new(MemorySchemaProvider::new())).map_err(invalid)?;
    }
    ctx.register_table(table.reference.clone(), table.visible.clone()).map_err(invalid)?;
    Ok(())
}

/// The tables a query names, as written, for a caller that provides tables on demand.
pub fn referenced_tables(sql: &str) -> Result<Vec<TableReference>, GuardError> {
    let statements = DFParser::parse_sql(sql).map_err(|e| GuardError::Invalid(clean_error(&e.to_string())))?;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false),
    );
    let mut found = Vec::new();
    for statement in &statements {
        let references =
            ctx.state().resolve_table_references(statement).map_err(|e| GuardError::Invalid(e.to_string()))?;
        found.extend(references);
    }
    Ok(found)
}

/// The identities of the tables among `tables` that `sql` names, for a statement refused
/// before it could be planned (DDL, several statements, a syntax error), so that an attempt
/// on a table is the table's business too. A statement that does not parse, or whose parse
/// names none of them (not every statement's names are table references to the parser),
/// names the tables whose bare names it has as words.
pub fn tables_named(sql: &str, tables: &[(String, TableReference)]) -> Vec<String> {
    let mut named: Vec<String> = Vec::new();
    for reference in referenced_tables(sql).unwrap_or_default().iter().map(resolved) {
        for (name, _) in tables.iter().filter(|(_, r)| resolved(r) == reference) {
            if !named.contains(name) {
                named.push(name.clone());
            }
        }
    }
    if named.is_empty() {
        use datafusion::sql::sqlparser::{dialect::GenericDialect, tokenizer::Token, tokenizer::Tokenizer};
        let words: Vec<String> = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| if let Token::Word(w) = t { Some(w.value) } else { None })
            .collect();
        for (name, reference) in tables {
            let bare = matches!(reference, TableReference::Bare { .. });
            if bare && words.iter().any(|w| w == reference.table()) && !named.contains(name) {
                named.push(name.clone());
            }
        }
    }
    named
}

/// [`prepare`], with the limits the query will run under.
pub async fn prepare_within(sql: &str, tables: Vec<ProtectedTable>, limits: Limits) -> Result<Prepared, GuardError> {
    check_single_select(sql)?;
    if sql.to_ascii_lowercase().contains("__mg") {
        return Err(GuardError::Invalid("names starting with __mg are reserved for milkglass".into()));
    }
    let config = SessionConfig::new()
        .with_information_schema(false)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(limits.memory_bytes)))
        .build_arc()
        .map_err(|e| GuardError::Invalid(e.to_string()))?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // `COUNT(DISTINCT x)` stays one aggregate over individual rows, where the guard
    // counts the rows that enter it, instead of a GROUP BY x under a COUNT.
    ctx.remove_optimizer_rule("single_distinct_aggregation_to_group_by");
    let mut by_name = Tables::default();
    let mut dp_tables: HashMap<String, dp::DpTable> = HashMap::new();
    for table in tables {
        if let Some(policy) = &table.policy.dp {
            dp_tables.insert(
                table.name.clone(),
                dp::DpTable {
                    reference: table.reference.clone(),
                    policy: policy.clone(),
                    sanitized: table.policy.sanitized_columns.clone(),
                    internal: table.internal.clone(),
                    unique_row_ids: !table.shared_ids,
                },
            );
        }
        // Sanitized columns read as NULL from here on, for every plan and every handling.
        let table = ProtectedTable {
            visible: NullingTable::wrap(table.visible, &table.policy.sanitized_columns),
            internal: NullingTable::wrap(table.internal, &table.policy.sanitized_columns),
            ..table
        };
        register(&ctx, &table)?;
        by_name.insert(table)?;
    }
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let frame =
        ctx.sql_with_options(sql, options).await.map_err(|e| GuardError::Invalid(clean_error(&e.to_string())))?;
    let (state, plan) = frame.into_parts();
    let optimized = state.optimize(&plan).map_err(|e| GuardError::Invalid(clean_error(&e.to_string())))?;
    let original =
        no_errors::without_data_errors(optimized).map_err(|e| GuardError::Invalid(clean_error(&e.to_string())))?;
    let columns = original.schema().fields().iter().map(|f| f.name().clone()).collect();

    let mut lineage = lineage::LineageAnalysis::new(&by_name);
    let output_lineage = lineage.lineage(&original);
    let mut findings = std::mem::take(&mut lineage.findings);
    let mut masked = Vec::new();
    for (i, sources) in output_lineage.iter().enumerate() {
        for (table, column) in sources {
            let output = original.schema().field(i).name().clone();
            findings.push(Finding::Sanitized { table: table.clone(), column: column.clone(), output });
        }
        if !sources.is_empty() {
            masked.push(i);
        }
    }

    // Tables read anywhere, subqueries included, once per scan.
    let mut scans: Vec<String> = Vec::new();
    let _ = original.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some((name, _)) = by_name.scanned(scan)
        {
            scans.push(name.to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    let has_join = TreeNode::exists(&original, |node| Ok(matches!(node, LogicalPlan::Join(_)))).unwrap_or(true);
    let read_twice = scans.iter().any(|t| scans.iter().filter(|u| *u == t).count() > 1);
    // Where every table read allows every query (members reading their own dataset), no
    // count could decide anything: the plan runs as it is, without hidden counts.
    let everything_allowed = !scans.is_empty()
        && scans.iter().all(|t| by_name.by_name.get(t).is_some_and(|t| t.policy.safe_zone == Rule::Constant(true)));
    let mut tracker = Tracker::new(&by_name, has_join || read_twice);
    let mut tracked =
        if everything_allowed { Ok(track::Tracked::plain(original.clone())) } else { tracker.track(&original) };
    if !everything_allowed && !tracker.with_row_ids && tracker.row_sets.iter().any(|set| !set.whole) {
        // Some rows reach an aggregation through a filter or a limit: carry real ids, so
        // that the answer's coverage can be recorded and compared.
        tracker = Tracker::new(&by_name, true);
        tracked = tracker.track(&original);
    }
    let tracked = tracked.and_then(|t| with_callers_columns(&original, t));
    findings.append(&mut tracker.findings);
    let occurrences = std::mem::take(&mut tracker.occurrences);
    let row_sets = std::mem::take(&mut tracker.row_sets);
    let side_checks = std::mem::take(&mut tracker.side_checks);
    let (rewritten, hidden) = match tracked {
        Ok((plan, hidden)) => (Some(plan), hidden),
        Err(reason) => {
            findings.push(Finding::Unanalysable { reason });
            (None, Vec::new())
        }
    };
    // A DP table decides the whole query: it is answered by the DP mode or not at all.
    let dp = match scans.iter().find(|t| dp_tables.contains_key(*t)) {
        None => None,
        Some(name) => {
            // Quantiles can return one row's value, so the threshold guard flags them; the DP
            // mode answers them with a mechanism of its own (or refuses them, from the plan).
            let sanitized_use = findings.iter().any(|f| match f {
                Finding::Unanalysable { .. } => false,
                Finding::Revealing { function, .. } => !dp::QUANTILE_FUNCTIONS.contains(&function.as_str()),
                _ => true,
            });
            Some(if sanitized_use {
                Err(format!(
                    "Refused under differential privacy: the query uses a sanitized column or a function that singles rows out ({})",
                    findings.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>().join("; ")
                ))
            } else {
                dp::analyse(&plan, name, &dp_tables[name]).map_err(|e| e.to_string())
            })
        }
    };
    let table_rows = by_name.by_name.iter().map(|(name, t)| (name.clone(), t.rows)).collect();
    let mut tables = scans;
    tables.extend(occurrences.iter().cloned());
    tables.sort();
    tables.dedup();
    let mut unique = Vec::with_capacity(findings.len());
    for finding in findings {
        if !unique.contains(&finding) {
            unique.push(finding);
        }
    }
    Ok(Prepared {
        state,
        limits,
        original,
        rewritten,
        hidden,
        row_sets,
        side_checks,
        occurrences,
        table_rows,
        findings: unique,
        masked,
        tables,
        columns,
        dp,
    })
}

/// Ends the rewritten plan with exactly the caller's columns, found by their identity
/// (qualifier and name) in the original's order, then the hidden counts; checks that
/// the result is what the caller asked for, or fails.
fn with_callers_columns(original: &LogicalPlan, tracked: track::Tracked) -> Result<(LogicalPlan, Vec<Hidden>), String> {
    let wanted = original.schema();
    let mut exprs: Vec<Expr> =
        wanted.iter().map(|(qualifier, field)| Expr::Column(Column::new(qualifier.cloned(), field.name()))).collect();
    exprs.extend(tracked.hidden.iter().map(|h| Expr::Column(Column::new_unqualified(&h.name))));
    let plan = Projection::try_new(exprs, Arc::new(tracked.plan))
        .map(LogicalPlan::Projection)
        .map_err(|e| format!("the rewritten plan lost a column ({e})"))?;
    let got = plan.schema();
    if got.fields().len() != wanted.fields().len() + tracked.hidden.len() {
        return Err("the rewritten plan's columns do not match the query's".into());
    }
    for (i, (qualifier, field)) in wanted.iter().enumerate() {
        let (q, f) = got.qualified_field(i);
        if q != qualifier || f.name() != field.name() || f.data_type() != field.data_type() {
            return Err(format!("the rewritten plan's column {} is not the query's {}", f.name(), field.name()));
        }
    }
    for (i, h) in tracked.hidden.iter().enumerate() {
        if got.field(wanted.fields().len() + i).name() != &h.name {
            return Err("the rewritten plan's hidden columns are out of place".into());
        }
    }
    Ok((plan, tracked.hidden))
}

fn check_single_select(sql: &str) -> Result<(), GuardError> {
    let statements = DFParser::parse_sql(sql).map_err(|e| GuardError::Invalid(format!("SQL syntax error: {e}")))?;
    if statements.len() != 1 {
        return Err(GuardError::NotAQuery(format!("send exactly one SELECT statement; this has {}", statements.len())));
    }
    match &statements[0] {
        DFStatement::Statement(statement) if matches!(**statement, Statement::Query(_)) => Ok(()),
        DFStatement::Statement(statement) => {
            let kind = statement.to_string().split_whitespace().next().unwrap_or("this statement").to_ascii_uppercase();
            Err(GuardError::NotAQuery(format!("only SELECT queries are allowed; {kind} statements are refused")))
        }
        other => {
            let kind = other.to_string().split_whitespace().next().unwrap_or("this statement").to_ascii_uppercase();
            Err(GuardError::NotAQuery(format!("only SELECT queries are allowed; {kind} statements are refused")))
        }
    }
}

/// DataFusion errors carry a category prefix ("Error during planning: ") that means
/// nothing to a data scientist. Their "Did you mean 'cos'?" line is dropped too: it picks one
/// of the equally close function names in hash-map order, so the same query could be told
/// 'cos' once and 'least' the next time (found by the `guard` fuzz target). A refusal is a
/// function of the query and the schema alone.
fn clean_error(message: &str) -> String {
    let mut text = message;
    for prefix in ["Error during planning: ", "SQL error: ", "Schema error: ", "This feature is not implemented: "] {
        text = text.trim_start_matches(prefix);
    }
    text.lines().filter(|line| !line.trim_start().starts_with("Did you mean")).collect::<Vec<_>>().join("\n")
}

impl Prepared {
    /// Runs the query and holds the result back with the counts the decision needs.
    /// Stops it at the memory or time limit.
    pub async fn execute(&self) -> Result<Outcome, GuardError> {
        let limit = self.limits.time;
        match tokio::time::timeout(limit, self.execute_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(GuardError::Stopped(format!(
                "the query ran longer than {} s and was stopped; narrow it (filters, fewer joins) and try again",
                limit.as_secs()
            ))),
        }
    }

    async fn execute_unbounded(&self) -> Result<Outcome, GuardError> {
        let plan = self.rewritten.as_ref().unwrap_or(&self.original);
        let batches = self.collect(plan).await?;
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let mut smallest_group = BTreeMap::new();
        let mut smallest_what = BTreeMap::new();
        if self.rewritten.is_some() {
            let mut note = |h: &Hidden, batches: &[RecordBatch]| -> Result<(), GuardError> {
                let smallest = match h.level {
                    Level::Row { .. } if batches.iter().any(|b| b.num_rows() > 0) => Some(1),
                    Level::Row { .. } => None,
                    Level::Group { .. } => min_count(batches, &h.name, h.zero_ok)?,
                };
                if let Some(n) = smallest {
                    let table = &self.occurrences[h.occurrence];
                    let entry = smallest_group.entry(table.clone()).or_insert(u64::MAX);
                    if n < *entry {
                        *entry = n;
                        smallest_what.insert(table.clone(), h.what.clone());
                    }
                }
                Ok(())
            };
            if rows > 0 {
                for h in &self.hidden {
                    note(h, &batches)?;
                }
            }
            // A scalar subquery's value reaches every row, and decides which rows exist:
            // its counts hold whether or not the result has rows.
            for check in &self.side_checks {
                let side = self.collect(&check.plan).await?;
                for h in &check.hidden {
                    note(h, &side)?;
                }
            }
        }
        let (closest_occurrences, coverage) = self.coverage().await?;
        let batches = batches
            .into_iter()
            .map(|b| self.visible_part(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| GuardError::Execution(e.to_string()))?;
        Ok(Outcome {
            batches,
            rows,
            smallest_group,
            smallest_what,
            closest_occurrences,
            coverage,
            closest_earlier: BTreeMap::new(),
        })
    }

    /// Runs a DP query's contributions and releases its noisy core answer, within the
    /// query's time limit.
    pub async fn dp_measure(&self, query: &dp::DpQuery) -> Result<RecordBatch, GuardError> {
        let limit = self.limits.time;
        match tokio::time::timeout(limit, query.measure(&self.state)).await {
            Ok(result) => result,
            Err(_) => Err(GuardError::Stopped(format!(
                "the query ran longer than {} s and was stopped; narrow it and try again",
                limit.as_secs()
            ))),
        }
    }

    async fn collect(&self, plan: &LogicalPlan) -> Result<Vec<RecordBatch>, GuardError> {
        // The plan is already optimized (the rewrite starts from the optimized plan and
        // keeps its shape), so it goes straight to the physical planner.
        let physical =
            self.state.query_planner().create_physical_plan(plan, &self.state).await.map_err(|e| self.failed(e))?;
        datafusion::physical_plan::collect(physical, self.state.task_ctx()).await.map_err(|e| self.failed(e))
    }

    fn failed(&self, e: datafusion::error::DataFusionError) -> GuardError {
        if matches!(e.find_root(), datafusion::error::DataFusionError::ResourcesExhausted(_)) {
            return GuardError::Stopped(format!(
                "the query needed more than {} MiB of memory and was stopped; narrow it (filters, fewer joins) and try again",
                self.limits.memory_bytes >> 20
            ));
        }
        GuardError::Execution(e.to_string())
    }

    /// Each occurrence's rows as they enter its first aggregation: for each table read
    /// more than once, how few rows two occurrences' sets differ by (`SUM(all) -
    /// SUM(all but one)` in one query), and for each table the union of its sets.
    async fn coverage(&self) -> Result<(BTreeMap<String, u64>, BTreeMap<String, Coverage>), GuardError> {
        let mut sets: BTreeMap<&str, Vec<Coverage>> = BTreeMap::new();
        for set in &self.row_sets {
            let table = self.occurrences[set.occurrence].as_str();
            let rows = if set.whole {
                let rows = self.table_rows.get(table).copied().ok_or_else(|| {
                    GuardError::Execution(format!("no row count for table {table}; the guard never guesses"))
                })?;
                Coverage::whole(rows)
            } else {
                self.row_ids(set).await?
            };
            sets.entry(table).or_default().push(rows);
        }
        let mut closest = BTreeMap::new();
        let mut union = BTreeMap::new();
        for (table, sets) in sets {
            for (i, a) in sets.iter().enumerate() {
                for b in &sets[i + 1..] {
                    let differ = a.differs_by(b);
                    if differ > 0 {
                        let entry = closest.entry(table.to_string()).or_insert(u64::MAX);
                        *entry = (*entry).min(differ);
                    }
                }
            }
            let mut all = Coverage::default();
            for set in &sets {
                all.union_with(set);
            }
            union.insert(table.to_string(), all);
        }
        Ok((closest, union))
    }

    /// Runs a row set's plan for its ids alone.
    async fn row_ids(&self, set: &RowSet) -> Result<Coverage, GuardError> {
        let ids = LogicalPlanBuilder::from(set.plan.clone())
            .project(vec![Expr::Column(Column::new_unqualified(&set.id_column))])
            .and_then(|b| b.build())
            .map_err(|e| GuardError::Execution(e.to_string()))?;
        let mut values = Vec::new();
        for batch in self.collect(&ids).await? {
            let Some(column) = batch.column(0).as_primitive_opt::<Int64Type>() else {
                return Err(GuardError::Execution("row ids are not 64-bit integers".into()));
            };
            // Ids are never negative (0..rows); one that is would be a corrupt table.
            for id in column.iter().flatten() {
                values.push(u64::try_from(id).map_err(|_| GuardError::Execution("a negative row id".into()))?);
            }
        }
        Ok(Coverage::from_ids(values))
    }

    /// The caller's columns of a result batch, with sanitized ones replaced by nulls.
    /// The rewritten plan ends with exactly the caller's columns then the hidden ones;
    /// a batch that does not is an error, never a guess.
    fn visible_part(&self, batch: RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
        let schema = batch.schema();
        let n = self.columns.len();
        let expected = n + if self.rewritten.is_some() { self.hidden.len() } else { 0 };
        let names_match = schema.fields().len() == expected
            && schema.fields().iter().take(n).zip(&self.columns).all(|(f, c)| f.name() == c)
            && schema.fields().iter().skip(n).zip(&self.hidden).all(|(f, h)| f.name() == &h.name);
        if !names_match {
            return Err(arrow::error::ArrowError::SchemaError(
                "the guarded result's columns are not the query's; nothing is returned".into(),
            ));
        }
        let mut fields = Vec::with_capacity(n);
        let mut columns = Vec::with_capacity(n);
        for i in 0..n {
            let field = schema.field(i);
            if self.masked.contains(&i) {
                fields.push(field.clone().with_nullable(true));
                columns.push(arrow::array::new_null_array(field.data_type(), batch.num_rows()));
            } else {
                fields.push(field.clone());
                columns.push(batch.column(i).clone());
            }
        }
        RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
    }

    /// The result's schema as callers receive it (sanitized outputs become nullable).
    pub fn output_schema(&self) -> arrow::datatypes::SchemaRef {
        if let Some(Ok(query)) = &self.dp {
            return query.output_schema();
        }
        let fields: Vec<arrow::datatypes::Field> = self
            .original
            .schema()
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() || self.masked.contains(&i)))
            .collect();
        Arc::new(arrow::datatypes::Schema::new(fields))
    }

    /// Output columns returned as nulls because they carry a sanitized column.
    pub fn masked_columns(&self) -> Vec<String> {
        self.masked.iter().map(|&i| self.columns[i].clone()).collect()
    }

    /// Decides what may happen to `outcome` under the tables' policies, for `user`.
    pub fn decide(&self, outcome: Option<&Outcome>, policies: &HashMap<String, Policy>, user: &str) -> Decision {
        self.evaluate(Some(outcome), policies, user)
    }

    /// The decision the plan alone already forces, before anything runs: `Some` when
    /// the query is unsafe whatever the data holds. A query refused here never runs,
    /// so neither its errors nor its running time can depend on guarded data.
    pub fn decide_before_running(&self, policies: &HashMap<String, Policy>, user: &str) -> Option<Decision> {
        match self.evaluate(None, policies, user) {
            Decision::Safe => None,
            unsafe_decision => Some(unsafe_decision),
        }
    }

    /// `outcome`: `None` to evaluate only what the plan tells (counts pass);
    /// `Some(None)` when the query could not run (counts fail).
    fn evaluate(&self, outcome: Option<Option<&Outcome>>, policies: &HashMap<String, Policy>, user: &str) -> Decision {
        let mut reasons = Vec::new();
        let mut handling: Option<UnsafeHandling> = None;
        for table in &self.tables {
            let Some(policy) = policies.get(table) else { continue };
            let facts = Facts {
                table,
                user,
                allow_extremes: policy.allow_extremes,
                findings: &self.findings,
                counts: outcome.map(|o| o.map(|o| TableCounts::of(o, table))),
                analysed: self.rewritten.is_some(),
            };
            if let Err(reason) = facts.satisfies(&policy.safe_zone) {
                reasons.push(reason);
                handling = Some(handling.map_or(policy.unsafe_handling, |h| h.max(policy.unsafe_handling)));
            }
        }
        match handling {
            None => Decision::Safe,
            Some(handling) => Decision::Unsafe { handling, reasons },
        }
    }
}

/// What a run told about one table.
struct TableCounts {
    smallest: Option<u64>,
    what: Option<std::sync::Arc<str>>,
    closest: Option<u64>,
    closest_earlier: Option<u64>,
}

impl TableCounts {
    fn of(outcome: &Outcome, table: &str) -> Self {
        TableCounts {
            smallest: outcome.smallest_group.get(table).copied(),
            what: outcome.smallest_what.get(table).cloned(),
            closest: outcome.closest_occurrences.get(table).copied(),
            closest_earlier: outcome.closest_earlier.get(table).copied(),
        }
    }
}

/// What is known about one table in one query, to evaluate its rules.
struct Facts<'a> {
    table: &'a str,
    user: &'a str,
    allow_extremes: bool,
    findings: &'a [Finding],
    /// `None`: deciding from the plan alone; `Some(None)`: the query did not run.
    counts: Option<Option<TableCounts>>,
    analysed: bool,
}

impl Facts<'_> {
    /// Ok when the rule holds; otherwise why not, in the data scientist's words.
    fn satisfies(&self, rule: &Rule) -> Result<(), String> {
        match rule {
            Rule::Constant(true) => Ok(()),
            Rule::Constant(false) => Err(format!("table \"{}\" allows no queries outside review", self.table)),
            Rule::User { user } if user == self.user => Ok(()),
            Rule::User { user } => Err(format!("only user \"{user}\" may query table \"{}\" this way", self.table)),
            Rule::Aggregation { aggregation } => self.aggregation(aggregation.min_agg_size),
            Rule::AtLeast { at_least } => {
                let failures: Vec<String> = at_least.of.iter().filter_map(|r| self.satisfies(r).err()).collect();
                let passed = at_least.of.len() - failures.len();
                if passed >= at_least.n {
                    Ok(())
                } else {
                    Err(format!("at least {} of these must hold: {}", at_least.n, failures.join(" / ")))
                }
            }
        }
    }

    fn aggregation(&self, k: u64) -> Result<(), String> {
        let table = self.table;
        for finding in self.findings {
            match finding {
                Finding::SanitizedKey { table: t, column, usage } if t == table => {
                    return Err(format!(
                        "column \"{column}\" of table \"{table}\" is sanitized (it reads as NULL); using it as a {usage} is refused"
                    ));
                }
                Finding::Revealing { table: t, function } if t == table && !self.allow_extremes => {
                    return Err(format!(
                        "{function} can return one individual's value, which table \"{table}\" does not allow"
                    ));
                }
                Finding::Indicator { table: t, function } if t == table => {
                    return Err(format!(
                        "an aggregate over rows of table \"{table}\" uses {function}, which can single out rows; \
                         select rows with WHERE or CASE instead, which the guard counts"
                    ));
                }
                Finding::Unanalysable { reason } => {
                    return Err(format!("the guard cannot check this query ({reason}), so it counts as unsafe"));
                }
                _ => {}
            }
        }
        if !self.analysed {
            return Err("the guard cannot check this query, so it counts as unsafe".into());
        }
        let counts = match &self.counts {
            None => return Ok(()),
            Some(None) => {
                return Err(format!("each result row must aggregate at least {k} rows of table \"{table}\""));
            }
            Some(Some(counts)) => counts,
        };
        // Only "fewer than k" leaves: the exact small count would answer a question
        // about a few people (is it 0 or 1?). The owner's audit log has it.
        if let Some(n) = counts.smallest
            && n < k
        {
            let what = counts.what.as_deref().unwrap_or("the group");
            return Err(format!(
                "each result value must be determined by at least {k} rows of table \"{table}\"; \
                 fewer than {k} rows stand behind {what}"
            ));
        }
        if let Some(d) = counts.closest
            && d < k
        {
            return Err(format!(
                "two parts of this query read rows of table \"{table}\" that differ by fewer than {k} rows, \
                 so comparing them would reveal those rows"
            ));
        }
        if let Some(d) = counts.closest_earlier
            && d < k
        {
            return Err(format!(
                "an earlier answer (yours or your pool's) covered rows of table \"{table}\" that differ from \
                 this query's by fewer than {k} rows, so the two answers together would reveal those rows"
            ));
        }
        Ok(())
    }
}

/// The smallest count in `column` over every batch. Zeros are skipped where a zero is
/// no constraint. An absent or mistyped column is an error: the guard never guesses.
fn min_count(batches: &[RecordBatch], column: &str, zero_ok: bool) -> Result<Option<u64>, GuardError> {
    let mut smallest: Option<i64> = None;
    for batch in batches {
        let index = batch
            .schema()
            .index_of(column)
            .map_err(|_| GuardError::Execution(format!("hidden column {column} is missing from the result")))?;
        let Some(values) = batch.column(index).as_primitive_opt::<Int64Type>() else {
            return Err(GuardError::Execution(format!("hidden column {column} is not a 64-bit count")));
        };
        for v in values.iter().flatten() {
            if zero_ok && v == 0 {
                continue;
            }
            smallest = Some(smallest.map_or(v, |s| s.min(v)));
        }
    }
    Ok(smallest.map(|s| s.max(0) as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusals_carry_no_guess_that_changes_from_run_to_run() {
        let message = "Error during planning: Invalid function 'cast'.\nDid you mean 'cos'?";
        assert_eq!(super::clean_error(message), "Invalid function 'cast'.");
        assert_eq!(
            super::clean_error("Schema error: No field named x.\nValid fields are a, b."),
            "No field named x.\nValid fields are a, b."
        );
    }
}
