//! The plan rewrite at the heart of the guard.
//!
//! Every occurrence of a guarded table in a plan gets hidden columns that travel with
//! each row up to the output. Each hidden column has a unique name, and everything
//! about it is looked up by that name, never by position.
//!
//! - Below any aggregation a row carries its source row's id (`Level::Row`): the row
//!   stands for exactly one row of the table.
//! - An aggregation turns ids into counts (`Level::Group`): how many distinct rows of
//!   the table stand behind the output row. It adds one count per thing a value could
//!   depend on: the group, the rows whose argument actually enters each aggregate (not
//!   NULL, passing its FILTER), and each branch of every selector (CASE, NULLIF, a
//!   boolean cast to a number) that shapes an aggregate's argument. A released value
//!   must be determined by at least the policy's minimum in each of these.
//! - A selector defined in a projection below the aggregation travels as a hidden
//!   branch number (`Selector`), and the output columns it shaped remember it by their
//!   identity (`depends`).
//!
//! Counts are exact while rows cannot have been duplicated (no join on the way), and a
//! lower bound otherwise (`COUNT(DISTINCT id)`, `MAX`, `MIN`), so the guard may refuse
//! too much but never allows too little. Steps that drop or mix aggregated rows
//! (filters, limits, joins, windows) first spread the smallest count to every row, so
//! a HAVING or a window frame cannot hide a small group behind a big one. A plan shape
//! the rewrite does not understand is reported as unanalysable, and unanalysable means
//! unsafe.

use crate::{Finding, ROW_ID, Tables};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, max, min, sum};
use datafusion::functions_aggregate::min_max::min_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Case, Distinct, Expr, ExprSchemable, JoinType, LogicalPlan, LogicalPlanBuilder, Operator,
    Projection, TableScan, TableScanBuilder, Window, WindowFunctionDefinition, lit,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

/// What a hidden column means for the rows that carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// Each row is one source row (the column is its id). `unique`: no source row
    /// appears in two output rows.
    Row { unique: bool },
    /// Each row stands for a set of source rows (the column counts them, exactly or as
    /// a lower bound). `disjoint`: no source row is in two rows' sets.
    Group { disjoint: bool },
}

#[derive(Debug, Clone)]
pub(crate) struct Hidden {
    pub occurrence: usize,
    pub level: Level,
    /// The column's unique name (`__mg_...`).
    pub name: String,
    /// What the count counts, for the data scientist: "the group", "the rows that
    /// enter avg(Age)", "branch 2 of CASE ...".
    pub what: Arc<str>,
    /// A count of zero is no constraint: the branch of a division guard the guard
    /// itself inserted (`x / NULLIF(y, 0)`), which no row taking changes nothing.
    pub zero_ok: bool,
}

/// A selector evaluated below an aggregation: each row carries which branch it took.
#[derive(Debug, Clone)]
pub(crate) struct Selector {
    pub name: String,
    pub branches: usize,
    pub what: Arc<str>,
    pub zero_ok: bool,
}

pub(crate) struct Tracked {
    pub plan: LogicalPlan,
    pub hidden: Vec<Hidden>,
    pub selectors: Vec<Selector>,
    /// The selectors each output column's value depends on, by the column's identity.
    pub depends: HashMap<Column, BTreeSet<String>>,
    /// Output columns whose value was computed with a function that can single out
    /// rows (an indicator), with that function's description.
    pub taints: HashMap<Column, String>,
}

impl Tracked {
    pub(crate) fn plain(plan: LogicalPlan) -> Self {
        Tracked { plan, hidden: Vec::new(), selectors: Vec::new(), depends: HashMap::new(), taints: HashMap::new() }
    }

    /// Names of every column the guard added, hidden counts and selectors alike.
    fn carried(&self) -> Vec<String> {
        self.hidden.iter().map(|h| h.name.clone()).chain(self.selectors.iter().map(|s| s.name.clone())).collect()
    }

    fn has_rows(&self) -> bool {
        self.hidden.iter().any(|h| matches!(h.level, Level::Row { .. }))
    }

    fn has_groups(&self) -> bool {
        self.hidden.iter().any(|h| matches!(h.level, Level::Group { .. }))
    }

    /// The caller's columns of this plan, as column expressions, in order.
    fn visible_columns(&self) -> Vec<Expr> {
        let carried = self.carried();
        self.plan
            .schema()
            .iter()
            .filter(|(_, field)| !carried.contains(field.name()))
            .map(|(qualifier, field)| Expr::Column(Column::new(qualifier.cloned(), field.name())))
            .collect()
    }
}

/// Walks a plan bottom-up, rewriting it to carry hidden columns and noting findings.
pub(crate) struct Tracker<'a> {
    tables: &'a Tables,
    pub with_row_ids: bool,
    /// The guarded table of each occurrence, by occurrence number.
    pub occurrences: Vec<String>,
    pub findings: Vec<Finding>,
    /// For each occurrence, the plan of its rows as they enter their first aggregation
    /// (with the row id column): what the differencing check compares.
    pub row_sets: Vec<RowSet>,
    pub side_checks: Vec<SideCheck>,
    next_name: usize,
}

type Unanalysable = String;

/// A plan run beside the query whose counts must pass too (a scalar subquery's).
pub(crate) struct SideCheck {
    pub plan: LogicalPlan,
    pub hidden: Vec<Hidden>,
}

