//! The privacy guard.
//!
//! A query arrives as SQL. The guard plans it with DataFusion against the tables the
//! caller may read, rewrites the optimized plan so that every output row carries how
//! many distinct rows of each guarded table stand behind it ([`track`]), runs it,
//! and only then decides, against each table's policy, whether the result may leave.
//! Nothing is returned before the decision.

mod lineage;
mod track;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use datafusion::catalog::TableProvider;
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use milkglass_core::{Policy, Rule, UnsafeHandling};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use track::{Hidden, Level, Tracker};

/// Name of the row-id column every stored guarded table carries last. Callers never see it.
pub const ROW_ID: &str = "__mg_row";

/// A guarded table as the guard needs it.
pub struct ProtectedTable {
    pub name: String,
    pub policy: Policy,
    /// The table as callers see it: every column but [`ROW_ID`].
    pub visible: Arc<dyn TableProvider>,
    /// The same rows with [`ROW_ID`] as the last column.
    pub internal: Arc<dyn TableProvider>,
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
}

/// A planned query, ready to run.
pub struct Prepared {
    state: SessionState,
    /// The optimized plan as the caller wrote it.
    original: LogicalPlan,
    /// The plan with hidden counts, when the guard could analyse it.
    rewritten: Option<LogicalPlan>,
    hidden: Vec<Hidden>,
    occurrences: Vec<String>,
    pub findings: Vec<Finding>,
    /// Output columns that carry a sanitized column, returned as nulls.
    masked: Vec<usize>,
    /// Guarded tables the query reads, each once, sorted.
    pub tables: Vec<String>,
    /// The result's column names.
    pub columns: Vec<String>,
}

/// A query's result, held back until the decision.
pub struct Outcome {
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// For each guarded table read: the fewest of its rows any result row stands for
    /// (absent when the result has no rows, or the plan could not be analysed).
    pub smallest_group: BTreeMap<String, u64>,
}

