//! Differentially private answers for tables whose policy has a `dp` block.
//!
//! A query over such a table is not answered by the threshold guard at all. Its plan must
//! have one shape, checked from the plan alone (so whether a query is refused never depends
//! on the data):
//!
//! ```text
//! [Limit] [Sort] Projection(keys and aggregates) Aggregate(keys: columns; COUNT/SUM/AVG)
//!     [Filter] [SubqueryAlias] TableScan(the table)
//! ```
//!
//! It then runs as the query's own scan and filters, reading the privacy unit along, into
//! one fused pass ([`dp_bound`]) that keeps at most `max_groups_per_unit` of each person's
//! groups, bounds each part (`max_rows_per_unit` rows, sums clamped to the owner's bounds)
//! and sums the parts per group: no sort, no second aggregate, one row per group out. The noise is opendp's
//! Laplace mechanism over the vector of every released quantity, each scaled by its own
//! sensitivity, with the privacy loss checked through opendp's privacy map before anything
//! is released. Groups over keys the owner did not declare public are released only where
//! a noisy count of persons passes a threshold set from delta (partition selection).
//!
//! What the caller gets is a *core* answer (one row per released group: the keys and the
//! noisy quantities) that the query's projection, ordering and limit are applied to; the
//! core answer is what the ledger stores and replays, keyed by a canonical description of
//! the question, so that variants of one question (aliases, spacing, column order,
//! conjunct order, ORDER BY) get the same noise and spend the budget once.

use crate::dp_bound;
use crate::sanitize::NullingTable;
use crate::{GuardError, ROW_ID};
use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, SortExpr, lit, when};
use milkglass_core::DpPolicy;
use std::collections::HashMap;
use std::sync::Arc;

/// Two-sided 95% quantile of the Laplace distribution, in units of its scale.
const LAPLACE_95: f64 = 2.995_732_273_553_991; // ln(20)

/// A DP table as the guard needs it.
pub(crate) struct DpTable {
    pub reference: datafusion::common::TableReference,
    pub policy: DpPolicy,
    pub sanitized: Vec<String>,
    /// With [`ROW_ID`]: the unit for dataset tables and for tables without a privacy unit.
    pub internal: Arc<dyn TableProvider>,
    /// Each row has an id of its own (a dataset table's rows share their frame's).
    pub unique_row_ids: bool,
}

/// What a released number is made of: one noisy quantity per (aggregate input, kind).
#[derive(Debug, Clone, PartialEq)]
enum Quantity {
    /// Rows (`COUNT(*)`).
    Rows,
    /// Persons (`COUNT(DISTINCT unit)`): each person's part is 1.
    Persons,
    /// Non-null values of a column (`COUNT(c)`, AVG's denominator).
    Count(String),
    /// Sum of a column's clamped values (`SUM(c)`, AVG's numerator).
    Sum(String),
    /// Sum of the squares of a column's clamped values (for VARIANCE and STDDEV).
    SumSquares(String),
}

impl Quantity {
    fn describe(&self) -> String {
        match self {
            Quantity::Rows => "rows".into(),
            Quantity::Persons => "persons".into(),
            Quantity::Count(c) => format!("count({c})"),
            Quantity::Sum(c) => format!("sum({c})"),
            Quantity::SumSquares(c) => format!("sumsq({c})"),
        }
    }
}

/// One output column of the query.
#[derive(Debug, Clone)]
enum Output {
    Key(usize),
    Count(usize),
    Sum(usize),
    Avg {
        sum: usize,
        count: usize,
        bounds: [f64; 2],
    },
    /// A quantile: the index into [`DpQuery::quantiles`].
    Quantile(usize),
    /// `VAR_POP`/`VAR_SAMP` (`sample`), or their square root (`root`: `STDDEV...`).
    Variance {
        sum: usize,
        count: usize,
        squares: usize,
        bounds: [f64; 2],
        sample: bool,
        root: bool,
    },
}

/// The largest square of a value clamped into `[lo, hi]`.
fn max_square([lo, hi]: [f64; 2]) -> f64 {
    (lo * lo).max(hi * hi)
}

/// A query the DP mode can answer, and how.
pub struct DpQuery {
    /// The table's identity.
    pub table: String,
    /// What the question is, canonically: equal for variants of one question.
    pub question: String,
    pub epsilon: f64,
    /// Spent only when groups over non-public keys are selected.
    pub delta: f64,
    keys: Vec<(Column, DataType)>,
    quantities: Vec<Quantity>,
    /// Columns whose bounded values are kept per person and group, for quantiles.
    samples: Vec<String>,
    /// Each quantile released: (index into `samples`, the fraction asked for), in a
    /// canonical order; the core answer holds one column for each after the quantities.
    quantiles: Vec<(usize, f64)>,
    outputs: Vec<(String, Output)>,
    sort: Vec<(usize, bool, bool)>,
    limit: Option<usize>,
    /// The plan that returns the rows to bound, in [`dp_bound::Layout`]'s shape.
    rows: LogicalPlan,
    policy: DpPolicy,
    /// Declared values of every key, when all keys are public.
    public: Option<Vec<Vec<ScalarValue>>>,
    /// Every row is a person of its own (no privacy unit, and unique row ids).
    row_is_unit: bool,
}

/// What EXPLAIN PRIVACY says about a query.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrivacyExplanation {
    pub table: String,
    pub epsilon: f64,
    pub delta: f64,
    pub mechanism: String,
    /// Per output column: half-width of the 95% interval around the true value (NULL for keys).
    pub errors: Vec<(String, Option<f64>)>,
    /// Groups with fewer persons than this are likely suppressed (about half are at it).
    pub selection_threshold: Option<f64>,
}

/// The most rows per person and group a quantile query may keep (each is held in memory).
const MAX_SAMPLED_ROWS: u32 = 64;

/// Evenly spaced candidates a quantile is chosen among, over the column's bounds.
const QUANTILE_CANDIDATES: usize = 1001;

/// The aggregate functions the DP mode answers as quantiles.
pub const QUANTILE_FUNCTIONS: &[&str] =
    &["median", "approx_median", "percentile_cont", "quantile_cont", "approx_percentile_cont"];

