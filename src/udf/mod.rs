//! SQL functions: `embed`, `rerank`, `embed_model` (inference), `chunk` (token-sized
//! splitting), `generate_query` (synthesis)
//! and the vector functions.

pub(crate) mod args;
pub mod chunk;
pub mod embed;
pub mod generate;
pub mod model;
pub mod options;
pub mod rerank;
pub mod stats;
pub mod vector;

use std::sync::Arc;

use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::ScalarUDF;

use crate::inference::Inference;

/// Registers every semflow function on `ctx`.
pub fn register_all(ctx: &SessionContext, inference: &Arc<Inference>) {
    ctx.register_udf(ScalarUDF::from(embed::EmbedUdf::new(inference.clone())));
    ctx.register_udf(ScalarUDF::from(rerank::RerankUdf::new(inference.clone())));
    ctx.register_udf(ScalarUDF::from(chunk::ChunkUdf::new(inference.clone())));
    ctx.register_udf(ScalarUDF::from(generate::GenerateQueryUdf::default()));
    ctx.register_udf(ScalarUDF::from(model::EmbedModelUdf::new(
        inference.clone(),
    )));
    for kind in vector::VectorFn::ALL {
        ctx.register_udf(ScalarUDF::from(vector::VectorUdf::new(kind)));
    }
    ctx.register_udtf(
        "semflow_stats",
        Arc::new(stats::StatsFunction::new(inference.clone())),
    );
    ctx.register_udtf(
        "embed_prompts",
        Arc::new(stats::PromptsFunction::new(inference.clone())),
    );
}
