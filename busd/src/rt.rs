//! The async runtime: one `async-executor` executor driven by `async-io` on
//! the main thread, and zbus's per-connection executors ticked on it (zbus
//! would otherwise start an OS thread for every connection, and kata-agent
//! opens one for every call).

use std::future::Future;
use std::time::Duration;

pub use async_executor::Task;

static EXECUTOR: async_executor::Executor<'static> = async_executor::Executor::new();

/// Runs `f`, and every task spawned meanwhile, on the calling thread.
pub fn block_on<T>(f: impl Future<Output = T>) -> T {
    async_io::block_on(EXECUTOR.run(f))
}

/// Starts a task; dropping the returned handle cancels it (`detach` keeps
/// it running).
pub fn spawn<F>(f: F) -> Task<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    EXECUTOR.spawn(f)
}

pub async fn sleep(d: Duration) {
    async_io::Timer::after(d).await;
}

/// `f`'s output, or `None` when `d` passes first.
pub async fn timeout<T>(d: Duration, f: impl Future<Output = T>) -> Option<T> {
    futures_lite::future::or(async { Some(f.await) }, async {
        sleep(d).await;
        None
    })
    .await
}

/// Runs the tasks of `conn` (built with `internal_executor(false)`) until
/// the returned handle is dropped.
pub fn drive(conn: &zbus::Connection) -> Task<()> {
    let conn = conn.clone();
    spawn(async move {
        loop {
            conn.executor().tick().await;
        }
    })
}