/// `Some((column, fraction))` when the aggregate is a quantile of one plain column:
/// `MEDIAN(c)`, `APPROX_MEDIAN(c)`, `PERCENTILE_CONT(c, f)` / `QUANTILE_CONT` /
/// `APPROX_PERCENTILE_CONT` (also written `... (f) WITHIN GROUP (ORDER BY c)`).
fn quantile_of(
    function: &str,
    params: &datafusion::logical_expr::expr::AggregateFunctionParams,
) -> Result<Option<(Column, f64)>, GuardError> {
    let (column, fraction) = match (function, params.args.as_slice()) {
        ("median" | "approx_median", [Expr::Column(c)]) => (c.clone(), 0.5),
        ("percentile_cont" | "quantile_cont" | "approx_percentile_cont", [Expr::Column(c), Expr::Literal(f, _)]) => {
            let fraction = match f {
                ScalarValue::Float64(Some(f)) => *f,
                ScalarValue::Float32(Some(f)) => f64::from(*f),
                other => other.to_string().parse::<f64>().map_err(|_| refuse("a percentile is a number in [0, 1]"))?,
            };
            if !(0.0..=1.0).contains(&fraction) {
                return Err(refuse("a percentile is a number in [0, 1]"));
            }
            (c.clone(), fraction)
        }
        ("median" | "approx_median" | "percentile_cont" | "quantile_cont" | "approx_percentile_cont", _) => {
            return Err(refuse("a quantile takes one plain column and a literal fraction"));
        }
        _ => return Ok(None),
    };
    if params.distinct || params.filter.is_some() {
        return Err(refuse("quantiles take no DISTINCT or FILTER here"));
    }
    // WITHIN GROUP (ORDER BY c) names the column again; descending order is not taken.
    match params.order_by.as_slice() {
        [] => {}
        [sort] if sort.asc && matches!(&sort.expr, Expr::Column(o) if o.name == column.name) => {}
        _ => return Err(refuse("a quantile's ORDER BY is its own column, ascending")),
    }
    Ok(Some((column, fraction)))
}

fn refuse(why: impl Into<String>) -> GuardError {
    GuardError::Refused(format!("Refused under differential privacy: {}", why.into()))
}

const SHAPE: &str = "this table answers only SELECT [keys,] COUNT(*) / COUNT(col) / SUM(col) / AVG(col) \
                     FROM the table [WHERE ...] [GROUP BY columns] [ORDER BY output columns] [LIMIT n]";

/// The plan node under any number of sorts and limits, and what they asked for.
fn strip_post(plan: &LogicalPlan) -> Result<(&LogicalPlan, Vec<SortExpr>, Option<usize>), GuardError> {
    let (mut node, mut sort, mut limit) = (plan, Vec::new(), None);
    loop {
        match node {
            LogicalPlan::Limit(l) => {
                if limit.is_some() || !sort.is_empty() {
                    return Err(refuse(SHAPE));
                }
                let fetch = match l.get_fetch_type().map_err(|e| GuardError::Invalid(e.to_string()))? {
                    datafusion::logical_expr::FetchType::Literal(n) => n,
                    _ => return Err(refuse("LIMIT must be a number")),
                };
                let skip = match l.get_skip_type().map_err(|e| GuardError::Invalid(e.to_string()))? {
                    datafusion::logical_expr::SkipType::Literal(0) => 0,
                    _ => return Err(refuse("OFFSET is not supported; use LIMIT")),
                };
                let _ = skip;
                limit = fetch;
                node = &l.input;
            }
            LogicalPlan::Sort(s) => {
                if !sort.is_empty() || s.fetch.is_some() {
                    return Err(refuse(SHAPE));
                }
                sort = s.expr.clone();
                node = &s.input;
            }
            _ => return Ok((node, sort, limit)),
        }
    }
}

/// The query's column without its qualifier, for canonical text.
fn unqualified(expr: &Expr) -> String {
    expr.clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) => Transformed::yes(Expr::Column(Column::new_unqualified(c.name))),
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data.to_string())
        .unwrap_or_else(|_| expr.to_string())
}

fn split_conjunction(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryExpr(b) if b.op == datafusion::logical_expr::Operator::And => {
            split_conjunction(&b.left, out);
            split_conjunction(&b.right, out);
        }
        other => out.push(other.clone()),
    }
}

