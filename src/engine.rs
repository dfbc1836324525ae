//! Builds semflow's DataFusion session: the `semflow.*` settings and every SQL function.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::execution::SessionStateBuilder;
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

use crate::error::Result;
use crate::inference::{Inference, InferenceConfig};

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
    inference: Arc<Inference>,
}

impl Engine {
    /// A session with every semflow function registered. Models load on first use.
    pub fn new(config: InferenceConfig) -> Self {
        let session_config = SessionConfig::new()
            .with_information_schema(true)
            .with_option_extension(SemflowOptions::default());
        let ctx = SessionContext::new_with_config(session_config);
        let inference = Inference::new(config);
        crate::udf::register_all(&ctx, &inference);
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
        Self { ctx, inference }
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// A session of its own for one front end or job: it shares the catalog (tables created
    /// anywhere are seen everywhere), the functions and the inference service, while the
    /// settings and planner rules it changes stay its own.
    pub fn fork_session(&self) -> SessionContext {
        let state = SessionStateBuilder::new_from_existing(self.ctx.state()).build();
        SessionContext::new_with_state(state)
    }

    pub fn inference(&self) -> &Arc<Inference> {
        &self.inference
    }

    /// Splits `sql` into statements (`;`-separated).
    pub fn parse(sql: &str) -> Result<Vec<Statement>> {
        Ok(DFParser::parse_sql_with_dialect(sql, &GenericDialect {})?
            .into_iter()
            .collect())
    }

    /// Plans and runs one parsed statement to completion.
    pub async fn execute(&self, statement: Statement) -> Result<StatementResult> {
        if let Statement::Statement(inner) = &statement {
            if let datafusion::sql::sqlparser::ast::Statement::CreateIndex(create) = inner.as_ref()
            {
                crate::index::create::create_index(&self.ctx, create).await?;
                let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::empty());
                return Ok(StatementResult {
                    schema,
                    batches: vec![],
                });
            }
        }
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        let df = self.ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await?;
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