/// The rows of one occurrence as they enter its first aggregation.
pub(crate) struct RowSet {
    pub occurrence: usize,
    /// The row id column in `plan` (a constant 1 when the tracker carries no ids).
    pub id_column: String,
    pub plan: LogicalPlan,
    /// Every row of the table enters (no filter, join or limit on the way): the set is
    /// known without running anything.
    pub whole: bool,
}

/// Whether `plan` passes on every row of the one table it scans: only projections and
/// aliases over a scan without pushed-down filters or a fetch.
fn reads_every_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(p) => reads_every_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => reads_every_row(&a.input),
        LogicalPlan::TableScan(scan) => scan.filters.is_empty() && scan.fetch.is_none(),
        _ => false,
    }
}

/// Aggregate functions whose result is not one individual's value. Everything else
/// (min, max, first_value, array_agg, string_agg, median, ...) counts as revealing.
const SAFE_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "var",
    "var_samp",
    "var_pop",
    "var_population",
    "var_sample",
    "variance",
    "variance_samp",
    "variance_pop",
    "covar",
    "covar_samp",
    "covar_pop",
    "corr",
    "regr_count",
    "regr_slope",
    "regr_intercept",
    "regr_r2",
    "regr_avgx",
    "regr_avgy",
    "regr_sxx",
    "regr_syy",
    "regr_sxy",
    "approx_distinct",
];

/// Functions that may shape an aggregate's argument over individual rows: they cannot
/// turn a row's identity into an indicator (0 for everyone but one row).
const SMOOTH_FUNCTIONS: &[&str] = &["abs"];

