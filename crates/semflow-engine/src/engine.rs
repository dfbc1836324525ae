//! Builds semflow's DataFusion session: the `semflow.*` settings and every SQL function.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::SessionStateBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_optimizer::sanity_checker::SanityCheckPlan;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::{EmptyRecordBatchStream, SendableRecordBatchStream};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::ast::{CreateIndex, Statement as SqlStatement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::error::{Error, Result};
use crate::inference::{Inference, InferenceConfig, Models};

mod insert;

/// The `semflow.*` session settings (declared beside the functions that read them).
pub use crate::udf::options::SemflowOptions;

/// The result of one SQL statement.
#[derive(Debug)]
pub struct StatementResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

/// A semflow engine: one DataFusion session plus the inference service behind its functions.
/// Clones share both.
#[derive(Clone)]
pub struct Engine {
    ctx: SessionContext,
    models: Arc<Models>,
}

impl Engine {
    /// A session with every semflow function registered. Models load on first use.
    pub fn new(config: InferenceConfig) -> Self {
        let session_config = SessionConfig::new()
            .with_information_schema(true)
            .with_option_extension(SemflowOptions::default());
        let ctx = SessionContext::new_with_config(session_config);
        let models = Models::new(config);
        crate::udf::register_all(&ctx, &models);
        {
            let state = ctx.state_ref();
            let mut state = state.write();
            let factories = state.table_factories_mut();
            factories.insert("LANCE".into(), Arc::new(crate::index::LanceTableFactory));
            factories.insert("KAFKA".into(), Arc::new(crate::kafka::KafkaTableFactory));
        }
        ctx.add_optimizer_rule(Arc::new(crate::index::knn::LanceKnnRule));
        ctx.register_udtf(
            "full_text_search",
            Arc::new(crate::index::fts::FullTextSearchFunction),
        );
        Self { ctx, models }
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// A session of its own for one front end or job: it shares the catalog (tables created
    /// anywhere are seen everywhere), the functions and the inference service, while the
    /// settings and planner rules it changes stay its own.
    pub fn fork_session(&self) -> SessionContext {
        fork(&self.ctx)
    }

    /// The default model's inference service.
    pub fn inference(&self) -> &Arc<Inference> {
        self.models.default_model()
    }

    /// The default and the named (`--model NAME=SPEC`) inference services.
    pub fn models(&self) -> &Arc<Models> {
        &self.models
    }

    /// Splits `sql` into statements (`;`-separated).
    pub fn parse(sql: &str) -> Result<Vec<Statement>> {
        Ok(DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?
            .into_iter()
            .collect())
    }

    /// Plans and runs one parsed statement to completion.
    pub async fn execute(&self, statement: Statement) -> Result<StatementResult> {
        let (schema, rows) = Planned::new(&self.ctx, statement)
            .await?
            .execute(&self.ctx)
            .await?;
        let batches = datafusion::physical_plan::common::collect(rows).await?;
        Ok(StatementResult { schema, batches })
    }

    /// Runs every statement in `sql`; returns each one's result.
    pub async fn run_sql(&self, sql: &str) -> Result<Vec<StatementResult>> {
        let mut out = Vec::new();
        for statement in Self::parse(sql)? {
            out.push(self.execute(statement).await?);
        }
        Ok(out)
    }
}

/// A session of its own forked from `ctx` (see [`Engine::fork_session`]).
pub fn fork(ctx: &SessionContext) -> SessionContext {
    let state = SessionStateBuilder::new_from_existing(ctx.state()).build();
    SessionContext::new_with_state(state)
}

/// One parsed statement planned in a session, not yet run: a DataFusion plan, or semflow's
/// own `CREATE INDEX` (which DataFusion does not plan).
#[derive(Debug)]
pub enum Planned {
    Plan(Box<LogicalPlan>),
    CreateIndex(Box<CreateIndex>),
}

/// Plans one statement in `ctx`. An INSERT that DataFusion refuses is explained when the
/// cause is vectors of another model than the target index's (the refusal then only says the
/// vector sizes differ).
pub async fn plan_statement(ctx: &SessionContext, statement: Statement) -> Result<LogicalPlan> {
    let insert = match &statement {
        Statement::Statement(inner) => match inner.as_ref() {
            SqlStatement::Insert(insert) => Some(insert.clone()),
            _ => None,
        },
        _ => None,
    };
    let planned = match &insert {
        Some(insert) if insert::needs_own_plan(insert) => insert::plan(ctx, insert).await,
        _ => ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(Into::into),
    };
    match planned {
        Ok(plan) => Ok(plan),
        Err(e) => match insert {
            Some(insert) => Err(vector_model_mismatch(ctx, &insert).await.unwrap_or(e)),
            None => Err(e),
        },
    }
}

/// The error naming both models when `insert` writes vectors of another model into a vector
/// column that records its model; `None` when that is not the problem (or cannot be told).
async fn vector_model_mismatch(
    ctx: &SessionContext,
    insert: &datafusion::sql::sqlparser::ast::Insert,
) -> Option<crate::Error> {
    use datafusion::sql::sqlparser::ast::TableObject;
    let TableObject::TableName(name) = &insert.table else {
        return None;
    };
    let target = ctx.table_provider(name.to_string()).await.ok()?.schema();
    let source = insert.source.clone()?;
    let query = Statement::Statement(Box::new(SqlStatement::Query(source)));
    let plan = ctx.state().statement_to_plan(query).await.ok()?;
    let source = plan.schema().as_arrow().clone();
    let columns: Vec<String> = if insert.columns.is_empty() {
        target.fields().iter().map(|f| f.name().clone()).collect()
    } else {
        insert.columns.iter().map(|c| c.to_string()).collect()
    };
    columns
        .iter()
        .zip(source.fields())
        .find_map(|(column, incoming)| {
            let stored = target.field_with_name(column).ok()?;
            crate::index::write::model_mismatch(column, stored, incoming)
        })
}

impl Planned {
    pub async fn new(ctx: &SessionContext, statement: Statement) -> Result<Self> {
        if let Statement::Statement(inner) = &statement {
            if let SqlStatement::CreateIndex(create) = inner.as_ref() {
                return Ok(Self::CreateIndex(Box::new(create.clone())));
            }
        }
        Ok(Self::Plan(Box::new(plan_statement(ctx, statement).await?)))
    }