/// Checks what feeds the aggregate: filters, subquery aliases and projections, down to one
/// scan of the DP table; collects the filters' conjuncts and the projections' expressions
/// (without qualifiers), which are part of what the question is.
fn inspect_input(
    node: &LogicalPlan,
    table: &DpTable,
    predicates: &mut Vec<Expr>,
    projections: &mut Vec<String>,
) -> Result<(), GuardError> {
    let check = |e: &Expr| {
        let mut bad = false;
        let _ = e.apply(|e| {
            bad |= matches!(
                e,
                Expr::ScalarSubquery(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::AggregateFunction(_)
                    | Expr::WindowFunction(_)
            );
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        if bad { Err(refuse("filters and selected expressions may not hold subqueries or aggregates")) } else { Ok(()) }
    };
    match node {
        LogicalPlan::Filter(f) => {
            check(&f.predicate)?;
            split_conjunction(&f.predicate, predicates);
            inspect_input(&f.input, table, predicates, projections)
        }
        LogicalPlan::SubqueryAlias(a) => inspect_input(&a.input, table, predicates, projections),
        LogicalPlan::Projection(p) => {
            for e in &p.expr {
                check(e)?;
                if e.schema_name().to_string().starts_with("__mg") {
                    return Err(refuse("names starting with __mg are reserved"));
                }
            }
            let plain = p.expr.iter().all(|e| matches!(e, Expr::Column(_)));
            if !plain {
                projections.push(p.expr.iter().map(unqualified).collect::<Vec<_>>().join(", "));
            }
            inspect_input(&p.input, table, predicates, projections)
        }
        LogicalPlan::TableScan(scan) => {
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err(refuse(SHAPE));
            }
            if scan.table_name.clone().resolve("datafusion", "public")
                != table.reference.clone().resolve("datafusion", "public")
            {
                return Err(refuse("a DP table's query reads that table alone (no joins)"));
            }
            Ok(())
        }
        LogicalPlan::Join(_) => Err(refuse("a DP table's query reads that table alone (no joins)")),
        _ => Err(refuse(SHAPE)),
    }
}

/// Analyses `plan` (the caller's plan before optimization) over `table`.
pub(crate) fn analyse(plan: &LogicalPlan, name: &str, table: &DpTable) -> Result<DpQuery, GuardError> {
    let (top, sort, limit) = strip_post(plan)?;
    let LogicalPlan::Projection(projection) = top else { return Err(refuse(SHAPE)) };
    let LogicalPlan::Aggregate(aggregate) = projection.input.as_ref() else {
        return Err(refuse(format!("{SHAPE}; rows of individuals are never released")));
    };
    // Under the aggregate: filters, aliases and projections over the one scan.
    let mut predicates = Vec::new();
    let mut projections = Vec::new();
    inspect_input(&aggregate.input, table, &mut predicates, &mut projections)?;
    let policy = &table.policy;
    let unit_column = policy.privacy_unit.clone();
    let input_schema = aggregate.input.schema();

    let mut keys = Vec::new();
    for g in &aggregate.group_expr {
        let Expr::Column(c) = g else { return Err(refuse("GROUP BY takes plain columns")) };
        if unit_column.as_deref() == Some(c.name.as_str()) {
            return Err(refuse("grouping by the privacy unit would release one group per person"));
        }
        let (_, field) = input_schema.qualified_field_from_column(c).map_err(|e| GuardError::Invalid(e.to_string()))?;
        keys.push((c.clone(), field.data_type().clone()));
    }

    let mut quantities: Vec<Quantity> = Vec::new();
    let mut quantity = |q: Quantity| -> usize {
        match quantities.iter().position(|x| *x == q) {
            Some(i) => i,
            None => {
                quantities.push(q);
                quantities.len() - 1
            }
        }
    };
    // Each aggregate of the Aggregate node, by its output name.
    let mut by_name: HashMap<String, Output> = HashMap::new();
    let mut samples: Vec<String> = Vec::new();
    let mut quantiles: Vec<(usize, f64)> = Vec::new();
    // Each aggregated column as the aggregate names it (qualified by the input's alias).
    let mut columns: HashMap<String, Column> = HashMap::new();
    for (i, (qualifier, field)) in aggregate.schema.iter().enumerate() {
        if i < keys.len() {
            let _ = qualifier;
            continue;
        }
        let expr = &aggregate.aggr_expr[i - keys.len()];
        let Expr::AggregateFunction(f) = expr else { return Err(refuse(SHAPE)) };
        let p = &f.params;
        let function = f.func.name().to_ascii_lowercase();
        if let Some((c, fraction)) = quantile_of(&function, p)? {
            if !policy.bounds.contains_key(&c.name) {
                return Err(refuse(format!(
                    "column {:?} has no clamping bounds in the policy, so it has no quantiles",
                    c.name
                )));
            }
            if unit_column.as_deref() == Some(c.name.as_str()) {
                return Err(refuse("the privacy unit cannot be aggregated"));
            }
            if policy.max_rows_per_unit > MAX_SAMPLED_ROWS {
                return Err(refuse(format!(
                    "quantiles keep each person's values, so they need max_rows_per_unit at most {MAX_SAMPLED_ROWS} \
                     (this table's is {})",
                    policy.max_rows_per_unit
                )));
            }
            columns.insert(c.name.clone(), c.clone());
            let sample = match samples.iter().position(|s| *s == c.name) {
                Some(i) => i,
                None => {
                    samples.push(c.name.clone());
                    samples.len() - 1
                }
            };
            let at = match quantiles.iter().position(|&(s, f)| s == sample && f == fraction) {
                Some(i) => i,
                None => {
                    quantiles.push((sample, fraction));
                    quantiles.len() - 1
                }
            };
            by_name.insert(field.name().clone(), Output::Quantile(at));
            continue;
        }
        if p.filter.is_some() || !p.order_by.is_empty() {
            return Err(refuse("aggregates take no FILTER or ORDER BY here"));
        }
        let column = match p.args.as_slice() {
            [] => None,
            [Expr::Literal(v, _)] if !v.is_null() && function == "count" => None,
            [Expr::Column(c)] => {
                columns.insert(c.name.clone(), c.clone());
                Some(c.name.clone())
            }
            _ => return Err(refuse("aggregates take one plain column (or * for COUNT)")),
        };
        if p.distinct {
            // The number of persons is what the bounding counts anyway; other distinct
            // counts would need each person's distinct values bounded, which it does not do.
            match (function.as_str(), &column) {
                // Only the table's own column: under a projection the name could be another's.
                ("count", Some(c)) if unit_column.as_deref() == Some(c.as_str()) && projections.is_empty() => {
                    by_name.insert(field.name().clone(), Output::Count(quantity(Quantity::Persons)));
                    continue;
                }
                _ => {
                    return Err(refuse(
                        "COUNT(DISTINCT ...) is answered only for the privacy unit (the number of persons) \
                         under differential privacy",
                    ));
                }
            }
        }
        if let Some(c) = &column
            && unit_column.as_deref() == Some(c.as_str())
        {
            return Err(refuse("the privacy unit cannot be aggregated (COUNT(DISTINCT unit) counts persons)"));
        }
        let bounds = |c: &str| {
            policy.bounds.get(c).copied().ok_or_else(|| {
                refuse(format!("column {c:?} has no clamping bounds in the policy, so it cannot be summed or averaged"))
            })
        };
        let output = match (function.as_str(), column) {
            ("count", None) => Output::Count(quantity(Quantity::Rows)),
            ("count", Some(c)) => Output::Count(quantity(Quantity::Count(c))),
            ("sum", Some(c)) => {
                bounds(&c)?;
                Output::Sum(quantity(Quantity::Sum(c)))
            }
            ("avg", Some(c)) => {
                let b = bounds(&c)?;
                Output::Avg { sum: quantity(Quantity::Sum(c.clone())), count: quantity(Quantity::Count(c)), bounds: b }
            }
            (f @ ("var" | "var_samp" | "var_pop" | "variance" | "stddev" | "stddev_samp" | "stddev_pop"), Some(c)) => {
                let b = bounds(&c)?;
                Output::Variance {
                    sum: quantity(Quantity::Sum(c.clone())),
                    count: quantity(Quantity::Count(c.clone())),
                    squares: quantity(Quantity::SumSquares(c)),
                    bounds: b,
                    sample: !f.ends_with("_pop"),
                    root: f.starts_with("stddev"),
                }
            }
            (other, _) => {
                return Err(refuse(format!(
                    "{other} is not available under differential privacy; use COUNT, SUM, AVG, VARIANCE, STDDEV, \
                     MEDIAN or PERCENTILE_CONT"
                )));
            }
        };
        by_name.insert(field.name().clone(), output);
    }

    // The projection: keys and aggregates, each possibly renamed.
    let mut outputs = Vec::new();
    for expr in &projection.expr {
        let name = match expr {
            Expr::Alias(a) => a.name.clone(),
            Expr::Column(c) => c.name.clone(),
            other => other.schema_name().to_string(),
        };
        let Expr::Column(c) = expr.clone().unalias_nested().data else {
            return Err(refuse("the select list takes keys and aggregates as they are"));
        };
        let c = &c;
        let output =
            match keys.iter().position(|(k, _)| k.name == c.name && (c.relation.is_none() || k.relation == c.relation))
            {
                Some(k) if aggregate.schema.index_of_column(c).is_ok_and(|i| i < keys.len()) => Output::Key(k),
                _ => by_name.get(&c.name).cloned().ok_or_else(|| refuse(SHAPE))?,
            };
        outputs.push((name, output));
    }
    // Quantities in a canonical order, so that one question asked with its columns in
    // another order is the same question with the same stored answer.
    let mut order: Vec<usize> = (0..quantities.len()).collect();
    order.sort_by_key(|&i| quantities[i].describe());
    let position: Vec<usize> = {
        let mut p = vec![0; order.len()];
        for (new, &old) in order.iter().enumerate() {
            p[old] = new;
        }
        p
    };
    let quantities: Vec<Quantity> = order.iter().map(|&i| quantities[i].clone()).collect();
    let mut quantile_order: Vec<usize> = (0..quantiles.len()).collect();
    quantile_order.sort_by(|&a, &b| {
        let (sa, fa) = quantiles[a];
        let (sb, fb) = quantiles[b];
        samples[sa].cmp(&samples[sb]).then(fa.total_cmp(&fb))
    });
    let quantile_position: Vec<usize> = {
        let mut p = vec![0; quantile_order.len()];
        for (new, &old) in quantile_order.iter().enumerate() {
            p[old] = new;
        }
        p
    };
    let quantiles: Vec<(usize, f64)> = quantile_order.iter().map(|&i| quantiles[i]).collect();
    for (_, output) in &mut outputs {
        match output {
            Output::Key(_) => {}
            Output::Quantile(i) => *i = quantile_position[*i],
            Output::Count(q) | Output::Sum(q) => *q = position[*q],
            Output::Avg { sum, count, .. } => {
                *sum = position[*sum];
                *count = position[*count];
            }
            Output::Variance { sum, count, squares, .. } => {
                *sum = position[*sum];
                *count = position[*count];
                *squares = position[*squares];
            }
        }
    }
    let mut sorted = Vec::new();
    for s in &sort {
        let Expr::Column(c) = &s.expr else { return Err(refuse("ORDER BY takes output columns")) };
        let Some(i) = outputs.iter().position(|(n, _)| *n == c.name) else {
            return Err(refuse("ORDER BY takes output columns"));
        };
        sorted.push((i, s.asc, s.nulls_first));
    }

    let public = if keys.is_empty() {
        None
    } else {
        let mut declared = Vec::new();
        for (k, data_type) in &keys {
            let Some(values) = policy.public_keys.get(&k.name) else {
                declared.clear();
                break;
            };
            let mut scalars = Vec::new();
            for v in values {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                scalars.push(
                    ScalarValue::try_from_string(text, data_type)
                        .map_err(|e| GuardError::Invalid(format!("policy.dp.public_keys.{}: {e}", k.name)))?,
                );
            }
            declared.push(scalars);
        }
        (declared.len() == keys.len()).then_some(declared)
    };

    let epsilon = policy.per_query_epsilon();
    let delta = if keys.is_empty() || public.is_some() { 0.0 } else { policy.per_query_delta() };
    let rows = rows_plan(table, &aggregate.input, &keys, &quantities, &samples, &columns)?;

    let mut conjuncts: Vec<String> = predicates.iter().map(unqualified).collect();
    conjuncts.sort();
    conjuncts.dedup();
    let question = serde_json::json!({
        "table": name,
        "keys": keys.iter().map(|(k, _)| k.name.clone()).collect::<Vec<_>>(),
        "quantities": quantities.iter().map(Quantity::describe).collect::<Vec<_>>(),
        "quantiles": quantiles.iter().map(|&(s, f)| format!("quantile({}, {f})", samples[s])).collect::<Vec<_>>(),
        "where": conjuncts,
        "select": projections,
        "epsilon": epsilon,
        "delta": delta,
        "policy": serde_json::to_value(policy).unwrap_or_default(),
    })
    .to_string();
    Ok(DpQuery {
        table: name.to_string(),
        question,
        epsilon,
        delta,
        keys,
        quantities,
        samples,
        quantiles,
        outputs,
        sort: sorted,
        limit,
        rows,
        policy: policy.clone(),
        public,
        row_is_unit: policy.privacy_unit.is_none() && table.unique_row_ids,
    })
}

/// The plan returning each row the bounding reads ([`dp_bound::Layout`]): the keys, the
/// person (`__mg_unit`), then per quantity the row's value of it as a non-null Float64 (1
/// or 0 for counts, the clamped value or its square for sums), then per sampled column its
/// clamped value (NULL kept). It is the query's own input
/// with the scan replaced by one that also reads the privacy unit, carried up through every
/// projection.
fn rows_plan(
    table: &DpTable,
    input: &LogicalPlan,
    keys: &[(Column, DataType)],
    quantities: &[Quantity],
    samples: &[String],
    columns: &HashMap<String, Column>,
) -> Result<LogicalPlan, GuardError> {
    let plan_error = |e: datafusion::error::DataFusionError| GuardError::Invalid(e.to_string());
    let builder = LogicalPlanBuilder::from(with_unit(input, table).map_err(plan_error)?);
    let mut exprs: Vec<Expr> = keys.iter().map(|(k, _)| Expr::Column(k.clone())).collect();
    exprs.push(Expr::Column(Column::new_unqualified("__mg_unit")));
    let column = |name: &str| Expr::Column(columns.get(name).cloned().unwrap_or_else(|| Column::new_unqualified(name)));
    for (i, q) in quantities.iter().enumerate() {
        let value = match q {
            Quantity::Rows | Quantity::Persons => lit(1.0),
            Quantity::Count(c) => when(column(c).is_null(), lit(0.0)).otherwise(lit(1.0)).map_err(plan_error)?,
            Quantity::Sum(c) | Quantity::SumSquares(c) => {
                let [lo, hi] = table.policy.bounds[c];
                let value = Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(column(c)), DataType::Float64));
                let clamped = when(value.clone().lt(lit(lo)), lit(lo))
                    .when(value.clone().gt(lit(hi)), lit(hi))
                    .otherwise(value)
                    .map_err(plan_error)?;
                let value = match q {
                    Quantity::SumSquares(_) => clamped.clone() * clamped,
                    _ => clamped,
                };
                datafusion::functions::expr_fn::coalesce(vec![value, lit(0.0)])
            }
        };
        exprs.push(value.alias(format!("__mg_q{i}")));
    }
    // Then each sampled column's value, clamped, NULL where the row has none.
    for (i, c) in samples.iter().enumerate() {
        let [lo, hi] = table.policy.bounds[c];
        let value = Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(column(c)), DataType::Float64));
        let clamped = when(value.clone().lt(lit(lo)), lit(lo))
            .when(value.clone().gt(lit(hi)), lit(hi))
            .otherwise(value)
            .map_err(plan_error)?;
        exprs.push(clamped.alias(format!("__mg_s{i}")));
    }
    builder.project(exprs).map_err(plan_error)?.build().map_err(plan_error)
}

