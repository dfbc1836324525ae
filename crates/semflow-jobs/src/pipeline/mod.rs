//! Continuous pipelines: `semflow run pipelines/index.sql`.
//!
//! - [`spec`]: pipeline files (SQL or TOML) with environment substitution.
//! - [`plan`]: finding the continuous `INSERT … SELECT … FROM <kafka>` and binding its scan
//!   to one micro-batch.
//! - [`runner`]: the loop — decode, SQL, dead letters, one index commit per batch with its
//!   offsets, acknowledge.

pub mod plan;
pub mod runner;
pub mod spec;

use std::future::Future;

use datafusion::execution::context::SessionContext;

use crate::engine::Engine;
use crate::error::{Error, Result};
pub use runner::RunStats;

/// Runs every statement of `sql`; the one continuous INSERT (reading an unbounded Kafka
/// table) runs until `shutdown` resolves.
pub async fn run(
    engine: &Engine,
    sql: &str,
    shutdown: impl Future<Output = ()>,
    on_batch: impl FnMut(&RunStats),
) -> Result<RunStats> {
    let (session, job) = prepare(engine, sql).await?;
    runner::run_continuous(&session, job, shutdown, on_batch).await
}

/// Runs every statement of `sql` but the last, in a session of the pipeline's own, and plans
/// the last: the continuous INSERT, returned ready to run (nothing has connected to Kafka).
pub async fn prepare(engine: &Engine, sql: &str) -> Result<(SessionContext, plan::Continuous)> {
    let statements = Engine::parse(sql)?;
    // A session of its own: the setting below must not reach other front ends.
    let session = engine.fork_session();
    // One partition keeps each micro-batch's rows in record order (the newest version of a
    // key must win) and hands the whole batch to the model at once.
    session
        .state_ref()
        .write()
        .config_mut()
        .options_mut()
        .execution
        .target_partitions = 1;
    let mut job = None;
    let count = statements.len();
    for (i, statement) in statements.into_iter().enumerate() {
        let plan = crate::engine::plan_statement(&session, statement).await?;
        if let Some(found) = plan::continuous(&plan)? {
            if i + 1 != count {
                return Err(Error::Pipeline(
                    "the continuous INSERT … FROM <kafka table> must be the last statement".into(),
                ));
            }
            job = Some(found);
        } else {
            session.execute_logical_plan(plan).await?.collect().await?;
        }
    }
    let job = job.ok_or_else(|| {
        Error::Pipeline(
            "no continuous statement: a pipeline ends with INSERT INTO <table> SELECT … FROM <a STORED AS KAFKA table>".into(),
        )
    })?;
    Ok((session, job))
}
