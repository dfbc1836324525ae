//! SQL functions: `embed`, `rerank`, `embed_model` (inference), `chunk` (token-sized
//! splitting), `generate_query` (synthesis), the vector functions, quantized vector forms
//! (`int8_quantize`, `int8_calibration`, `binary_quantize`, `hamming_distance`) and `ir_measures`
//! (retrieval evaluation).

pub mod args;
pub mod chunk;
pub mod embed;
pub mod generate;
pub mod ir;
pub mod model;
pub mod options;
pub mod quantize;
pub mod rerank;
pub mod stats;
pub mod vector;

use std::future::Future;
use std::sync::Arc;

use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

use crate::error::Error;
use crate::inference::{block_on, Models};

/// Registers every semflow function on `ctx`: `embed`, `rerank` and `embed_model` reach every
/// model, the rest the default one.
pub fn register_all(ctx: &SessionContext, models: &Arc<Models>) {
    let inference = models.default_model();
    ctx.register_udf(ScalarUDF::from(embed::EmbedUdf::new(models.clone())));
    ctx.register_udf(ScalarUDF::from(rerank::RerankUdf::new(models.clone())));
    ctx.register_udf(ScalarUDF::from(chunk::ChunkUdf::new(inference.clone())));
    ctx.register_udf(ScalarUDF::from(generate::GenerateQueryUdf::default()));
    ctx.register_udf(ScalarUDF::from(model::EmbedModelUdf::new(models.clone())));
    for kind in vector::VectorFn::ALL {
        ctx.register_udf(ScalarUDF::from(vector::VectorUdf::new(kind)));
    }
    for form in quantize::Form::ALL {
        ctx.register_udf(ScalarUDF::from(quantize::QuantizeUdf::new(form)));
    }
    ctx.register_udf(ScalarUDF::from(quantize::HammingUdf::default()));
    ctx.register_udaf(AggregateUDF::from(
        quantize::calibration::Int8CalibrationUdf::default(),
    ));
    ctx.register_udtf(
        "semflow_stats",
        Arc::new(stats::StatsFunction::new(inference.clone())),
    );
    ctx.register_udf(ScalarUDF::from(ir::holdout::HoldoutUdf::default()));
    ctx.register_udtf("ir_measures", Arc::new(ir::IrMeasuresFunction));
    ctx.register_udtf("beir", Arc::new(ir::beir::BeirFunction));
    ctx.register_udtf(
        "embed_prompts",
        Arc::new(stats::PromptsFunction::new(inference.clone())),
    );
}

/// Runs model work for a synchronous SQL function on the inference runtime and waits for it;
/// the inference crate's errors reach DataFusion as the engine's (typed, so the front ends
/// map them to SQLSTATEs).
pub(crate) fn model_work<T, F>(work: F) -> datafusion::error::Result<T>
where
    F: Future<Output = semflow_inference::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    block_on(work)
        .and_then(|done| done)
        .map_err(|e| Error::from(e).into())
}