    /// The schema of the rows it will return, known before it runs. DDL and session
    /// statements (`CREATE TABLE`, `SET`…) run when executed and return no rows.
    pub fn schema(&self) -> SchemaRef {
        match self {
            Self::Plan(plan)
                if !matches!(**plan, LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)) =>
            {
                Arc::new(plan.schema().as_arrow().clone())
            }
            _ => Arc::new(arrow::datatypes::Schema::empty()),
        }
    }

    /// Runs it in `ctx`: the schema of its rows as the run settled it (`EXECUTE` learns its
    /// prepared statement's only now), and the rows, streamed as they are computed.
    pub async fn execute(
        self,
        ctx: &SessionContext,
    ) -> Result<(SchemaRef, SendableRecordBatchStream)> {
        match self {
            Self::Plan(plan) => {
                let unbounded = crate::kafka::table::unbounded_scans(&plan);
                let df = ctx.execute_logical_plan(*plan).await?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let rows = df
                    .execute_stream()
                    .await
                    .map_err(|e| explain_unbounded(e, &unbounded))?;
                Ok((schema, rows))
            }
            Self::CreateIndex(create) => {
                crate::index::create::create_index(ctx, &create).await?;
                let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::empty());
                let rows = Box::pin(EmptyRecordBatchStream::new(schema.clone()));
                Ok((schema, rows))
            }
        }
    }
}

/// DataFusion refuses a plan whose operator waits for the end of an unbounded input (its
/// SanityCheckPlan rule, with a dump of the operator); when the input is a Kafka table read
/// without an end, say so in one line with the option that fixes it.
fn explain_unbounded(e: DataFusionError, unbounded: &[String]) -> Error {
    let sanity_check = SanityCheckPlan::new();
    match &e {
        DataFusionError::Context(rule, inner)
            if rule == sanity_check.name()
                && matches!(inner.as_ref(), DataFusionError::Plan(_))
                && !unbounded.is_empty() =>
        {
            Error::InvalidArgument(format!(
                "Kafka table {} is an unbounded stream, and this query waits for the end of its \
                 input (an aggregate, a sort or a join); create the table with OPTIONS ('end' \
                 'latest-at-start') to read the topic up to its offsets when the query starts",
                unbounded.join(", ")
            ))
        }
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An aggregate over a Kafka table without an end cannot finish: one line naming the
    /// table and the option, not DataFusion's dump of the operator. (Planning alone: no
    /// broker is contacted.)
    #[tokio::test]
    async fn an_aggregate_over_an_unbounded_topic_names_the_option() {
        let engine = Engine::new(InferenceConfig::default());
        let err = engine
            .run_sql(
                "CREATE EXTERNAL TABLE live (id TEXT, body TEXT) STORED AS KAFKA LOCATION 'docs'
                   OPTIONS ('bootstrap.servers' '127.0.0.1:9', 'group.id' 'g');
                 SELECT count(*) FROM live",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let message = err.user_message();
        assert!(
            message.starts_with("Kafka table live is an unbounded stream"),
            "{message}"
        );
        assert!(
            message.contains("OPTIONS ('end' 'latest-at-start')"),
            "{message}"
        );
        assert!(
            !message.contains('\n') && !message.contains("Exec"),
            "{message}"
        );
    }
}
