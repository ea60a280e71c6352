//! Blocking calls into Rust, made from Python: the GIL is released while
//! they run, and every [`SIGNAL_POLL`] the calling thread wakes to check for
//! signals, so that Ctrl-C stops a connect, a retry loop, an ingest write or
//! a metadata scan within a fraction of a second.

use crate::errors::store_err;
use crs4_cassandra_store::runtime::runtime;
use crs4_cassandra_store::StoreError;
use pyo3::prelude::*;
use std::future::Future;
use std::time::Duration;

/// How often a blocked call wakes to check for Ctrl-C.
pub const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Runs `fut` on the process's runtime, without the GIL, until it ends or a
/// signal handler raises (then the task is aborted: dropping its future
/// cancels its requests); `err` converts its error.
pub fn run<T, E>(
    py: Python<'_>,
    fut: impl Future<Output = Result<T, E>> + Send + 'static,
    err: impl Fn(E) -> PyErr,
) -> PyResult<T>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let rt = runtime();
    let mut task = rt.spawn(fut);
    loop {
        // (The timer is made inside the runtime: it needs its clock.)
        let polled =
            py.detach(|| rt.block_on(async { tokio::time::timeout(SIGNAL_POLL, &mut task).await }));
        match polled {
            Ok(Ok(result)) => return result.map_err(err),
            Ok(Err(join)) => {
                return Err(store_err(StoreError::Internal(format!(
                    "a background task failed: {join}"
                ))))
            }
            Err(_) => {
                if let Err(interrupt) = py.check_signals() {
                    task.abort();
                    return Err(interrupt);
                }
            }
        }
    }
}

/// Runs synchronous work (the local store, files) on the runtime's blocking
/// threads, interruptible as [`run`] is. An interrupted call returns at once;
/// the work itself finishes in the background.
pub fn run_blocking<T, E>(
    py: Python<'_>,
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
    err: impl Fn(E) -> PyErr,
) -> PyResult<T>
where
    T: Send + 'static,
    E: Send + 'static,
{
    run(
        py,
        async move { Ok(tokio::task::spawn_blocking(work).await) },
        |never: std::convert::Infallible| match never {},
    )
    .and_then(|joined| match joined {
        Ok(result) => result.map_err(err),
        Err(join) => Err(store_err(StoreError::Internal(format!(
            "a background task failed: {join}"
        )))),
    })
}

/// Runs a store future (see [`run`]).
pub fn store<T: Send + 'static>(
    py: Python<'_>,
    fut: impl Future<Output = crs4_cassandra_store::Result<T>> + Send + 'static,
) -> PyResult<T> {
    run(py, fut, store_err)
}

/// Runs `fut` on this thread, without the GIL, until it ends or a signal
/// handler raises. Unlike [`run`], the future is dropped here before this
/// returns (nothing it borrows is touched afterwards): for futures that write
/// into memory the caller lends, such as a numpy array.
pub fn here<T: Send>(
    py: Python<'_>,
    fut: impl Future<Output = crs4_cassandra_store::Result<T>> + Send,
) -> PyResult<T> {
    let rt = runtime();
    let mut fut = std::pin::pin!(fut);
    loop {
        let polled = py.detach(|| {
            rt.block_on(async { tokio::time::timeout(SIGNAL_POLL, fut.as_mut()).await })
        });
        match polled {
            Ok(result) => return result.map_err(store_err),
            Err(_) => py.check_signals()?,
        }
    }
}
