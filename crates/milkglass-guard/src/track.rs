//! The plan rewrite at the heart of the guard.
//!
//! Every occurrence of a guarded table in a plan gets a hidden column that travels
//! with each row up to the output:
//!
//! - below any aggregation it is the source row's id (`__mg_r<i>`): the row stands
//!   for exactly one row of the table;
//! - an aggregation turns it into a count (`__mg_c<i>`): how many distinct rows of
//!   the table the output row stands for.
//!
//! The count is exact while rows cannot have been duplicated (no join on the way),
//! and a lower bound otherwise (`COUNT(DISTINCT id)` below the first aggregation,
//! `MAX` above it), so the guard may refuse too much but never allows too little.
//! A plan shape the rewrite does not understand is reported as unanalysable, and
//! unanalysable means unsafe.

use crate::{Finding, ProtectedTable, ROW_ID};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, max, sum};
use datafusion::logical_expr::{
    Aggregate, Distinct, Expr, JoinType, LogicalPlan, LogicalPlanBuilder, Projection, TableScan, TableScanBuilder, lit,
};
use std::collections::HashMap;
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
}

impl Hidden {
    pub fn column(&self) -> String {
        match self.level {
            Level::Row { .. } => format!("__mg_r{}", self.occurrence),
            Level::Group { .. } => format!("__mg_c{}", self.occurrence),
        }
    }
}

pub(crate) struct Tracked {
    pub plan: LogicalPlan,
    pub hidden: Vec<Hidden>,
}

/// Walks a plan bottom-up, rewriting it to carry hidden columns and noting findings.
pub(crate) struct Tracker<'a> {
    tables: &'a HashMap<String, ProtectedTable>,
    with_row_ids: bool,
    /// The guarded table of each occurrence, by occurrence number.
    pub occurrences: Vec<String>,
    pub findings: Vec<Finding>,
}

type Unanalysable = String;

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

/// Window functions that do not copy another row's value into this one.
const SAFE_WINDOW_FUNCTIONS: &[&str] = &["row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile"];

