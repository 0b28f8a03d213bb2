//! The runtime the workers run on in `serve`: their own threads, at a lower scheduling priority
//! than the API's, so that when requests and background work (health checks, fan-out, the
//! process manager) want the cores at once, the kernel gives them to the requests first. When
//! the API is quiet the workers have the machine to themselves: a niced thread only yields to
//! busier, higher-priority ones, it is never paused.

use std::future::Future;

use anyhow::Context;
use tokio::runtime::{Handle, Runtime};

/// A multi-threaded runtime whose threads (workers and blocking pool) run at `nice`.
pub struct Background {
    runtime: Option<Runtime>,
}

impl Background {
    /// Starts the runtime; `nice` is the threads' nice value (0 = the API's priority, up to 19).
    pub fn start(nice: i32) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("background")
            .enable_all()
            .on_thread_start(move || {
                // On Linux PRIO_PROCESS with no pid is the calling thread, not the whole process.
                if let Err(error) = rustix::process::setpriority_process(None, nice) {
                    tracing::warn!(%error, nice, "cannot lower the priority of a background thread");
                }
            })
            .build()
            .context("starting the background runtime")?;
        Ok(Self { runtime: Some(runtime) })
    }

    /// Runs `future` on the background runtime (tasks it spawns run there too) and waits for it.
    pub async fn run<F>(&self, future: F) -> anyhow::Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle().spawn(future).await.context("a background start-up task failed")
    }

    fn handle(&self) -> &Handle {
        self.runtime.as_ref().expect("the runtime lives until drop").handle()
    }
}

impl Drop for Background {
    /// The workers are stopped before this ([`crate::worker::Workers::stop`]); what is left (a
    /// blocking SQLite call finishing its transaction) is not waited for here, since dropping a
    /// runtime from async code must not block.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
