//! The process's one tokio runtime.
//!
//! Created on first use (never in a constructor) and rebuilt in a forked child:
//! a DataLoader worker forked from a parent that had a runtime inherits its
//! memory but not its threads, and using it would deadlock.

use std::sync::{Arc, Mutex, OnceLock};
use tokio::runtime::Runtime;

type Slot = Option<(u32, Arc<Runtime>)>;

fn slot() -> &'static Mutex<Slot> {
    static SLOT: OnceLock<Mutex<Slot>> = OnceLock::new();
    SLOT.get_or_init(|| Mutex::new(None))
}

pub fn runtime() -> Arc<Runtime> {
    let pid = std::process::id();
    let mut guard = slot().lock().unwrap_or_else(|e| e.into_inner());
    if let Some((owner, rt)) = guard.as_ref() {
        if *owner == pid {
            return rt.clone();
        }
    }
    if let Some((_, inherited)) = guard.take() {
        // Its worker threads do not exist in this process: dropping it would
        // try to join them. Leak it instead.
        std::mem::forget(inherited);
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 16);
    let rt = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("crs4-cassandra")
            .enable_all()
            .build()
            .expect("cannot start the tokio runtime"),
    );
    *guard = Some((pid, rt.clone()));
    rt
}
