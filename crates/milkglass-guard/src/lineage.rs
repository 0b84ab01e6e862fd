//! Column lineage: which sanitized source columns each output column derives from,
//! and where sanitized columns are used as keys (filters, joins, groups, sorts).
//!
//! Data enters a plan only through scans, so following every field from the scans
//! up through each node's expressions finds every output that a sanitized column
//! can reach, whatever it is renamed to or computed into.

use crate::{Finding, Tables};
use datafusion::common::{Column, DFSchema};
use datafusion::logical_expr::utils::grouping_set_to_exprlist;
use datafusion::logical_expr::{Distinct, Expr, JoinType, LogicalPlan};
use std::collections::BTreeSet;

/// A sanitized source: (table, column).
pub(crate) type Source = (String, String);
type Lineage = Vec<BTreeSet<Source>>;

pub(crate) struct LineageAnalysis<'a> {
    tables: &'a Tables,
    pub findings: Vec<Finding>,
}

impl<'a> LineageAnalysis<'a> {
    pub fn new(tables: &'a Tables) -> Self {
        LineageAnalysis { tables, findings: Vec::new() }
    }

    /// The sanitized sources of each output field of `plan`, one entry per field of
    /// its schema. A node whose analysis does not give exactly that is unanalysable,
    /// and each of its outputs may then carry anything read below.
    pub fn lineage(&mut self, plan: &LogicalPlan) -> Lineage {
        let width = plan.schema().fields().len();
        let lineage = self.lineage_of(plan);
        if lineage.len() == width {
            return lineage;
        }
        self.findings.push(Finding::Unanalysable {
            reason: format!("column lineage of a {} step", plan.display().to_string().split(':').next().unwrap_or("")),
        });
        vec![lineage.into_iter().flatten().collect(); width]
    }