/// Each quantity's bounds for one person's part of one group: `max_rows_per_unit` rows'
/// worth of it.
fn part_bounds(policy: &DpPolicy, quantities: &[Quantity]) -> Vec<(f64, f64)> {
    let m = f64::from(policy.max_rows_per_unit);
    quantities
        .iter()
        .map(|q| match q {
            Quantity::Rows | Quantity::Count(_) => (0.0, m),
            Quantity::Persons => (0.0, 1.0),
            Quantity::Sum(c) => {
                let [lo, hi] = policy.bounds[c];
                (m * lo.min(0.0), m * hi.max(0.0))
            }
            Quantity::SumSquares(c) => (0.0, m * max_square(policy.bounds[c])),
        })
        .collect()
}

/// `plan` (checked by [`inspect_input`]) reading the privacy unit along as `__mg_unit`.
fn with_unit(plan: &LogicalPlan, table: &DpTable) -> datafusion::error::Result<LogicalPlan> {
    let unit = Expr::Column(Column::new_unqualified("__mg_unit"));
    match plan {
        LogicalPlan::TableScan(scan) => {
            // Sanitized columns read as NULL here too, except the privacy unit itself, which
            // only ever reaches the grouping (never a result).
            let nulled: Vec<String> = table
                .sanitized
                .iter()
                .filter(|c| table.policy.privacy_unit.as_deref() != Some(c.as_str()))
                .cloned()
                .collect();
            let provider = NullingTable::wrap(table.internal.clone(), &nulled);
            let scanned = LogicalPlanBuilder::scan(scan.table_name.clone(), provider_as_source(provider), None)?;
            let qualifier = scan.table_name.clone();
            let schema = scanned.schema().clone();
            let mut exprs: Vec<Expr> = schema
                .iter()
                .filter(|(_, f)| f.name() != ROW_ID)
                .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
                .collect();
            let unit_column = table.policy.privacy_unit.as_deref().unwrap_or(ROW_ID);
            exprs.push(Expr::Column(Column::new(Some(qualifier), unit_column)).alias("__mg_unit"));
            scanned.project(exprs)?.build()
        }
        LogicalPlan::Filter(f) => {
            LogicalPlanBuilder::from(with_unit(&f.input, table)?).filter(f.predicate.clone())?.build()
        }
        LogicalPlan::SubqueryAlias(a) => {
            LogicalPlanBuilder::from(with_unit(&a.input, table)?).alias(a.alias.clone())?.build()
        }
        LogicalPlan::Projection(p) => {
            let mut exprs = p.expr.clone();
            exprs.push(unit);
            LogicalPlanBuilder::from(with_unit(&p.input, table)?).project(exprs)?.build()
        }
        other => Err(datafusion::error::DataFusionError::Plan(format!("unexpected plan node {}", other.display()))),
    }
}