fn hidden_col(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The column an expression's reference resolves to in `schema`, with its qualifier.
fn resolve(schema: &DFSchema, column: &Column) -> Option<Column> {
    let (qualifier, field) = schema.qualified_field_with_name(column.relation.as_ref(), &column.name).ok()?;
    Some(Column::new(qualifier.cloned(), field.name()))
}

impl<'a> Tracker<'a> {
    /// `with_row_ids`: carry real row ids. Only a join can put one source row into two
    /// rows, and only row sets that are not the whole table need their ids recorded; in
    /// other plans a constant 1 counts the same and spares reading the id column.
    pub fn new(tables: &'a Tables, with_row_ids: bool) -> Self {
        Tracker {
            tables,
            with_row_ids,
            occurrences: Vec::new(),
            findings: Vec::new(),
            row_sets: Vec::new(),
            side_checks: Vec::new(),
            next_name: 0,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.next_name += 1;
        format!("__mg_{prefix}{}", self.next_name)
    }

    /// Guarded tables read anywhere under `plan` (including inside subqueries).
    fn guarded_tables_in(&self, plan: &LogicalPlan) -> Vec<String> {
        let mut found = Vec::new();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && let Some((name, _)) = self.tables.scanned(scan)
            {
                found.push(name.to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        found
    }

    pub fn track(&mut self, plan: &LogicalPlan) -> Result<Tracked, Unanalysable> {
        self.subqueries(plan)?;
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan),
            LogicalPlan::Projection(p) => {
                let input = self.track(&p.input)?;
                self.projection(input, &p.expr, &p.schema)
            }
            LogicalPlan::Sort(sort) if sort.fetch.is_some() => {
                // ORDER BY ... LIMIT drops rows like a filter does.
                let input = self.track(&sort.input)?;
                let input = self.spread_if_overlapping(input)?;
                let new = plan.with_new_exprs(plan.expressions(), vec![input.plan]).map_err(|e| e.to_string())?;
                Ok(Tracked { plan: new, ..input })
            }
            LogicalPlan::Sort(_) | LogicalPlan::Repartition(_) => {
                let input = self.track(plan.inputs()[0])?;
                let new = plan.with_new_exprs(plan.expressions(), vec![input.plan]).map_err(|e| e.to_string())?;
                Ok(Tracked { plan: new, ..input })
            }
            LogicalPlan::Filter(_) | LogicalPlan::Limit(_) => {
                // Both drop rows: over aggregated rows, count the ones dropped too.
                let input = self.track(plan.inputs()[0])?;
                let input = self.spread_if_overlapping(input)?;
                let new = plan.with_new_exprs(plan.expressions(), vec![input.plan]).map_err(|e| e.to_string())?;
                Ok(Tracked { plan: new, ..input })
            }
            LogicalPlan::SubqueryAlias(_) => {
                let input = self.track(plan.inputs()[0])?;
                let before = input.plan.schema().columns();
                let new = plan.with_new_exprs(plan.expressions(), vec![input.plan]).map_err(|e| e.to_string())?;
                // An alias re-qualifies every column, the i-th of its input as its own i-th.
                let renamed: HashMap<Column, Column> = before.into_iter().zip(new.schema().columns()).collect();
                let depends =
                    input.depends.into_iter().filter_map(|(c, d)| renamed.get(&c).map(|n| (n.clone(), d))).collect();
                let taints =
                    input.taints.into_iter().filter_map(|(c, t)| renamed.get(&c).map(|n| (n.clone(), t))).collect();
                Ok(Tracked { plan: new, depends, taints, ..input })
            }
            LogicalPlan::Window(w) => {
                let input = self.track(&w.input)?;
                if input.has_rows() {
                    let tables = self.tables_of(&input.hidden).join(", ");
                    return Err(format!("a window function over individual rows of guarded table(s) {tables}"));
                }
                // Over aggregated rows a frame may copy any row's value into any other.
                let input = self.spread_smallest(input)?;
                let new = plan.with_new_exprs(plan.expressions(), vec![input.plan]).map_err(|e| e.to_string())?;
                Ok(Tracked { plan: new, ..input })
            }
            LogicalPlan::Aggregate(a) => {
                let input = self.track(&a.input)?;
                let grouping_sets = matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)]);
                self.aggregate(input, a.group_expr.clone(), a.aggr_expr.clone(), grouping_sets)
            }
            LogicalPlan::Distinct(Distinct::All(inner)) => {
                let input = self.track(inner)?;
                let group = input.visible_columns();
                self.aggregate(input, group, Vec::new(), false)
            }
            LogicalPlan::Join(join) => {
                let left = self.track(&join.left)?;
                let right = self.track(&join.right)?;
                // A join may drop aggregated rows (no match): count those too.
                let left = self.spread_smallest(left)?;
                let right = self.spread_smallest(right)?;
                self.join(plan, join, left, right)
            }
            LogicalPlan::Union(union) => self.union(union.inputs.iter().map(|i| i.as_ref()).collect()),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Ok(Tracked::plain(plan.clone())),
            other => {
                if self.guarded_tables_in(other).is_empty() {
                    Ok(Tracked::plain(other.clone()))
                } else {
                    Err(format!(
                        "a {} step over a guarded table",
                        other.display().to_string().split(':').next().unwrap_or("plan")
                    ))
                }
            }
        }
    }

    fn tables_of(&self, hidden: &[Hidden]) -> Vec<String> {
        let mut names: Vec<String> = hidden.iter().map(|h| format!("{:?}", self.occurrences[h.occurrence])).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Subqueries left in expressions. An uncorrelated scalar subquery over a guarded
    /// table is one value used by every row: it is tracked on its own, and its counts
    /// (a side check, run beside the query) must pass like the query's. Any other
    /// subquery over a guarded table (the optimizer turns most into joins) is
    /// unanalysable.
    fn subqueries(&mut self, plan: &LogicalPlan) -> Result<(), Unanalysable> {
        let mut scalar = Vec::new();
        let mut refused = None;
        for expr in plan.expressions() {
            let _ = expr.apply(|e| {
                let (sub, correlated) = match e {
                    Expr::ScalarSubquery(s) => (&s.subquery, !s.outer_ref_columns.is_empty()),
                    Expr::Exists(x) => (&x.subquery.subquery, true),
                    Expr::InSubquery(x) => (&x.subquery.subquery, true),
                    _ => return Ok(TreeNodeRecursion::Continue),
                };
                if let Some(table) = self.guarded_tables_in(sub).into_iter().next() {
                    if correlated {
                        refused = Some(table);
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    scalar.push(sub.as_ref().clone());
                }
                Ok(TreeNodeRecursion::Jump)
            });
        }
        if let Some(table) = refused {
            return Err(format!("a subquery over guarded table {table:?} that could not be turned into a join"));
        }
        for sub in scalar {
            let tracked = self.track(&sub)?;
            let mut exprs = tracked.visible_columns();
            exprs.extend(tracked.hidden.iter().map(|h| hidden_col(&h.name)));
            let plan = Projection::try_new(exprs, Arc::new(tracked.plan)).map_err(|e| e.to_string())?;
            let hidden = tracked
                .hidden
                .into_iter()
                .map(|h| Hidden { what: format!("a scalar subquery ({})", h.what).into(), ..h })
                .collect();
            self.side_checks.push(SideCheck { plan: LogicalPlan::Projection(plan), hidden });
        }
        Ok(())
    }

    fn scan(&mut self, scan: &TableScan) -> Result<Tracked, Unanalysable> {
        let Some((name, table)) = self.tables.scanned(scan) else {
            return Err(format!("a scan of {}, which is not a table the guard holds", scan.table_name));
        };
        let occurrence = self.occurrences.len();
        self.occurrences.push(name.to_string());
        let visible = table.visible.schema();
        let read: Vec<usize> = scan.projection.clone().unwrap_or_else(|| (0..visible.fields().len()).collect());
        let internal_schema = table.internal.schema();
        // The internal table's columns by name: its order need not match the visible one's.
        let mut projection = read
            .iter()
            .map(|&i| internal_schema.index_of(visible.field(i).name()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<usize>, _>>()?;
        // Shared ids are units, not rows: a constant would count rows, so the ids are read.
        let with_ids = self.with_row_ids || table.shared_ids;
        if with_ids {
            projection.push(internal_schema.index_of(ROW_ID).map_err(|e| e.to_string())?);
        }
        let source = provider_as_source(table.internal.clone());
        let new_scan = TableScanBuilder::new(scan.table_name.clone(), source)
            .with_projection(Some(projection))
            .with_filters(scan.filters.clone())
            .with_fetch(scan.fetch)
            .build()
            .map_err(|e| e.to_string())?;
        let hidden = Hidden {
            occurrence,
            level: Level::Row { unique: !table.shared_ids },
            name: self.fresh("r"),
            what: "the group".into(),
            zero_ok: false,
        };
        let mut exprs: Vec<Expr> = read
            .iter()
            .map(|&i| Expr::Column(Column::new(Some(scan.table_name.clone()), visible.field(i).name())))
            .collect();
        let row = if with_ids {
            Expr::Column(Column::new(Some(scan.table_name.clone()), ROW_ID))
        } else {
            lit(ScalarValue::Int64(Some(1)))
        };
        exprs.push(row.alias(&hidden.name));
        let plan = Projection::try_new(exprs, Arc::new(LogicalPlan::TableScan(new_scan))).map_err(|e| e.to_string())?;
        let mut tracked = Tracked::plain(LogicalPlan::Projection(plan));
        tracked.hidden.push(hidden);
        Ok(tracked)
    }

    fn projection(&mut self, input: Tracked, exprs: &[Expr], schema: &DFSchema) -> Result<Tracked, Unanalysable> {
        let in_schema = input.plan.schema().clone();
        let over_rows = input.has_rows();
        let mut out_exprs = exprs.to_vec();
        let mut depends = HashMap::new();
        let mut taints = HashMap::new();
        let mut selectors = input.selectors.clone();
        for (i, expr) in exprs.iter().enumerate() {
            let (qualifier, field) = schema.qualified_field(i);
            let output = Column::new(qualifier.cloned(), field.name());
            let mut deps = BTreeSet::new();
            for column in expr.column_refs() {
                let resolved = resolve(&in_schema, column);
                match resolved.as_ref().and_then(|c| input.depends.get(c)) {
                    Some(d) => deps.extend(d.iter().cloned()),
                    // Unresolvable: it may depend on any selector below.
                    None if resolved.is_none() => deps.extend(input.selectors.iter().map(|s| s.name.clone())),
                    None => {}
                }
                if let Some(t) = resolved.as_ref().and_then(|c| input.taints.get(c)) {
                    taints.insert(output.clone(), t.clone());
                }
            }
            if over_rows {
                if let Some(problem) = value_path_problem(expr, &in_schema) {
                    taints.insert(output.clone(), problem);
                }
                for found in find_selectors(expr, &in_schema) {
                    let name = self.fresh("s");
                    out_exprs.push(found.branch.alias(&name));
                    deps.insert(name.clone());
                    selectors.push(Selector {
                        name,
                        branches: found.branches,
                        what: found.what,
                        zero_ok: found.zero_ok,
                    });
                }
            }
            if !deps.is_empty() {
                depends.insert(output, deps);
            }
        }
        out_exprs.extend(input.hidden.iter().map(|h| hidden_col(&h.name)));
        out_exprs.extend(input.selectors.iter().map(|s| hidden_col(&s.name)));
        let plan = Projection::try_new(out_exprs, Arc::new(input.plan)).map_err(|e| e.to_string())?;
        Ok(Tracked { plan: LogicalPlan::Projection(plan), hidden: input.hidden, selectors, depends, taints })
    }

    /// Before a step that only drops rows (a filter, a limit): disjoint groups (a plain
    /// GROUP BY) hide nothing from each other when some are dropped, so `HAVING
    /// COUNT(*) >= 10` keeps the large ones; overlapping groups (grouping sets, after a
    /// join) are compared with each other, so what is dropped still counts.
    fn spread_if_overlapping(&mut self, input: Tracked) -> Result<Tracked, Unanalysable> {
        let overlapping = input.hidden.iter().any(|h| h.level == Level::Group { disjoint: false });
        if overlapping { self.spread_smallest(input) } else { Ok(input) }
    }

    /// Replaces every group count of `input` by the smallest over all its rows, before a
    /// step that drops or mixes rows, so that what is dropped still counts.
    fn spread_smallest(&mut self, input: Tracked) -> Result<Tracked, Unanalysable> {
        if !input.has_groups() {
            return Ok(input);
        }
        let mut window_exprs = Vec::new();
        let mut renames = Vec::new();
        for h in input.hidden.iter().filter(|h| matches!(h.level, Level::Group { .. })) {
            let spread = self.fresh("m");
            let call =
                WindowFunction::new(WindowFunctionDefinition::AggregateUDF(min_udaf()), vec![hidden_col(&h.name)]);
            window_exprs.push(Expr::WindowFunction(Box::new(call)).alias(&spread));
            renames.push((h.name.clone(), spread));
        }
        let window = Window::try_new(window_exprs, Arc::new(input.plan.clone())).map_err(|e| e.to_string())?;
        let exprs: Vec<Expr> = input
            .plan
            .schema()
            .iter()
            .map(|(qualifier, field)| match renames.iter().find(|(name, _)| name == field.name()) {
                Some((name, spread)) => hidden_col(spread).alias(name),
                None => Expr::Column(Column::new(qualifier.cloned(), field.name())),
            })
            .collect();
        let plan = Projection::try_new(exprs, Arc::new(LogicalPlan::Window(window))).map_err(|e| e.to_string())?;
        Ok(Tracked { plan: LogicalPlan::Projection(plan), ..input })
    }

    fn join(
        &mut self,
        plan: &LogicalPlan,
        join: &datafusion::logical_expr::Join,
        left: Tracked,
        right: Tracked,
    ) -> Result<Tracked, Unanalysable> {
        let mut depends = left.depends.clone();
        depends.extend(right.depends.clone());
        let mut taints = left.taints.clone();
        taints.extend(right.taints.clone());
        let (kept, filtering) = match join.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => (left, right),
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => (right, left),
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                // An unmatched row carries NULL for the other side's columns: its group
                // counts read 0 there (fail closed), its row ids and selectors NULL.
                let nullable: Vec<String> = match join.join_type {
                    JoinType::Left => group_names(&right.hidden),
                    JoinType::Right => group_names(&left.hidden),
                    JoinType::Full => group_names(&left.hidden).into_iter().chain(group_names(&right.hidden)).collect(),
                    _ => Vec::new(),
                };
                let hidden: Vec<Hidden> = left.hidden.into_iter().chain(right.hidden).map(duplicated).collect();
                let selectors: Vec<Selector> = left.selectors.into_iter().chain(right.selectors).collect();
                let joined =
                    plan.with_new_exprs(plan.expressions(), vec![left.plan, right.plan]).map_err(|e| e.to_string())?;
                let joined = if nullable.is_empty() {
                    joined
                } else {
                    let exprs: Vec<Expr> = joined
                        .schema()
                        .iter()
                        .map(|(qualifier, field)| {
                            if nullable.contains(field.name()) {
                                datafusion::functions::core::expr_fn::coalesce(vec![
                                    hidden_col(field.name()),
                                    lit(0i64),
                                ])
                                .alias(field.name())
                            } else {
                                Expr::Column(Column::new(qualifier.cloned(), field.name()))
                            }
                        })
                        .collect();
                    LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(joined)).map_err(|e| e.to_string())?)
                };
                return Ok(Tracked { plan: joined, hidden, selectors, depends, taints });
            }
        };
        if filtering.hidden.is_empty() {
            let plan = match join.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                    plan.with_new_exprs(plan.expressions(), vec![kept.plan, filtering.plan])
                }
                _ => plan.with_new_exprs(plan.expressions(), vec![filtering.plan, kept.plan]),
            }
            .map_err(|e| e.to_string())?;
            return Ok(Tracked { plan, depends, taints, ..kept });
        }
        if join.join_type != JoinType::LeftSemi || join.filter.is_some() {
            return Err(format!(
                "a {} join whose filtering side reads guarded table(s) {}",
                join.join_type,
                self.tables_of(&filtering.hidden).join(", ")
            ));
        }
        // The filtering side counts too: group it by the join keys, so each kept row
        // meets exactly one group, and carry that group's counts.
        let right_keys: Vec<Expr> = join.on.iter().map(|(_, r)| r.clone()).collect();
        let key_count = right_keys.len();
        let grouped = self.aggregate(filtering, right_keys, Vec::new(), false)?;
        let grouped_keys: Vec<Expr> = (0..key_count)
            .map(|i| {
                let (qualifier, field) = grouped.plan.schema().qualified_field(i);
                Expr::Column(Column::new(qualifier.cloned(), field.name()))
            })
            .collect();
        let left_keys: Vec<Expr> = join.on.iter().map(|(l, _)| l.clone()).collect();
        let mut exprs: Vec<Expr> = kept
            .plan
            .schema()
            .iter()
            .map(|(qualifier, field)| Expr::Column(Column::new(qualifier.cloned(), field.name())))
            .collect();
        let joined = LogicalPlanBuilder::from(kept.plan)
            .join_with_expr_keys(grouped.plan, JoinType::Inner, (left_keys, grouped_keys), None)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        // Back to the semi-join's columns (the kept side with its hidden columns) plus
        // the filtering side's counts.
        let filtering: Vec<Hidden> = grouped.hidden.into_iter().map(duplicated).collect();
        exprs.extend(filtering.iter().map(|h| hidden_col(&h.name)));
        let mut hidden = kept.hidden;
        hidden.extend(filtering);
        let plan = Projection::try_new(exprs, Arc::new(joined)).map_err(|e| e.to_string())?;
        Ok(Tracked { plan: LogicalPlan::Projection(plan), hidden, selectors: kept.selectors, depends, taints })
    }

    fn aggregate(
        &mut self,
        input: Tracked,
        group: Vec<Expr>,
        aggr: Vec<Expr>,
        grouping_sets: bool,
    ) -> Result<Tracked, Unanalysable> {
        let in_schema = input.plan.schema().clone();
        let rows: Vec<Hidden> = input.hidden.iter().filter(|h| matches!(h.level, Level::Row { .. })).cloned().collect();
        if !rows.is_empty() {
            for expr in &aggr {
                self.check_functions(expr, &rows);
            }
            for h in &rows {
                if !self.row_sets.iter().any(|r| r.occurrence == h.occurrence) {
                    self.row_sets.push(RowSet {
                        occurrence: h.occurrence,
                        id_column: h.name.clone(),
                        plan: input.plan.clone(),
                        whole: reads_every_row(&input.plan),
                    });
                }
            }
        }
        // Grouping sets put one source row into one output row per set.
        let disjoint_output = !grouping_sets;
        let mut counts: Vec<(Expr, Hidden)> = Vec::new();
        // Over aggregated rows: sums of disjoint groups stay counts only for COUNT(*);
        // any other function may release one input group's value, so the output
        // stands for as few rows as the smallest input group.
        let only_count_star = aggr.iter().all(is_count_star);
        for h in &input.hidden {
            let column = hidden_col(&h.name);
            let (expr, disjoint) = match h.level {
                Level::Row { unique: true } => (count(column), disjoint_output),
                Level::Row { unique: false } => (count_distinct(column), false),
                Level::Group { disjoint: true } if only_count_star => (sum(column), disjoint_output),
                Level::Group { disjoint: false } if only_count_star => (max(column), false),
                Level::Group { .. } => (min(column), false),
            };
            let out = Hidden { level: Level::Group { disjoint }, name: self.fresh("c"), ..h.clone() };
            counts.push((expr, out));
        }
        if !rows.is_empty() {
            for expr in &aggr {
                self.contributors(expr, &input, &in_schema, &rows, disjoint_output, &mut counts);
            }
        }
        let mut aggr = aggr;
        let mut hidden = Vec::with_capacity(counts.len());
        for (expr, h) in counts {
            aggr.push(expr.alias(&h.name));
            hidden.push(h);
        }
        let plan = Aggregate::try_new(Arc::new(input.plan), group, aggr).map_err(|e| e.to_string())?;
        let mut tracked = Tracked::plain(LogicalPlan::Aggregate(plan));
        tracked.hidden = hidden;
        Ok(tracked)
    }

    /// The counts that say how many rows decide `expr`'s value: the rows whose
    /// argument enters it, and the rows in each branch of each selector shaping it.
    fn contributors(
        &mut self,
        expr: &Expr,
        input: &Tracked,
        schema: &DFSchema,
        rows: &[Hidden],
        disjoint: bool,
        counts: &mut Vec<(Expr, Hidden)>,
    ) {
        let Expr::AggregateFunction(f) = expr.clone().unalias_nested().data else {
            return;
        };
        let shown: Arc<str> = f.func.name().into();
        let args = &f.params.args;
        let filter = f.params.filter.as_deref();
        // Indicator-building functions in the argument, here or in a projection below.
        for arg in args {
            let mut problem = value_path_problem(arg, schema);
            for column in arg.column_refs() {
                if let Some(t) = resolve(schema, column).and_then(|c| input.taints.get(&c)) {
                    problem = problem.or(Some(t.clone()));
                }
            }
            if let Some(problem) = problem {
                for table in self.tables_of(rows) {
                    self.findings.push(Finding::Indicator {
                        table: table.trim_matches('"').to_string(),
                        function: problem.clone(),
                    });
                }
            }
        }
        // The rows that enter: every argument present, the FILTER passed.
        let mut enter: Vec<Expr> = args
            .iter()
            .filter(|a| !matches!(a, Expr::Literal(..)))
            .filter(|a| a.nullable(schema).unwrap_or(true))
            .map(|a| a.clone().is_not_null())
            .collect();
        enter.extend(filter.cloned());
        if let Some(condition) = enter.into_iter().reduce(Expr::and) {
            let what: Arc<str> = format!("the rows that enter {shown}").into();
            self.count_where(condition, rows, disjoint, what, false, counts);
        }
        // Selectors written in the argument or FILTER.
        let mut found = Vec::new();
        for arg in args {
            found.extend(find_selectors(arg, schema));
        }
        if let Some(filter) = filter {
            found.push(FoundSelector {
                branch: branch_of_condition(filter.clone()),
                branches: 2,
                what: format!("the FILTER of {shown}").into(),
                zero_ok: false,
            });
        }
        for s in found {
            for b in 0..s.branches {
                let condition = s.branch.clone().eq(lit(b as i64));
                let what: Arc<str> = format!("branch {} of {}", b + 1, s.what).into();
                self.count_where(condition, rows, disjoint, what, s.zero_ok, counts);
            }
        }
        // Selectors from projections below, through the columns the argument reads.
        let mut below = BTreeSet::new();
        for e in args.iter().chain(filter) {
            for column in e.column_refs() {
                match resolve(schema, column) {
                    Some(c) => below.extend(input.depends.get(&c).cloned().unwrap_or_default()),
                    None => below.extend(input.selectors.iter().map(|s| s.name.clone())),
                }
            }
        }
        for name in below {
            let Some(s) = input.selectors.iter().find(|s| s.name == name).cloned() else { continue };
            for b in 0..s.branches {
                let condition = hidden_col(&s.name).eq(lit(b as i64));
                let what: Arc<str> = format!("branch {} of {}", b + 1, s.what).into();
                self.count_where(condition, rows, disjoint, what, s.zero_ok, counts);
            }
        }
    }

    /// One count per occurrence in `rows`: its distinct rows for which `condition` holds.
    fn count_where(
        &mut self,
        condition: Expr,
        rows: &[Hidden],
        disjoint: bool,
        what: Arc<str>,
        zero_ok: bool,
        counts: &mut Vec<(Expr, Hidden)>,
    ) {
        for h in rows {
            let id =
                Expr::Case(Case::new(None, vec![(Box::new(condition.clone()), Box::new(hidden_col(&h.name)))], None));
            let (expr, disjoint) = match h.level {
                Level::Row { unique: true } => (count(id), disjoint),
                _ => (count_distinct(id), false),
            };
            let out = Hidden {
                occurrence: h.occurrence,
                level: Level::Group { disjoint },
                name: self.fresh("k"),
                what: what.clone(),
                zero_ok,
            };
            counts.push((expr, out));
        }
    }

    /// Notes every aggregate function in `expr` that can return one individual's value.
    fn check_functions(&mut self, expr: &Expr, rows: &[Hidden]) {
        let mut bad = Vec::new();
        let _ = expr.apply(|e| {
            if let Expr::AggregateFunction(f) = e {
                let name = f.func.name().to_ascii_lowercase();
                if !SAFE_AGGREGATES.contains(&name.as_str()) {
                    bad.push(name);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        for function in bad {
            for table in self.tables_of(rows) {
                self.findings.push(Finding::Revealing {
                    table: table.trim_matches('"').to_string(),
                    function: function.clone(),
                });
            }
        }
    }

    fn union(&mut self, inputs: Vec<&LogicalPlan>) -> Result<Tracked, Unanalysable> {
        let tracked: Vec<Tracked> = inputs.into_iter().map(|i| self.track(i)).collect::<Result<_, _>>()?;
        let all: Vec<Hidden> = tracked.iter().flat_map(|t| t.hidden.clone()).collect();
        let selectors: Vec<Selector> = tracked.iter().flat_map(|t| t.selectors.clone()).collect();
        let mut branches = Vec::with_capacity(tracked.len());
        // A union's i-th column is each branch's i-th: what any branch's column depends
        // on, the union's does.
        let mut position_depends: Vec<BTreeSet<String>> = Vec::new();
        let mut position_taints: Vec<Option<String>> = Vec::new();
        for branch in &tracked {
            let own = branch.carried();
            let mut exprs = branch.visible_columns();
            for (i, e) in exprs.iter().enumerate() {
                let Expr::Column(c) = e else { continue };
                if position_depends.len() <= i {
                    position_depends.resize(i + 1, BTreeSet::new());
                    position_taints.resize(i + 1, None);
                }
                position_depends[i].extend(branch.depends.get(c).cloned().unwrap_or_default());
                if let Some(t) = branch.taints.get(c) {
                    position_taints[i] = Some(t.clone());
                }
            }
            // A branch that reads no guarded table stands for none of its rows: a
            // literal row must not pass for a large group.
            let literal = branch.hidden.is_empty();
            for h in &all {
                exprs.push(if own.contains(&h.name) {
                    hidden_col(&h.name)
                } else if literal && matches!(h.level, Level::Group { .. }) {
                    lit(ScalarValue::Int64(Some(0))).alias(&h.name)
                } else {
                    lit(ScalarValue::Int64(None)).alias(&h.name)
                });
            }
            for s in &selectors {
                exprs.push(if own.contains(&s.name) {
                    hidden_col(&s.name)
                } else {
                    lit(ScalarValue::Int64(None)).alias(&s.name)
                });
            }
            branches.push(LogicalPlan::Projection(
                Projection::try_new(exprs, Arc::new(branch.plan.clone())).map_err(|e| e.to_string())?,
            ));
        }
        let mut branches = branches.into_iter();
        let mut builder = LogicalPlanBuilder::from(branches.next().ok_or("an empty union")?);
        for branch in branches {
            builder = builder.union(branch).map_err(|e| e.to_string())?;
        }
        let plan = builder.build().map_err(|e| e.to_string())?;
        let columns = plan.schema().columns();
        let mut depends = HashMap::new();
        let mut taints = HashMap::new();
        for (i, column) in columns.into_iter().enumerate() {
            if let Some(d) = position_depends.get(i).filter(|d| !d.is_empty()) {
                depends.insert(column.clone(), d.clone());
            }
            if let Some(Some(t)) = position_taints.get(i) {
                taints.insert(column, t.clone());
            }
        }
        // Group counts are unions of disjoint branches only if no two branches read the
        // same occurrence, which they cannot: each occurrence is one scan.
        Ok(Tracked { plan, hidden: all, selectors, depends, taints })
    }
}

fn group_names(hidden: &[Hidden]) -> Vec<String> {
    hidden.iter().filter(|h| matches!(h.level, Level::Group { .. })).map(|h| h.name.clone()).collect()
}

/// After a join, a source row may appear in several output rows.
fn duplicated(h: Hidden) -> Hidden {
    let level = match h.level {
        Level::Row { .. } => Level::Row { unique: false },
        Level::Group { .. } => Level::Group { disjoint: false },
    };
    Hidden { level, ..h }
}

fn is_count_star(expr: &Expr) -> bool {
    match expr.clone().unalias_nested().data {
        Expr::AggregateFunction(AggregateFunction { func, params }) => {
            func.name() == "count"
                && params.filter.is_none()
                && !params.distinct
                && params.args.iter().all(|a| matches!(a, Expr::Literal(v, _) if !v.is_null()))
        }
        _ => false,
    }
}

/// A selector found in an expression: the branch each row takes, as an expression
/// giving 0..branches.
struct FoundSelector {
    branch: Expr,
    branches: usize,
    what: Arc<str>,
    zero_ok: bool,
}

fn branch_of_condition(condition: Expr) -> Expr {
    Expr::Case(Case::new(None, vec![(Box::new(condition), Box::new(lit(0i64)))], Some(Box::new(lit(1i64)))))
}

/// Every selector in `expr`: CASE, NULLIF, and a boolean cast to another type.
fn find_selectors(expr: &Expr, schema: &DFSchema) -> Vec<FoundSelector> {
    let mut found = Vec::new();
    let _ = expr.apply(|e| {
        match e {
            Expr::AggregateFunction(_) | Expr::WindowFunction(_) | Expr::ScalarSubquery(_) => {
                return Ok(TreeNodeRecursion::Jump);
            }
            Expr::Case(case) => {
                let whens = case
                    .when_then_expr
                    .iter()
                    .enumerate()
                    .map(|(i, (when, _))| (when.clone(), Box::new(lit(i as i64))))
                    .collect();
                let m = case.when_then_expr.len();
                let branch = Expr::Case(Case::new(case.expr.clone(), whens, Some(Box::new(lit(m as i64)))));
                found.push(FoundSelector { branch, branches: m + 1, what: short(e), zero_ok: false });
            }
            Expr::ScalarFunction(f) if f.name() == "nullif" && f.args.len() == 2 => {
                let zero_ok = matches!(&f.args[1], Expr::Literal(v, _)
                    if ScalarValue::new_zero(&v.data_type()).is_ok_and(|z| z == *v));
                let branch = branch_of_condition(f.args[0].clone().eq(f.args[1].clone()));
                found.push(FoundSelector { branch, branches: 2, what: short(e), zero_ok });
            }
            _ => {
                if let Some((inner, to)) = as_cast(e)
                    && *to != DataType::Boolean
                    && is_boolean(inner, schema)
                {
                    let branch = branch_of_condition(inner.clone());
                    found.push(FoundSelector { branch, branches: 2, what: short(e), zero_ok: false });
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// A CAST or TRY_CAST (the guard turns every CAST into TRY_CAST; both may reach here)
/// as the expression cast and the type it is cast to.
fn as_cast(expr: &Expr) -> Option<(&Expr, &DataType)> {
    match expr {
        Expr::Cast(c) => Some((&c.expr, c.field.data_type())),
        Expr::TryCast(c) => Some((&c.expr, c.field.data_type())),
        _ => None,
    }
}

fn is_boolean(expr: &Expr, schema: &DFSchema) -> bool {
    expr.get_type(schema).map_or(true, |t| t == DataType::Boolean)
}

fn short(expr: &Expr) -> Arc<str> {
    let text = expr.to_string();
    let text =
        if text.chars().count() > 80 { format!("{}...", text.chars().take(77).collect::<String>()) } else { text };
    text.into()
}

/// Why `expr`, as an aggregate's argument over individual rows, could single out rows,
/// or `None`. Only the value path is checked: a selector's conditions may be anything
/// (its branches are counted), its results are values again.
fn value_path_problem(expr: &Expr, schema: &DFSchema) -> Option<String> {
    match expr {
        Expr::Column(_) | Expr::Literal(..) | Expr::Placeholder(_) => None,
        Expr::Alias(a) => value_path_problem(&a.expr, schema),
        Expr::Negative(e) | Expr::IsNull(e) | Expr::IsNotNull(e) | Expr::Not(e) => value_path_problem(e, schema),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let own = match op {
                Operator::Plus | Operator::Minus | Operator::Multiply => None,
                Operator::Divide | Operator::Modulo => {
                    let divisor_is_constant = match right.as_ref() {
                        Expr::Literal(..) => true,
                        Expr::ScalarFunction(f) if f.name() == "nullif" => matches!(f.args[0], Expr::Literal(..)),
                        _ => false,
                    };
                    if divisor_is_constant && *op == Operator::Divide && !is_integer(left, schema) {
                        None
                    } else {
                        Some(format!("{op} by a value computed from the rows"))
                    }
                }
                // Comparisons and logic make booleans: only a cast makes them a number,
                // and that cast is a counted selector.
                Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::IsDistinctFrom
                | Operator::IsNotDistinctFrom
                | Operator::And
                | Operator::Or => None,
                other => Some(format!("the operator {other}")),
            };
            own.or_else(|| value_path_problem(left, schema)).or_else(|| value_path_problem(right, schema))
        }
        Expr::Cast(_) | Expr::TryCast(_) => as_cast(expr).and_then(|(inner, to)| cast_problem(inner, to, schema)),
        Expr::Case(case) => {
            // CASE x WHEN ...: `x` only picks the branch.
            case.when_then_expr
                .iter()
                .map(|(_, then)| then.as_ref())
                .chain(case.else_expr.as_deref())
                .find_map(|v| value_path_problem(v, schema))
        }
        Expr::ScalarFunction(f) if f.name() == "nullif" && f.args.len() == 2 => value_path_problem(&f.args[0], schema),
        Expr::ScalarFunction(f) if f.name() == "coalesce" => f.args.iter().find_map(|a| value_path_problem(a, schema)),
        Expr::ScalarFunction(f) if SMOOTH_FUNCTIONS.contains(&f.name()) => {
            f.args.iter().find_map(|a| value_path_problem(a, schema))
        }
        Expr::ScalarFunction(f) => Some(format!("the function {}", f.name())),
        other => Some(format!("the expression {}", short(other))),
    }
}

fn is_integer(expr: &Expr, schema: &DFSchema) -> bool {
    expr.get_type(schema).map_or(true, |t| t.is_integer())
}

/// A cast to an integer truncates, which turns a fraction into an indicator; a cast
/// from a boolean is a selector, counted elsewhere; a cast of text parses it.
fn cast_problem(inner: &Expr, to: &DataType, schema: &DFSchema) -> Option<String> {
    let from = inner.get_type(schema).ok();
    let problem = match (&from, to) {
        (Some(DataType::Boolean), _) => None,
        (Some(f), t) if f == t => None,
        (Some(f), t) if f.is_integer() && (t.is_integer() || t.is_floating() || is_decimal(t)) => None,
        (Some(f), t) if (f.is_floating() || is_decimal(f)) && (t.is_floating() || is_decimal(t)) => None,
        (Some(DataType::Null), _) => None,
        _ => Some(format!("a cast to {to}")),
    };
    problem.or_else(|| value_path_problem(inner, schema))
}

fn is_decimal(t: &DataType) -> bool {
    matches!(t, DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..))
}
