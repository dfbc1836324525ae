//! The runtime model work runs on (loading, request fan-out, waiting on backends), apart from
//! DataFusion's and the servers' threads, and [`block_on`] for synchronous callers.

use std::future::Future;
use std::sync::OnceLock;

use crate::error::{Error, Result};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("semflow-inference")
            .enable_all()
            .build()
            // Without a runtime nothing can run; failing to create threads at start-up is fatal.
            .expect("failed to start the semflow-inference runtime")
    })
}

/// Runs `fut` on the inference runtime and waits for it. Called from synchronous code such as
/// a DataFusion scalar function: on a multi-threaded tokio worker the wait uses
/// `block_in_place`, so the runtime moves its other tasks to another thread meanwhile.
pub fn block_on<F>(fut: F) -> Result<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = runtime().spawn(fut);
    let wait = move || futures::executor::block_on(handle);
    let joined = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    };
    joined.map_err(|e| Error::Inference(format!("inference task failed: {e}")))
}