impl DpQuery {
    /// Sensitivity of each quantity: what one person can change it by in one group.
    fn sensitivities(&self) -> Vec<f64> {
        let m = f64::from(self.policy.max_rows_per_unit);
        self.quantities
            .iter()
            .map(|q| match q {
                Quantity::Rows | Quantity::Count(_) => m,
                Quantity::Persons => 1.0,
                Quantity::Sum(c) => {
                    let [lo, hi] = self.policy.bounds[c];
                    m * lo.abs().max(hi.abs())
                }
                Quantity::SumSquares(c) => m * max_square(self.policy.bounds[c]),
            })
            .collect()
    }

    fn selects(&self) -> bool {
        !self.keys.is_empty() && self.public.is_none()
    }

    /// The epsilon the noisy quantities get, and the one partition selection gets.
    fn split(&self) -> (f64, f64) {
        if self.selects() { (self.epsilon / 2.0, self.epsilon / 2.0) } else { (self.epsilon, 0.0) }
    }

    /// Laplace scale in units of each quantity's sensitivity. The values' epsilon is shared
    /// equally by the noisy quantities and the quantiles; the quantities' part is spread
    /// over the groups a person may join.
    fn scale(&self) -> f64 {
        let (eps_values, _) = self.split();
        f64::from(self.policy.max_groups_per_unit) * self.released() as f64 / eps_values
    }

    /// Noisy quantities and quantiles, each one share of the values' epsilon.
    fn released(&self) -> usize {
        self.quantities.len() + self.quantiles.len()
    }

    /// The epsilon of the Laplace vector over every group's quantities.
    fn laplace_epsilon(&self) -> f64 {
        self.split().0 * self.quantities.len() as f64 / self.released().max(1) as f64
    }

    /// The epsilon of one quantile in one group: its share, over the groups a person may join.
    fn quantile_epsilon(&self) -> f64 {
        self.split().0 / self.released().max(1) as f64 / f64::from(self.policy.max_groups_per_unit)
    }

    /// The Laplace scale of the noisy person counts, and how many a group needs to be released.
    fn threshold(&self) -> Option<(f64, f64)> {
        self.selects().then(|| selection(f64::from(self.policy.max_groups_per_unit), self.split().1, self.delta))
    }

