//! Runtime errors that depend on data become NULLs.
//!
//! Whether a query fails is an answer too: `1 / (Age - 22)` fails exactly when someone
//! is 22. The guard runs the query before it decides, so an error that depends on a
//! guarded value would tell the caller one bit about some row. The common sources are
//! rewritten away before anything runs: a division or remainder by zero yields NULL
//! (`a / NULLIF(b, 0)`), and a cast that cannot convert a value yields NULL (`TRY_CAST`),
//! including the casts type coercion inserted. What still fails (an exotic function
//! given a bad argument) answers with one fixed message, audited with the detail.

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator, TryCast, lit};

/// Rewrites every expression of `plan` (subqueries included) so that division by zero
/// and failed casts give NULL instead of an error. Output names are preserved.
pub(crate) fn without_data_errors(plan: LogicalPlan) -> Result<LogicalPlan> {
    let rewritten = plan.transform_up_with_subqueries(|node| {
        // A scan's filters only prune files and row groups; the Filter above re-checks.
        // A Union has no expressions of its own (and its inputs' schemas do not join).
        let schema = match &node {
            LogicalPlan::TableScan(_) | LogicalPlan::Union(_) => None,
            other => inputs_schema(other).ok(),
        };
        let Some(schema) = schema else { return Ok(Transformed::no(node)) };
        let preserver = NamePreserver::new(&node);
        let node = node.map_expressions(|expr| {
            let saved = preserver.save(&expr);
            let out = expr.transform_up(|e| Ok(errorless(e, &schema)))?;
            Ok(if out.transformed { Transformed::yes(saved.restore(out.data)) } else { out })
        })?;
        if node.transformed { node.map_data(|p| p.recompute_schema()) } else { Ok(node) }
    })?;
    Ok(rewritten.data)
}

/// The columns a node's expressions may read: all of its inputs' side by side.
fn inputs_schema(node: &LogicalPlan) -> Result<DFSchema> {
    let mut schema = DFSchema::empty();
    for input in node.inputs() {
        schema = schema.join(input.schema())?;
    }
    Ok(schema)
}

fn errorless(expr: Expr, schema: &DFSchema) -> Transformed<Expr> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: op @ (Operator::Divide | Operator::Modulo), right })
            if !is_nonzero_literal(&right) && !is_nullif_zero(&right) =>
        {
            // The zero must have the divisor's type: the plan is already type-checked.
            let zero = right.get_type(schema).ok().and_then(|t| ScalarValue::new_zero(&t).ok());
            match zero {
                Some(zero) => {
                    let guarded = datafusion::functions::core::expr_fn::nullif(*right, lit(zero));
                    Transformed::yes(Expr::BinaryExpr(BinaryExpr { left, op, right: Box::new(guarded) }))
                }
                None => Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })),
            }
        }
        Expr::Cast(cast) => Transformed::yes(Expr::TryCast(TryCast::new_from_field(cast.expr, cast.field))),
        other => Transformed::no(other),
    }
}

fn is_nonzero_literal(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(value, _) => {
            !value.is_null() && ScalarValue::new_zero(&value.data_type()).is_ok_and(|zero| zero != *value)
        }
        _ => false,
    }
}

/// `NULLIF(x, 0)` already: the rewrite is idempotent.
fn is_nullif_zero(expr: &Expr) -> bool {
    matches!(expr, Expr::ScalarFunction(f) if f.name() == "nullif")
}