    fn lineage_of(&mut self, plan: &LogicalPlan) -> Lineage {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let Some((name, table)) = self.tables.scanned(scan) else {
                    // Something the guard does not hold: what it reads is unknown.
                    self.findings.push(Finding::Unanalysable { reason: format!("a scan of {}", scan.table_name) });
                    return vec![BTreeSet::new(); plan.schema().fields().len()];
                };
                for filter in &scan.filters {
                    for column in filter.column_refs() {
                        if table.policy.sanitized_columns.contains(&column.name) {
                            self.key(name, &column.name, "filter");
                        }
                    }
                }
                plan.schema()
                    .fields()
                    .iter()
                    .map(|f| {
                        let mut set = BTreeSet::new();
                        if table.policy.sanitized_columns.contains(f.name()) {
                            set.insert((name.to_string(), f.name().clone()));
                        }
                        set
                    })
                    .collect()
            }
            LogicalPlan::Projection(p) => {
                let input = self.lineage(&p.input);
                p.expr.iter().map(|e| sources(e, p.input.schema(), &input)).collect()
            }
            LogicalPlan::Filter(f) => {
                let input = self.lineage(&f.input);
                self.keys(&f.predicate, f.input.schema(), &input, "filter");
                input
            }
            LogicalPlan::Sort(s) => {
                let input = self.lineage(&s.input);
                for sort in &s.expr {
                    self.keys(&sort.expr, s.input.schema(), &input, "sort key");
                }
                input
            }
            LogicalPlan::Limit(l) => self.lineage(&l.input),
            LogicalPlan::Repartition(r) => self.lineage(&r.input),
            LogicalPlan::SubqueryAlias(s) => self.lineage(&s.input),
            LogicalPlan::Aggregate(a) => {
                let input = self.lineage(&a.input);
                for group in &a.group_expr {
                    self.keys(group, a.input.schema(), &input, "group key");
                }
                // The output: each distinct grouping expression (a grouping set lists
                // several), the grouping id when there are sets, then the aggregates.
                let groups = grouping_set_to_exprlist(&a.group_expr).unwrap_or_default();
                let mut out: Lineage = groups.iter().map(|e| sources(e, a.input.schema(), &input)).collect();
                if matches!(a.group_expr.as_slice(), [Expr::GroupingSet(_)]) {
                    out.push(out.iter().flatten().cloned().collect());
                }
                out.extend(a.aggr_expr.iter().map(|e| sources(e, a.input.schema(), &input)));
                out
            }
            LogicalPlan::Distinct(Distinct::All(inner)) => {
                let input = self.lineage(inner);
                for set in &input {
                    for (table, column) in set {
                        self.key(table, column, "DISTINCT key");
                    }
                }
                input
            }
            LogicalPlan::Window(w) => {
                let mut input = self.lineage(&w.input);
                for expr in &w.window_expr {
                    if let Expr::WindowFunction(f) = expr.clone().unalias() {
                        for key in f.params.partition_by.iter().chain(f.params.order_by.iter().map(|s| &s.expr)) {
                            self.keys(key, w.input.schema(), &input, "window key");
                        }
                    }
                }
                let added: Lineage = w.window_expr.iter().map(|e| sources(e, w.input.schema(), &input)).collect();
                input.extend(added);
                input
            }
            LogicalPlan::Join(j) => {
                let left = self.lineage(&j.left);
                let right = self.lineage(&j.right);
                let both: Lineage = left.iter().chain(right.iter()).cloned().collect();
                let schema = j.left.schema().join(j.right.schema()).ok();
                if let Some(schema) = &schema {
                    for (l, r) in &j.on {
                        self.keys(l, schema, &both, "join key");
                        self.keys(r, schema, &both, "join key");
                    }
                    if let Some(filter) = &j.filter {
                        self.keys(filter, schema, &both, "join condition");
                    }
                }
                match j.join_type {
                    JoinType::LeftSemi | JoinType::LeftAnti => left,
                    JoinType::RightSemi | JoinType::RightAnti => right,
                    JoinType::LeftMark | JoinType::RightMark => {
                        let (kept, other) =
                            if j.join_type == JoinType::LeftMark { (left, right) } else { (right, left) };
                        let mark: BTreeSet<Source> = other.into_iter().flatten().collect();
                        kept.into_iter().chain(std::iter::once(mark)).collect()
                    }
                    _ => both,
                }
            }
            LogicalPlan::Union(u) => {
                let mut out: Lineage = vec![BTreeSet::new(); plan.schema().fields().len()];
                for input in &u.inputs {
                    for (i, set) in self.lineage(input).into_iter().enumerate() {
                        if let Some(slot) = out.get_mut(i) {
                            slot.extend(set);
                        }
                    }
                }
                out
            }
            other => {
                // A node the analysis does not model: every output may carry anything read below.
                let mut everything = BTreeSet::new();
                for input in other.inputs() {
                    everything.extend(self.lineage(input).into_iter().flatten());
                }
                vec![everything; other.schema().fields().len()]
            }
        }
    }

    fn keys(&mut self, expr: &Expr, schema: &DFSchema, lineage: &Lineage, usage: &str) {
        for (table, column) in sources(expr, schema, lineage) {
            self.key(&table, &column, usage);
        }
    }

    fn key(&mut self, table: &str, column: &str, usage: &str) {
        let finding =
            Finding::SanitizedKey { table: table.to_string(), column: column.to_string(), usage: usage.to_string() };
        if !self.findings.contains(&finding) {
            self.findings.push(finding);
        }
    }
}

/// The sanitized sources an expression reads, through the input's lineage.
fn sources(expr: &Expr, schema: &DFSchema, lineage: &Lineage) -> BTreeSet<Source> {
    let mut out = BTreeSet::new();
    for column in expr.column_refs() {
        match index_of(schema, column).and_then(|i| lineage.get(i)) {
            Some(set) => out.extend(set.iter().cloned()),
            // Unresolvable, or a position the lineage does not cover: assume the worst.
            None => out.extend(lineage.iter().flatten().cloned()),
        }
    }
    out
}

fn index_of(schema: &DFSchema, column: &Column) -> Option<usize> {
    schema.index_of_column(column).ok().or_else(|| {
        // An unqualified reference resolves only when exactly one field has the name.
        let mut matching = schema.iter().enumerate().filter(|(_, (_, f))| f.name() == &column.name);
        match (matching.next(), matching.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    })
}