    /// What the query costs and how wrong its numbers may be, before running it.
    pub fn explain(&self) -> PrivacyExplanation {
        let sensitivity = self.sensitivities();
        let scale = self.scale();
        let half = |q: usize| sensitivity[q] * scale * LAPLACE_95;
        let errors = self
            .outputs
            .iter()
            .map(|(name, o)| {
                let error = match o {
                    // A quantile's error is in rank, not value (PRIVACY.md): none stated.
                    Output::Key(_) | Output::Quantile(_) => None,
                    Output::Count(q) | Output::Sum(q) => Some(half(*q)),
                    // The ratio's error depends on the count; stated for one where the
                    // count's noise is a tenth of the count.
                    Output::Avg { sum, count, bounds } => {
                        let n = 10.0 * half(*count);
                        Some((half(*sum) / n + (bounds[1] - bounds[0]) * half(*count) / n).min(bounds[1] - bounds[0]))
                    }
                    // E[x^2] - E[x]^2 with each term's error at that count (first order),
                    // at most the largest possible variance; a root's error at most the
                    // root of the variance's.
                    Output::Variance { sum, count, squares, bounds, root, .. } => {
                        let n = 10.0 * half(*count);
                        let big = bounds[0].abs().max(bounds[1].abs());
                        let spread = (bounds[1] - bounds[0]) / 2.0;
                        let error = (half(*squares) + 2.0 * big * half(*sum) + max_square(*bounds) * half(*count)) / n;
                        let error = error.min(spread * spread);
                        Some(if *root { error.sqrt() } else { error })
                    }
                };
                (name.clone(), error)
            })
            .collect();
        let mut mechanism = "Laplace (opendp) on bounded contributions".to_string();
        if !self.quantiles.is_empty() {
            mechanism.push_str("; quantiles by noisy max over candidate scores (opendp)");
        }
        if self.selects() {
            mechanism.push_str("; Laplace partition selection");
        }
        PrivacyExplanation {
            table: self.table.clone(),
            epsilon: self.epsilon,
            delta: self.delta,
            mechanism,
            errors,
            selection_threshold: self.threshold().map(|(_, t)| t),
        }
    }

    /// Runs the rows plan, bounds each person's part in one pass ([`dp_bound`]), adds noise
    /// and selects groups: the core answer (keys, then one Float64 column per quantity, then
    /// one per quantile).
    pub(crate) async fn measure(&self, state: &SessionState) -> Result<RecordBatch, GuardError> {
        let failed = |e: datafusion::error::DataFusionError| GuardError::Execution(e.to_string());
        // Analysed (type coercion) and optimized as the caller's plan was, then with
        // data-dependent errors turned into NULLs, as everywhere in the guard.
        let optimized = state.optimize(&self.rows).map_err(|e| GuardError::Invalid(e.to_string()))?;
        let plan = crate::no_errors::without_data_errors(optimized).map_err(|e| GuardError::Invalid(e.to_string()))?;
        let physical = state.query_planner().create_physical_plan(&plan, state).await.map_err(failed)?;
        let layout = dp_bound::Layout {
            keys: self.keys.len(),
            quantities: self.quantities.len(),
            max_groups: self.policy.max_groups_per_unit.max(1) as usize,
            part_bounds: part_bounds(&self.policy, &self.quantities),
            row_is_unit: self.row_is_unit,
            samples: self.samples.len(),
            max_rows: self.policy.max_rows_per_unit as usize,
        };
        let bounded = dp_bound::bounded_sums(physical, state.task_ctx(), layout).await?;
        self.release(&bounded)
    }

