//! The process's one tokio runtime.
//!
//! Created on first use (never in a constructor) and rebuilt in a forked child:
//! a DataLoader worker forked from a parent that had a runtime inherits its
//! memory but not its threads, and using it would deadlock.

use crs4_cassandra_core::ProcessOwned;
use std::sync::{Arc, Mutex};
use tokio::runtime::Runtime;

/// The process's runtime. One inherited through fork is leaked, not dropped:
/// dropping it would try to join worker threads that do not exist here.
static SLOT: Mutex<Option<ProcessOwned<Arc<Runtime>>>> = Mutex::new(None);

pub fn runtime() -> Arc<Runtime> {
    let mut guard = SLOT.lock().unwrap_or_else(|e| e.into_inner());
    ProcessOwned::get_or_insert_with(&mut guard, || {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(2, 16);
        Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("crs4-cassandra")
                .enable_all()
                .build()
                .expect("cannot start the tokio runtime"),
        )
    })
    .clone()
}
