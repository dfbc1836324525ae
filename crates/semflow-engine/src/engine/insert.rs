//! `INSERT INTO t SELECT … FROM (VALUES …) AS v(a, b)`: DataFusion 54 plans every VALUES inside
//! an INSERT's source against the target table's columns (meant for `INSERT INTO t VALUES …`),
//! so a nested VALUES narrower than the table is refused ("Inconsistent data length across
//! values list"). Such a source is planned here as the query it is, then mapped onto the
//! table as DataFusion maps any INSERT source: by position or by the listed columns, each cast
//! to its column's type, unlisted columns their default or NULL.

use std::ops::ControlFlow;

use datafusion::common::{plan_err, Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::{
    Insert, Query, SetExpr, Statement as SqlStatement, TableObject, Visit, Visitor,
};

use crate::error::Result;

/// Whether `insert` is a plain `INSERT INTO table [(columns)] query` whose query is not a
/// VALUES list itself but holds one somewhere: the shape DataFusion plans wrongly.
pub fn needs_own_plan(insert: &Insert) -> bool {
    let Some(source) = &insert.source else {
        return false;
    };
    let plain = matches!(insert.table, TableObject::TableName(_))
        && !insert.overwrite
        && !insert.replace_into
        && insert.or.is_none()
        && insert.on.is_none()
        && insert.returning.is_none()
        && insert.partitioned.is_none()
        && insert.after_columns.is_empty();
    plain && !matches!(*source.body, SetExpr::Values(_)) && holds_values(source)
}

/// Whether a VALUES list appears anywhere in `query`.
fn holds_values(query: &Query) -> bool {
    struct FindValues;
    impl Visitor for FindValues {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            match *query.body {
                SetExpr::Values(_) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    query.visit(&mut FindValues).is_break()
}

/// Plans `insert` (see [`needs_own_plan`]): its query alone, then the projection onto the
/// table's columns and the insert.
pub async fn plan(ctx: &SessionContext, insert: &Insert) -> Result<LogicalPlan> {
    let (TableObject::TableName(name), Some(source)) = (&insert.table, &insert.source) else {
        return plan_err!("INSERT: expected a table and a query").map_err(Into::into);
    };
    let table = TableReference::parse_str(&name.to_string());
    let provider = ctx.table_provider(table.clone()).await?;
    let target = DFSchema::try_from(provider.schema())?;
    let query = Statement::Statement(Box::new(SqlStatement::Query(source.clone())));
    let source = ctx.state().statement_to_plan(query).await?;

    // For each of the table's columns, the position of the source column that fills it.
    let mut filled_from: Vec<Option<usize>> = vec![None; target.fields().len()];
    if insert.columns.is_empty() {
        for (i, slot) in filled_from.iter_mut().enumerate() {
            *slot = Some(i);
        }
    } else {
        let normalize = ctx
            .state()
            .config()
            .options()
            .sql_parser
            .enable_ident_normalization;
        for (j, column) in insert.columns.iter().enumerate() {
            let name = match column.0.as_slice() {
                [part] => match part.as_ident() {
                    Some(ident) if normalize && ident.quote_style.is_none() => {
                        ident.value.to_lowercase()
                    }
                    Some(ident) => ident.value.clone(),
                    None => column.to_string(),
                },
                _ => column.to_string(),
            };
            let Some(i) = target.index_of_column_by_name(None, &name) else {
                return plan_err!("INSERT INTO {table}: no column named {name}")
                    .map_err(Into::into);
            };
            if filled_from[i].replace(j).is_some() {
                return plan_err!("INSERT INTO {table}: column {name} is listed twice")
                    .map_err(Into::into);
            }
        }
    }
    let given = filled_from.iter().flatten().count();
    if given != source.schema().fields().len() {
        return plan_err!(
            "INSERT INTO {table}: the query gives {} columns for {given}",
            source.schema().fields().len()
        )
        .map_err(Into::into);
    }
    let columns = filled_from
        .iter()
        .enumerate()
        .map(|(i, from)| {
            let field = target.field(i);
            let value = match from {
                Some(j) => Expr::Column(Column::from(source.schema().qualified_field(*j)))
                    .cast_to(field.data_type(), source.schema())?,
                None => provider
                    .get_column_default(field.name())
                    .cloned()
                    .unwrap_or(Expr::Literal(ScalarValue::Null, None))
                    .cast_to(field.data_type(), &DFSchema::empty())?,
            };
            Ok(value.alias(field.name()))
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    let projected = LogicalPlanBuilder::from(source).project(columns)?.build()?;
    let plan = LogicalPlanBuilder::insert_into(
        projected,
        table,
        provider_as_source(provider),
        InsertOp::Append,
    )?
    .build()?;
    Ok(plan)
}