    fn release(&self, bounded: &dp_bound::Bounded) -> Result<RecordBatch, GuardError> {
        let k = self.keys.len();
        let q = self.quantities.len();
        let corrupt = |e: datafusion::error::DataFusionError| GuardError::Execution(e.to_string());
        let no_samples = || vec![Vec::new(); self.samples.len()];
        // One row per group: keys, persons, then each bounded quantity; and its samples.
        let mut groups: HashMap<Vec<ScalarValue>, Group> = HashMap::new();
        {
            let batch = &bounded.sums;
            let casted: Vec<ArrayRef> = (0..=q)
                .map(|i| arrow::compute::cast(batch.column(k + i), &DataType::Float64))
                .collect::<Result<_, _>>()
                .map_err(|e| GuardError::Execution(e.to_string()))?;
            let numbers: Vec<&Float64Array> =
                casted.iter().map(|c| c.as_any().downcast_ref::<Float64Array>().expect("cast to f64")).collect();
            for row in 0..batch.num_rows() {
                let key: Vec<ScalarValue> = (0..k)
                    .map(|i| ScalarValue::try_from_array(batch.column(i), row))
                    .collect::<Result<_, _>>()
                    .map_err(corrupt)?;
                let value = |c: &Float64Array| if c.is_null(row) { 0.0 } else { c.value(row) };
                let units = value(numbers[0]);
                let sums = numbers[1..].iter().map(|c| value(c)).collect();
                let samples = bounded.samples.get(row).cloned().unwrap_or_else(no_samples);
                groups.insert(key, (units, sums, samples));
            }
        }
        // The groups to release: every declared combination, every data group (selected
        // below), or the one group of a query without keys.
        let empty = || (0.0, vec![0.0; q], no_samples());
        let mut candidates: Vec<(Vec<ScalarValue>, Group)> = match &self.public {
            Some(declared) => cartesian(declared)
                .into_iter()
                .map(|key| {
                    let group = groups.remove(&key).unwrap_or_else(empty);
                    (key, group)
                })
                .collect(),
            None if k == 0 => vec![(Vec::new(), groups.remove(&Vec::new()).unwrap_or_else(empty))],
            None => groups.into_iter().collect(),
        };
        candidates.sort_by(|a, b| compare_keys(&a.0, &b.0));
        if let Some((scale, threshold)) = self.threshold() {
            let units: Vec<f64> = candidates.iter().map(|c| c.1.0).collect();
            let noisy = laplace(&units, scale, f64::from(self.policy.max_groups_per_unit), self.split().1)?;
            let mut kept = Vec::new();
            for (candidate, n) in candidates.into_iter().zip(noisy) {
                if n > threshold {
                    kept.push(candidate);
                }
            }
            candidates = kept;
        }
        // One noise vector over every released quantity, each divided by its sensitivity
        // (so that one person moves the whole vector by at most groups x quantities in L1).
        let sensitivity = self.sensitivities();
        let normalized: Vec<f64> =
            candidates.iter().flat_map(|c| c.1.1.iter().zip(&sensitivity).map(|(v, s)| v / s)).collect();
        let bound = f64::from(self.policy.max_groups_per_unit) * q as f64;
        let noisy = laplace(&normalized, self.scale(), bound, self.laplace_epsilon())?;
        // Each quantile of each group from its own kept values: a person is in at most
        // `max_groups_per_unit` groups with at most `max_rows_per_unit` values in each.
        let mut quantiles: Vec<Vec<f64>> = Vec::with_capacity(self.quantiles.len());
        for &(sample, fraction) in &self.quantiles {
            let bounds = self.policy.bounds[&self.samples[sample]];
            let values = candidates
                .iter()
                .map(|c| {
                    quantile(&c.1.2[sample], bounds, fraction, self.policy.max_rows_per_unit, self.quantile_epsilon())
                })
                .collect::<Result<Vec<f64>, GuardError>>()?;
            quantiles.push(values);
        }

        let mut fields: Vec<Field> =
            self.keys.iter().map(|(c, t)| Field::new(c.name.clone(), t.clone(), true)).collect();
        fields.extend((0..q).map(|i| Field::new(format!("__mg_q{i}"), DataType::Float64, false)));
        let mut columns: Vec<ArrayRef> = Vec::new();
        for i in 0..k {
            let values: Vec<ScalarValue> = candidates.iter().map(|c| c.0[i].clone()).collect();
            columns.push(if values.is_empty() {
                arrow::array::new_empty_array(&self.keys[i].1)
            } else {
                ScalarValue::iter_to_array(values).map_err(corrupt)?
            });
        }
        for j in 0..q {
            let values: Vec<f64> = (0..candidates.len()).map(|g| noisy[g * q + j] * sensitivity[j]).collect();
            columns.push(Arc::new(Float64Array::from(values)));
        }
        fields.extend((0..self.quantiles.len()).map(|i| Field::new(format!("__mg_p{i}"), DataType::Float64, false)));
        columns.extend(quantiles.into_iter().map(|values| Arc::new(Float64Array::from(values)) as ArrayRef));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| GuardError::Execution(e.to_string()))
    }

    /// The schema [`DpQuery::finish`] answers with.
    pub fn output_schema(&self) -> arrow::datatypes::SchemaRef {
        let mut fields: Vec<Field> =
            self.keys.iter().map(|(c, t)| Field::new(c.name.clone(), t.clone(), true)).collect();
        fields.extend((0..self.quantities.len()).map(|i| Field::new(format!("__mg_q{i}"), DataType::Float64, false)));
        fields.extend((0..self.quantiles.len()).map(|i| Field::new(format!("__mg_p{i}"), DataType::Float64, false)));
        let empty = RecordBatch::new_empty(Arc::new(Schema::new(fields)));
        match self.finish(&empty) {
            Ok(batch) => batch.schema(),
            Err(_) => empty.schema(),
        }
    }

    /// The caller's columns from a core answer: counts rounded (never below zero), sums,
    /// averages clamped into the column's bounds; ordered and limited as asked. Each
    /// number's field carries its 95% error bound in its metadata (`milkglass.dp.ci95`).
    pub fn finish(&self, core: &RecordBatch) -> Result<RecordBatch, GuardError> {
        let k = self.keys.len();
        let explanation = self.explain();
        let quantity = |i: usize| -> &Float64Array {
            core.column(k + i).as_any().downcast_ref::<Float64Array>().expect("core quantities are f64")
        };
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for ((name, output), (_, error)) in self.outputs.iter().zip(&explanation.errors) {
            let (field, column): (Field, ArrayRef) = match output {
                Output::Key(i) => (Field::new(name, self.keys[*i].1.clone(), true), core.column(*i).clone()),
                Output::Count(q) => {
                    let values: Int64Array =
                        quantity(*q).iter().map(|v| v.map(|v| v.round().max(0.0) as i64)).collect();
                    (Field::new(name, DataType::Int64, false), Arc::new(values))
                }
                Output::Sum(q) => (Field::new(name, DataType::Float64, false), Arc::new(quantity(*q).clone())),
                Output::Quantile(i) => {
                    (Field::new(name, DataType::Float64, false), core.column(k + self.quantities.len() + i).clone())
                }
                Output::Avg { sum, count, bounds } => {
                    let values: Float64Array = quantity(*sum)
                        .iter()
                        .zip(quantity(*count).iter())
                        .map(|(s, n)| match (s, n) {
                            (Some(s), Some(n)) if n >= 1.0 => Some((s / n).clamp(bounds[0], bounds[1])),
                            _ => None,
                        })
                        .collect();
                    (Field::new(name, DataType::Float64, true), Arc::new(values))
                }
                Output::Variance { sum, count, squares, bounds, sample, root } => {
                    let spread = (bounds[1] - bounds[0]) / 2.0;
                    let values: Float64Array = (0..core.num_rows())
                        .map(|row| {
                            let (s, n, sq) =
                                (quantity(*sum).value(row), quantity(*count).value(row), quantity(*squares).value(row));
                            if n < 2.0 {
                                return None;
                            }
                            let mean = (s / n).clamp(bounds[0], bounds[1]);
                            let mut variance = sq / n - mean * mean;
                            if *sample {
                                variance *= n / (n - 1.0);
                            }
                            let variance = variance.clamp(0.0, spread * spread);
                            Some(if *root { variance.sqrt() } else { variance })
                        })
                        .collect();
                    (Field::new(name, DataType::Float64, true), Arc::new(values))
                }
            };
            let field = match error {
                Some(e) => field.with_metadata(HashMap::from([("milkglass.dp.ci95".to_string(), format!("{e}"))])),
                None => field,
            };
            fields.push(field);
            columns.push(column);
        }
        let schema = Arc::new(Schema::new(fields));
        let mut batch =
            RecordBatch::try_new(schema.clone(), columns).map_err(|e| GuardError::Execution(e.to_string()))?;
        if !self.sort.is_empty() && batch.num_rows() > 1 {
            let sort: Vec<arrow::compute::SortColumn> = self
                .sort
                .iter()
                .map(|(i, asc, nulls_first)| arrow::compute::SortColumn {
                    values: batch.column(*i).clone(),
                    options: Some(arrow::compute::SortOptions { descending: !asc, nulls_first: *nulls_first }),
                })
                .collect();
            let indices =
                arrow::compute::lexsort_to_indices(&sort, None).map_err(|e| GuardError::Execution(e.to_string()))?;
            let columns = batch
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c, &indices, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| GuardError::Execution(e.to_string()))?;
            batch = RecordBatch::try_new(schema, columns).map_err(|e| GuardError::Execution(e.to_string()))?;
        }
        if let Some(n) = self.limit {
            batch = batch.slice(0, n.min(batch.num_rows()));
        }
        Ok(batch)
    }
}

/// A group before release: its persons, its bounded quantities and its kept values.
type Group = (f64, Vec<f64>, Vec<Vec<f64>>);