impl Outcome {
    /// The fewest source rows any result row stands for, over every guarded table.
    pub fn smallest(&self) -> Option<u64> {
        self.smallest_group.values().min().copied()
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
/// guarded rewrite. Refuses anything but one SELECT before planning.
pub async fn prepare(sql: &str, tables: Vec<ProtectedTable>) -> Result<Prepared, GuardError> {
    check_single_select(sql)?;
    if sql.to_ascii_lowercase().contains("__mg") {
        return Err(GuardError::Invalid("names starting with __mg are reserved for milkglass".into()));
    }
    let config = SessionConfig::new()
        .with_information_schema(false)
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false);
    let ctx = SessionContext::new_with_config(config);
    let mut by_name = HashMap::new();
    for table in tables {
        ctx.register_table(table.name.as_str(), table.visible.clone())
            .map_err(|e| GuardError::Invalid(e.to_string()))?;
        by_name.insert(table.name.clone(), table);
    }
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let frame =
        ctx.sql_with_options(sql, options).await.map_err(|e| GuardError::Invalid(clean_error(&e.to_string())))?;
    let (state, plan) = frame.into_parts();
    let original = state.optimize(&plan).map_err(|e| GuardError::Invalid(clean_error(&e.to_string())))?;
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

    let has_join =
        datafusion::common::tree_node::TreeNode::exists(&original, |node| Ok(matches!(node, LogicalPlan::Join(_))))
            .unwrap_or(true);
    let mut tracker = Tracker::new(&by_name, has_join);
    let tracked = tracker.track(&original);
    findings.append(&mut tracker.findings);
    let mut occurrences = std::mem::take(&mut tracker.occurrences);
    let (rewritten, hidden) = match tracked {
        Ok(t) => (Some(t.plan), t.hidden),
        Err(reason) => {
            findings.push(Finding::Unanalysable { reason });
            (None, Vec::new())
        }
    };
    // Tables read anywhere, even where the rewrite stopped early.
    let _ = datafusion::common::tree_node::TreeNode::apply(&original, |node| {
        if let LogicalPlan::TableScan(scan) = node
            && by_name.contains_key(scan.table_name.table())
        {
            occurrences.push(scan.table_name.table().to_string());
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    let mut tables: Vec<String> = occurrences.clone();
    tables.sort();
    tables.dedup();
    findings.dedup();
    Ok(Prepared { state, original, rewritten, hidden, occurrences, findings, masked, tables, columns })
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
/// nothing to a data scientist.
fn clean_error(message: &str) -> String {
    let mut text = message;
    for prefix in ["Error during planning: ", "SQL error: ", "Schema error: ", "This feature is not implemented: "] {
        text = text.trim_start_matches(prefix);
    }
    text.to_string()
}

impl Prepared {
    /// Runs the query and holds the result back with the counts the decision needs.
    pub async fn execute(&self) -> Result<Outcome, GuardError> {
        let plan = self.rewritten.as_ref().unwrap_or(&self.original);
        // The plan is already optimized (the rewrite starts from the optimized plan and
        // keeps its shape), so it goes straight to the physical planner.
        let physical = self
            .state
            .query_planner()
            .create_physical_plan(plan, &self.state)
            .await
            .map_err(|e| GuardError::Execution(e.to_string()))?;
        let batches = datafusion::physical_plan::collect(physical, self.state.task_ctx())
            .await
            .map_err(|e| GuardError::Execution(e.to_string()))?;
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let mut smallest_group = BTreeMap::new();
        if self.rewritten.is_some() && rows > 0 {
            for h in &self.hidden {
                let smallest = match h.level {
                    Level::Row { .. } => Some(1),
                    Level::Group { .. } => min_count(&batches, &h.column()),
                };
                if let Some(n) = smallest {
                    let table = &self.occurrences[h.occurrence];
                    let entry = smallest_group.entry(table.clone()).or_insert(n);
                    *entry = (*entry).min(n);
                }
            }
        }
        let batches = batches
            .into_iter()
            .map(|b| self.visible_part(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| GuardError::Execution(e.to_string()))?;
        Ok(Outcome { batches, rows, smallest_group })
    }

    /// The caller's columns of a result batch, with sanitized ones replaced by nulls.
    fn visible_part(&self, batch: RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
        let schema = batch.schema();
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut columns = Vec::with_capacity(self.columns.len());
        for i in 0..self.columns.len() {
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
        let mut reasons = Vec::new();
        let mut handling: Option<UnsafeHandling> = None;
        for table in &self.tables {
            let Some(policy) = policies.get(table) else { continue };
            let facts = Facts {
                table,
                user,
                allow_extremes: policy.allow_extremes,
                findings: &self.findings,
                smallest: outcome.and_then(|o| o.smallest_group.get(table).copied()),
                ran: outcome.is_some(),
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

/// What is known about one table in one query, to evaluate its rules.
struct Facts<'a> {
    table: &'a str,
    user: &'a str,
    allow_extremes: bool,
    findings: &'a [Finding],
    smallest: Option<u64>,
    ran: bool,
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
                        "column \"{column}\" of table \"{table}\" is sanitized; using it as a {usage} reveals it"
                    ));
                }
                Finding::Revealing { table: t, function } if t == table && !self.allow_extremes => {
                    return Err(format!(
                        "{function} can return one individual's value, which table \"{table}\" does not allow"
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
        match (self.ran, self.smallest) {
            (true, Some(n)) if n < k => Err(format!(
                "each result row must aggregate at least {k} rows of table \"{table}\"; the smallest group here has {n}"
            )),
            (true, _) => Ok(()),
            (false, _) => Err(format!("each result row must aggregate at least {k} rows of table \"{table}\"")),
        }
    }
}

fn min_count(batches: &[RecordBatch], column: &str) -> Option<u64> {
    let mut smallest: Option<i64> = None;
    for batch in batches {
        let Ok(index) = batch.schema().index_of(column) else { continue };
        let values = batch.column(index);
        let Some(values) = values.as_primitive_opt::<Int64Type>() else { continue };
        for i in 0..values.len() {
            if values.is_valid(i) {
                let v = values.value(i);
                smallest = Some(smallest.map_or(v, |s| s.min(v)));
            }
        }
    }
    smallest.map(|s| s.max(0) as u64)
}
