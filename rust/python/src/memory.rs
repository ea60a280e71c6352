//! When memory freed by the reads goes back to the OS.
//!
//! Batch buffers and the driver's response buffers are freed and allocated
//! again within milliseconds, at GB/s. mimalloc purges (hands back to the OS)
//! freed memory once a purge delay runs out, and then purges everything free
//! at that moment, however recently it was freed; every reuse of purged memory
//! page-faults on pages the kernel must zero first, 2 MiB at a time where
//! mimalloc uses transparent huge pages. With short delays that cost the
//! reading process up to a fifth of its CPU time at 100 ms of latency (`perf
//! record`: `clear_page_erms`); at 10 s it still purged 2 GiB in a 30 s run.
//!
//! So while any reader of this process is open, freed memory is kept for reuse
//! (mimalloc's delay is set to [`PURGE_DELAY`], a backstop), and
//! [`RELEASE_AFTER`] after the last one closes it all goes back to the OS at
//! once. What is kept is no more than the reads' own peak, which their
//! memory budget bounds.
//! `MIMALLOC_PURGE_DELAY` in the environment leaves mimalloc's own policy alone.

use crs4_cassandra_core::Owner;
use crs4_cassandra_store::runtime::runtime;
use std::sync::Mutex;
use std::time::Duration;

/// mimalloc v3's `mi_option_purge_delay` (see its `mimalloc.h`): milliseconds
/// before freed memory is handed back to the OS.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's own purge delay, in milliseconds, under this policy.
const PURGE_DELAY: std::os::raw::c_long = 10 * 60 * 1000;
/// Idle time after the last reader closes before freed memory goes back: a
/// loop that opens the next epoch's reader right away keeps its memory.
pub const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// The holds of one process; a forked child inherits its parent's, which it
/// must not count as its own.
struct Holds {
    owner: Option<Owner>,
    open: usize,
    /// Holds taken so far: a release waits for none to be taken meanwhile.
    taken: u64,
}

static HOLDS: Mutex<Holds> = Mutex::new(Holds {
    owner: None,
    open: 0,
    taken: 0,
});

fn managed() -> bool {
    std::env::var_os("MIMALLOC_PURGE_DELAY").is_none()
}

/// Sets mimalloc's purge delay (once, at import).
pub fn init() {
    if managed() {
        // SAFETY: sets an integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY) };
    }
}

/// Keeps freed memory for reuse while alive (held by each open reader).
pub struct Hold {
    owner: Owner,
}

impl Hold {
    pub fn new() -> Self {
        let mut h = HOLDS.lock().unwrap_or_else(|e| e.into_inner());
        if h.owner.is_none_or(Owner::is_inherited) {
            *h = Holds {
                owner: Some(Owner::current()),
                open: 0,
                taken: 0,
            };
        }
        h.open += 1;
        h.taken += 1;
        Self {
            owner: Owner::current(),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut h = HOLDS.lock().unwrap_or_else(|e| e.into_inner());
        if self.owner.is_inherited() || h.owner != Some(self.owner) {
            return; // inherited through fork
        }
        h.open -= 1;
        if h.open > 0 || !managed() {
            return;
        }
        let taken = h.taken;
        drop(h);
        // A timer on the runtime, not a sleeping thread: a blocking-pool thread
        // parked in a sleep per closed reader would outlive it by the pool's
        // keep-alive (10 s), one thread for every reader closed meanwhile.
        runtime().spawn(async move {
            tokio::time::sleep(RELEASE_AFTER).await;
            let idle = {
                let h = HOLDS.lock().unwrap_or_else(|e| e.into_inner());
                h.open == 0 && h.taken == taken
            };
            if idle {
                // A forced collect purges every arena's free memory now,
                // whatever its delay.
                // SAFETY: takes a flag only; callable from any thread.
                unsafe { libmimalloc_sys::mi_collect(true) }
            }
        });
    }
}