/// One group's `fraction` quantile of `values` (clamped into `bounds`), chosen by opendp's
/// quantile mechanism (candidate scores, then noisy max) among evenly spaced candidates,
/// with the noise scale set so that `max_rows` values more or fewer cost at most `epsilon`
/// (checked with the mechanism's own privacy map before it runs).
fn quantile(values: &[f64], bounds: [f64; 2], fraction: f64, max_rows: u32, epsilon: f64) -> Result<f64, GuardError> {
    use opendp::domains::{AtomDomain, VectorDomain};
    use opendp::measurements::make_private_quantile;
    use opendp::measures::MaxDivergence;
    use opendp::metrics::SymmetricDistance;
    let failed = |e: opendp::error::Error| GuardError::Execution(format!("the quantile mechanism failed: {e}"));
    let [lo, hi] = bounds;
    let step = (hi - lo) / (QUANTILE_CANDIDATES - 1) as f64;
    let candidates: Vec<f64> = (0..QUANTILE_CANDIDATES).map(|i| lo + step * i as f64).collect();
    let make = |scale: f64| {
        make_private_quantile(
            VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
            SymmetricDistance,
            MaxDivergence,
            candidates.clone(),
            fraction,
            scale,
        )
        .map_err(failed)
    };
    // The loss falls as 1 / scale: measure it at scale 1, then scale to the budget.
    let at_one = make(1.0)?.map(&max_rows).map_err(failed)?;
    let measurement = make(at_one / epsilon)?;
    let loss = measurement.map(&max_rows).map_err(failed)?;
    if loss > epsilon * (1.0 + 1e-9) {
        return Err(GuardError::Execution(format!("the quantile mechanism would cost {loss}, more than {epsilon}")));
    }
    let values: Vec<f64> = values.iter().map(|v| v.clamp(lo, hi)).collect();
    measurement.invoke(&values).map_err(failed)
}

/// Partition selection's noise scale and threshold. A person is in at most `k` groups, so
/// the person counts move by at most `k` in L1: Laplace of scale `k / epsilon` makes them
/// epsilon-DP. A group present only because of one person is released when
/// `1 + Lap(b) > t`, which happens with probability `exp(-(t - 1) / b) / 2`; with
/// `t = 1 + b ln(k / (2 delta))` that is `delta / k`, and at most `delta` over the person's
/// `k` groups.
fn selection(k: f64, epsilon: f64, delta: f64) -> (f64, f64) {
    let scale = k / epsilon;
    (scale, 1.0 + scale * (k / (2.0 * delta)).ln())
}

fn compare_keys(a: &[ScalarValue], b: &[ScalarValue]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.partial_cmp(y) {
            Some(std::cmp::Ordering::Equal) | None => continue,
            Some(order) => return order,
        }
    }
    std::cmp::Ordering::Equal
}

fn cartesian(declared: &[Vec<ScalarValue>]) -> Vec<Vec<ScalarValue>> {
    let mut out = vec![Vec::new()];
    for values in declared {
        out = out
            .iter()
            .flat_map(|prefix| values.iter().map(move |v| [prefix.clone(), vec![v.clone()]].concat()))
            .collect();
    }
    out
}

/// `values` plus Laplace noise of `scale`, from opendp, after checking with opendp's privacy
/// map that an input moving by `sensitivity` in L1 costs at most `epsilon`.
pub(crate) fn laplace(values: &[f64], scale: f64, sensitivity: f64, epsilon: f64) -> Result<Vec<f64>, GuardError> {
    use opendp::domains::{AtomDomain, VectorDomain};
    use opendp::measurements::make_laplace;
    use opendp::measures::MaxDivergence;
    use opendp::metrics::L1Distance;
    let failed = |e: opendp::error::Error| GuardError::Execution(format!("the noise mechanism failed: {e}"));
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let measurement = make_laplace::<_, _, MaxDivergence>(
        VectorDomain::new(AtomDomain::<f64>::new_non_nan()),
        L1Distance::<f64>::default(),
        scale,
        None,
    )
    .map_err(failed)?;
    let loss = measurement.map(&sensitivity).map_err(failed)?;
    if loss > epsilon * (1.0 + 1e-9) {
        return Err(GuardError::Execution(format!("the mechanism would cost {loss}, more than {epsilon}")));
    }
    measurement.invoke(&values.to_vec()).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The noise's empirical distribution is Laplace with the declared scale: the
    /// Kolmogorov-Smirnov distance of 20,000 draws from the Laplace CDF stays under the
    /// Dvoretzky-Kiefer-Wolfowitz bound at a failure probability of one in a million
    /// (sqrt(ln(2 / 1e-6) / (2 n)) = 0.0269). opendp's generator cannot be seeded, so the
    /// tolerance, not a seed, makes the test reliable: it fails by chance once in 10^6 runs.
    #[test]
    fn the_noise_is_laplace_with_the_scale_epsilon_asks_for() {
        let (epsilon, sensitivity) = (0.5, 2.0);
        let scale = sensitivity / epsilon;
        let n = 20_000;
        let mut draws = laplace(&vec![0.0; n], scale, sensitivity, epsilon).unwrap();
        draws.sort_by(f64::total_cmp);
        let cdf = |x: f64| if x < 0.0 { 0.5 * (x / scale).exp() } else { 1.0 - 0.5 * (-x / scale).exp() };
        let distance = draws
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                let f = cdf(x);
                (f - i as f64 / n as f64).abs().max((f - (i + 1) as f64 / n as f64).abs())
            })
            .fold(0.0, f64::max);
        let bound = ((2.0f64 / 1e-6).ln() / (2.0 * n as f64)).sqrt();
        assert!(distance < bound, "KS distance {distance} over {bound}");
        // And a narrower scale than epsilon allows is refused before any noise is drawn.
        assert!(laplace(&[0.0], scale / 2.0, sensitivity, epsilon).is_err());
    }

    /// A group of one person passes partition selection with probability delta / k. Over
    /// 40,000 trials at delta = 0.02 the released fraction stays under its expectation plus
    /// six standard deviations of a binomial (a chance failure once in 10^9 runs).
    #[test]
    fn a_group_of_one_person_is_released_at_most_at_rate_delta() {
        for k in [1.0, 4.0] {
            let (epsilon, delta, trials) = (0.5, 0.02, 40_000);
            let (scale, threshold) = selection(k, epsilon, delta);
            let noisy = laplace(&vec![1.0; trials], scale, k, epsilon).unwrap();
            let released = noisy.iter().filter(|&&n| n > threshold).count() as f64 / trials as f64;
            let p = delta / k;
            let bound = p + 6.0 * (p * (1.0 - p) / trials as f64).sqrt();
            assert!(released <= bound, "k {k}: released {released} over {bound}");
            // And groups of many people pass: 50 persons are far above the threshold.
            assert!(threshold < 50.0, "threshold {threshold}");
        }
    }
}
