//! Sanitized columns read as typed NULLs, at the scan.
//!
//! The guard's promise for a sanitized column is non-interference: no answer, refusal,
//! error, row count or timing class may depend on its values. Proving that for every
//! plan above the scan (filters, joins, CASE, error paths, review approvals) is a
//! losing game, so the values never enter the plan at all: the table the planner sees
//! is [`NullingTable`], whose scan replaces each sanitized column by a NULL array of the
//! column's type. Filters on those columns are never pushed into the stored file (its
//! row-group statistics know the real values); the table reports no statistics.

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{Result, ScalarValue};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use std::collections::BTreeSet;
use std::sync::Arc;

/// A table whose sanitized columns read as NULL.
#[derive(Debug)]
pub(crate) struct NullingTable {
    inner: Arc<dyn TableProvider>,
    schema: SchemaRef,
    /// Names of the columns that read as NULL.
    nulled: BTreeSet<String>,
}

impl NullingTable {
    /// Wraps `inner` so that every column named in `sanitized` reads as NULL. Returns
    /// `inner` itself when none of its columns is sanitized.
    pub fn wrap(inner: Arc<dyn TableProvider>, sanitized: &[String]) -> Arc<dyn TableProvider> {
        let source = inner.schema();
        let nulled: BTreeSet<String> =
            source.fields().iter().map(|f| f.name().clone()).filter(|n| sanitized.contains(n)).collect();
        if nulled.is_empty() {
            return inner;
        }
        let fields: Vec<Field> = source
            .fields()
            .iter()
            .map(|f| {
                let field = f.as_ref().clone();
                if nulled.contains(f.name()) { field.with_nullable(true) } else { field }
            })
            .collect();
        let schema = Arc::new(Schema::new_with_metadata(fields, source.metadata().clone()));
        Arc::new(NullingTable { inner, schema, nulled })
    }

    fn touches_nulled(&self, filter: &Expr) -> bool {
        filter.column_refs().iter().any(|c| self.nulled.contains(&c.name))
    }
}

#[async_trait]
impl TableProvider for NullingTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        let mut answers = vec![TableProviderFilterPushDown::Unsupported; filters.len()];
        let passable: Vec<(usize, &Expr)> =
            filters.iter().enumerate().filter(|(_, f)| !self.touches_nulled(f)).map(|(i, f)| (i, *f)).collect();
        let inner = self.inner.supports_filters_pushdown(&passable.iter().map(|(_, f)| *f).collect::<Vec<_>>())?;
        for ((i, _), answer) in passable.iter().zip(inner) {
            answers[*i] = answer;
        }
        Ok(answers)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // DataFusion only passes filters this table accepted, but the rule is cheap to
        // apply twice and the stored file must never see a sanitized column's filter.
        let filters: Vec<Expr> = filters.iter().filter(|f| !self.touches_nulled(f)).cloned().collect();
        let input = self.inner.scan(state, projection, &filters, limit).await?;
        let read: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect());
        if read.is_empty() {
            return Ok(input);
        }
        let input_schema = input.schema();
        let mut exprs: Vec<(Arc<dyn datafusion::physical_expr::PhysicalExpr>, String)> = Vec::with_capacity(read.len());
        for (position, &index) in read.iter().enumerate() {
            let field = self.schema.field(index);
            let expr: Arc<dyn datafusion::physical_expr::PhysicalExpr> = if self.nulled.contains(field.name()) {
                Arc::new(Literal::new(ScalarValue::try_from(field.data_type())?))
            } else {
                let name = input_schema.field(position).name();
                Arc::new(Column::new(name, position))
            };
            exprs.push((expr, field.name().clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, input)?))
    }
}