fn hidden_col(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

impl<'a> Tracker<'a> {
    /// `with_row_ids`: carry real row ids. Only a join can put one source row into two
    /// rows, and only then does counting need ids (`COUNT(DISTINCT id)`); without joins
    /// a constant 1 counts the same and spares reading the id column.
    pub fn new(tables: &'a HashMap<String, ProtectedTable>, with_row_ids: bool) -> Self {
        Tracker { tables, with_row_ids, occurrences: Vec::new(), findings: Vec::new() }
    }

    /// Guarded tables read anywhere under `plan` (including inside subqueries).
    fn guarded_tables_in(&self, plan: &LogicalPlan) -> Vec<String> {
        let mut found = Vec::new();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node
                && self.tables.contains_key(scan.table_name.table())
            {
                found.push(scan.table_name.table().to_string());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        found
    }

    pub fn track(&mut self, plan: &LogicalPlan) -> Result<Tracked, Unanalysable> {
        self.refuse_guarded_subqueries(plan)?;
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan, plan),
            LogicalPlan::Projection(p) => {
                let input = self.track(&p.input)?;
                let mut exprs = p.expr.clone();
                exprs.extend(input.hidden.iter().map(|h| hidden_col(&h.column())));
                let plan = Projection::try_new(exprs, Arc::new(input.plan)).map_err(|e| e.to_string())?;
                Ok(Tracked { plan: LogicalPlan::Projection(plan), hidden: input.hidden })
            }
            LogicalPlan::Filter(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Repartition(_)
            | LogicalPlan::SubqueryAlias(_) => {
                let input = self.track(plan.inputs()[0])?;
                let plan = plan.with_new_exprs(plan.expressions(), vec![input.plan]).map_err(|e| e.to_string())?;
                Ok(Tracked { plan, hidden: input.hidden })
            }
            LogicalPlan::Window(w) => {
                let input = self.track(&w.input)?;
                if !input.hidden.is_empty() {
                    for expr in &w.window_expr {
                        self.check_functions(
                            expr,
                            SAFE_WINDOW_FUNCTIONS.iter().chain(SAFE_AGGREGATES).copied(),
                            &input,
                        );
                    }
                }
                let plan = plan.with_new_exprs(plan.expressions(), vec![input.plan]).map_err(|e| e.to_string())?;
                Ok(Tracked { plan, hidden: input.hidden })
            }
            LogicalPlan::Aggregate(a) => {
                let input = self.track(&a.input)?;
                if !input.hidden.is_empty() {
                    for expr in &a.aggr_expr {
                        self.check_functions(expr, SAFE_AGGREGATES.iter().copied(), &input);
                    }
                }
                self.aggregate(input, a.group_expr.clone(), a.aggr_expr.clone())
            }
            LogicalPlan::Distinct(Distinct::All(inner)) => {
                let input = self.track(inner)?;
                let hidden_names: Vec<String> = input.hidden.iter().map(Hidden::column).collect();
                let group = input
                    .plan
                    .schema()
                    .iter()
                    .filter(|(_, field)| !hidden_names.contains(field.name()))
                    .map(|(qualifier, field)| Expr::Column(Column::new(qualifier.cloned(), field.name())))
                    .collect();
                self.aggregate(input, group, Vec::new())
            }
            LogicalPlan::Join(join) => {
                let left = self.track(&join.left)?;
                let right = self.track(&join.right)?;
                let (kept, filtering) = match join.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => (left.hidden, right.hidden),
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => (right.hidden, left.hidden),
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                        let nullable: &[Hidden] = match join.join_type {
                            JoinType::Left => &right.hidden,
                            JoinType::Right => &left.hidden,
                            JoinType::Full => &[],
                            _ => &[],
                        };
                        let full_outer =
                            join.join_type == JoinType::Full && (!left.hidden.is_empty() || !right.hidden.is_empty());
                        if full_outer || nullable.iter().any(|h| matches!(h.level, Level::Group { .. })) {
                            return Err(
                                "an outer join with aggregated rows of a guarded table on its optional side".into()
                            );
                        }
                        let hidden = left.hidden.into_iter().chain(right.hidden).map(duplicated).collect();
                        let plan = plan
                            .with_new_exprs(plan.expressions(), vec![left.plan, right.plan])
                            .map_err(|e| e.to_string())?;
                        return Ok(Tracked { plan, hidden });
                    }
                };
                if filtering.is_empty() {
                    let plan = plan
                        .with_new_exprs(plan.expressions(), vec![left.plan, right.plan])
                        .map_err(|e| e.to_string())?;
                    return Ok(Tracked { plan, hidden: kept });
                }
                if join.join_type != JoinType::LeftSemi || join.filter.is_some() {
                    return Err(format!(
                        "a {} join whose filtering side reads guarded table(s) {}",
                        join.join_type,
                        self.tables_of(&filtering).join(", ")
                    ));
                }
                // The filtering side counts too: group it by the join keys, so each kept
                // row meets exactly one group, and carry that group's count.
                let left_width = left.plan.schema().fields().len();
                let right = Tracked { plan: right.plan, hidden: filtering };
                let right_keys: Vec<Expr> = join.on.iter().map(|(_, r)| r.clone()).collect();
                let key_count = right_keys.len();
                let grouped = self.aggregate(right, right_keys, Vec::new())?;
                let grouped_keys: Vec<Expr> = (0..key_count)
                    .map(|i| {
                        let (qualifier, field) = grouped.plan.schema().qualified_field(i);
                        Expr::Column(Column::new(qualifier.cloned(), field.name()))
                    })
                    .collect();
                let left_keys: Vec<Expr> = join.on.iter().map(|(l, _)| l.clone()).collect();
                let joined = LogicalPlanBuilder::from(left.plan)
                    .join_with_expr_keys(grouped.plan, JoinType::Inner, (left_keys, grouped_keys), None)
                    .map_err(|e| e.to_string())?
                    .build()
                    .map_err(|e| e.to_string())?;
                // Back to the semi-join's columns (the kept side, with its hidden columns)
                // plus the filtering side's hidden columns.
                let mut exprs: Vec<Expr> = joined
                    .schema()
                    .iter()
                    .take(left_width)
                    .map(|(qualifier, field)| Expr::Column(Column::new(qualifier.cloned(), field.name())))
                    .collect();
                let filtering: Vec<Hidden> = grouped.hidden.into_iter().map(duplicated).collect();
                exprs.extend(filtering.iter().map(|h| hidden_col(&h.column())));
                let mut hidden = kept;
                hidden.extend(filtering);
                let plan = Projection::try_new(exprs, Arc::new(joined)).map_err(|e| e.to_string())?;
                Ok(Tracked { plan: LogicalPlan::Projection(plan), hidden })
            }
            LogicalPlan::Union(union) => self.union(union.inputs.iter().map(|i| i.as_ref()).collect()),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Ok(Tracked { plan: plan.clone(), hidden: Vec::new() })
            }
            other => {
                if self.guarded_tables_in(other).is_empty() {
                    Ok(Tracked { plan: other.clone(), hidden: Vec::new() })
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
        names.dedup();
        names
    }

    /// Subqueries left in expressions (the optimizer turns most into joins) cannot
    /// carry hidden columns; over a guarded table they make the plan unanalysable.
    fn refuse_guarded_subqueries(&self, plan: &LogicalPlan) -> Result<(), Unanalysable> {
        let mut found = None;
        for expr in plan.expressions() {
            let _ = expr.apply(|e| {
                let sub = match e {
                    Expr::ScalarSubquery(s) => Some(&s.subquery),
                    Expr::Exists(x) => Some(&x.subquery.subquery),
                    Expr::InSubquery(x) => Some(&x.subquery.subquery),
                    _ => None,
                };
                if let Some(sub) = sub
                    && let Some(table) = self.guarded_tables_in(sub).into_iter().next()
                {
                    found = Some(table);
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        match found {
            Some(table) => Err(format!("a subquery over guarded table {table:?} that could not be turned into a join")),
            None => Ok(()),
        }
    }

    fn scan(&mut self, scan: &TableScan, plan: &LogicalPlan) -> Result<Tracked, Unanalysable> {
        let name = scan.table_name.table();
        let Some(table) = self.tables.get(name) else {
            return Ok(Tracked { plan: plan.clone(), hidden: Vec::new() });
        };
        let occurrence = self.occurrences.len();
        self.occurrences.push(name.to_string());
        let visible = table.visible.schema();
        let read: Vec<usize> = scan.projection.clone().unwrap_or_else(|| (0..visible.fields().len()).collect());
        let internal_schema = table.internal.schema();
        let mut projection = read.clone();
        if self.with_row_ids {
            projection.push(internal_schema.index_of(ROW_ID).map_err(|e| e.to_string())?);
        }
        let source = provider_as_source(table.internal.clone());
        let new_scan = TableScanBuilder::new(scan.table_name.clone(), source)
            .with_projection(Some(projection))
            .with_filters(scan.filters.clone())
            .with_fetch(scan.fetch)
            .build()
            .map_err(|e| e.to_string())?;
        let hidden = Hidden { occurrence, level: Level::Row { unique: true } };
        let mut exprs: Vec<Expr> = read
            .iter()
            .map(|&i| Expr::Column(Column::new(Some(scan.table_name.clone()), visible.field(i).name())))
            .collect();
        let row = if self.with_row_ids {
            Expr::Column(Column::new(Some(scan.table_name.clone()), ROW_ID))
        } else {
            lit(ScalarValue::Int64(Some(1)))
        };
        exprs.push(row.alias(hidden.column()));
        let plan = Projection::try_new(exprs, Arc::new(LogicalPlan::TableScan(new_scan))).map_err(|e| e.to_string())?;
        Ok(Tracked { plan: LogicalPlan::Projection(plan), hidden: vec![hidden] })
    }

    /// Notes every function in `expr` outside `allowed` that reads guarded rows.
    fn check_functions<'f>(&mut self, expr: &Expr, allowed: impl Iterator<Item = &'f str> + Clone, input: &Tracked) {
        let mut bad = Vec::new();
        let _ = expr.apply(|e| {
            let name = match e {
                Expr::AggregateFunction(f) => {
                    if f.params.filter.is_some() {
                        bad.push(format!("{} with a FILTER clause", f.func.name()));
                    }
                    Some(f.func.name().to_ascii_lowercase())
                }
                Expr::WindowFunction(f) => Some(f.fun.name().to_ascii_lowercase()),
                _ => None,
            };
            if let Some(name) = name
                && !allowed.clone().any(|a| a == name)
            {
                bad.push(name);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        for function in bad {
            for table in self.tables_of(&input.hidden) {
                self.findings.push(Finding::Revealing {
                    table: table.trim_matches('"').to_string(),
                    function: function.clone(),
                });
            }
        }
    }

    fn aggregate(&mut self, input: Tracked, group: Vec<Expr>, mut aggr: Vec<Expr>) -> Result<Tracked, Unanalysable> {
        let mut hidden = Vec::with_capacity(input.hidden.len());
        for h in &input.hidden {
            let column = hidden_col(&h.column());
            let (expr, disjoint) = match h.level {
                Level::Row { unique: true } => (count(column), true),
                Level::Row { unique: false } => (count_distinct(column), false),
                Level::Group { disjoint: true } => (sum(column), true),
                Level::Group { disjoint: false } => (max(column), false),
            };
            let out = Hidden { occurrence: h.occurrence, level: Level::Group { disjoint } };
            aggr.push(expr.alias(out.column()));
            hidden.push(out);
        }
        let plan = Aggregate::try_new(Arc::new(input.plan), group, aggr).map_err(|e| e.to_string())?;
        Ok(Tracked { plan: LogicalPlan::Aggregate(plan), hidden })
    }

    fn union(&mut self, inputs: Vec<&LogicalPlan>) -> Result<Tracked, Unanalysable> {
        let tracked: Vec<Tracked> = inputs.into_iter().map(|i| self.track(i)).collect::<Result<_, _>>()?;
        let all: Vec<Hidden> = tracked.iter().flat_map(|t| t.hidden.clone()).collect();
        let mut branches = Vec::with_capacity(tracked.len());
        for branch in tracked {
            let own: Vec<String> = branch.hidden.iter().map(Hidden::column).collect();
            let mut exprs: Vec<Expr> = branch
                .plan
                .schema()
                .iter()
                .filter(|(_, field)| !own.contains(field.name()))
                .map(|(qualifier, field)| Expr::Column(Column::new(qualifier.cloned(), field.name())))
                .collect();
            for h in &all {
                let name = h.column();
                exprs.push(if own.contains(&name) {
                    hidden_col(&name)
                } else {
                    lit(ScalarValue::Int64(None)).alias(name)
                });
            }
            branches.push(LogicalPlan::Projection(
                Projection::try_new(exprs, Arc::new(branch.plan)).map_err(|e| e.to_string())?,
            ));
        }
        let mut branches = branches.into_iter();
        let mut builder = LogicalPlanBuilder::from(branches.next().ok_or("an empty union")?);
        for branch in branches {
            builder = builder.union(branch).map_err(|e| e.to_string())?;
        }
        Ok(Tracked { plan: builder.build().map_err(|e| e.to_string())?, hidden: all })
    }
}

/// After a join, a source row may appear in several output rows.
fn duplicated(h: Hidden) -> Hidden {
    let level = match h.level {
        Level::Row { .. } => Level::Row { unique: false },
        Level::Group { .. } => Level::Group { disjoint: false },
    };
    Hidden { level, ..h }
}
