//! The two sides of every RPC measurement: servers on one dedicated thread running a
//! current-thread tokio runtime, clients on the caller's own current-thread runtime (in the
//! client processes of the deployed layout, on one such dedicated thread too). The
//! in-process `bus` scenario has no server side: every system runs on one shared multi-thread
//! runtime with [`BUS_WORKERS`] workers.

use anyhow::Context as _;
use std::future::Future;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::runtime::{Builder, Handle, Runtime};
use tokio::sync::oneshot;

/// A current-thread runtime driven by its own OS thread; every server of a scenario lives here.
/// Dropping it stops the thread and drops every task on it (and so every server socket).
pub(crate) struct ServerRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerRuntime {
    pub(crate) fn start() -> anyhow::Result<ServerRuntime> {
        let rt = Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the server runtime")?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-server".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                });
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .context("spawning the server thread")?;
        Ok(ServerRuntime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Runs `fut` on the server runtime (binding listeners and spawning server tasks there) and
    /// waits for its result from the caller's runtime.
    pub(crate) async fn run<F, T>(&self, fut: F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.handle
            .spawn(fut)
            .await
            .context("server setup task panicked")?
    }
}

impl ServerRuntime {
    /// Runs `fut` as a task on this runtime and blocks the calling thread (which must not be a
    /// runtime thread) until it ends: a child process's control thread hands its client work
    /// to the one runtime thread this way.
    pub(crate) fn block_on<F, T>(&self, fut: F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        futures::executor::block_on(self.run(fut))
    }
}

impl Drop for ServerRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The clients' runtime: current-thread, run with `block_on` on the calling thread.
pub(crate) fn client_runtime() -> anyhow::Result<Runtime> {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the client runtime")
}

/// Worker threads of the `bus` runtime.
pub(crate) const BUS_WORKERS: usize = 2;

/// The `bus` scenario's runtime: multi-thread with [`BUS_WORKERS`] workers, the same for every
/// system. Its publishers and subscribers are spawned tasks (so they run on the workers, never
/// on the thread that calls `block_on`).
pub(crate) fn bus_runtime() -> anyhow::Result<Runtime> {
    Builder::new_multi_thread()
        .worker_threads(BUS_WORKERS)
        .thread_name("bench-bus")
        .enable_all()
        .build()
        .context("building the bus runtime")
}
