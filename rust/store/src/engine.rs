//! The fetch engine: keeps a bounded window of batch reads in flight and
//! delivers finished batches in plan order (`ordered`) or as they complete.
//!
//! Completion order never changes a batch's composition: each read fills the
//! batch the plan assigned. Memory is bounded: at most `window` batches are
//! being read or waiting to be reordered, plus `ready` finished ones queued for
//! the consumer; their buffers come from a recycling [`ArenaPool`]. The window
//! tunes itself ([`WindowTuner`]) within a memory budget unless fixed.

use crate::batch::{ArenaPool, Batch, BatchJob};
use crate::decode::decode_stage;
use crate::error::{Result, StoreError};
use crate::runtime::runtime;
use crate::tuner::{self, WindowTuner};
use crate::TableReader;
use crs4_cassandra_core::PlannedBatch;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Batch reads in flight (and awaiting reorder): the starting point when
    /// `autotune`, else a fixed number.
    pub window: usize,
    /// Grow the window while it raises throughput (see [`WindowTuner`]).
    pub autotune: bool,
    /// Bytes of batches in flight the tuner may use at most.
    pub memory_budget: usize,
    /// Finished batches queued for the consumer at most.
    pub ready: usize,
    /// Deliver in plan order (true) or completion order (false).
    pub ordered: bool,
    /// Decode each batch's images after its read (on rayon, overlapping later reads).
    pub decode: Option<DecodeOptions>,
    /// Leave samples that cannot be read (missing, empty, unreadable value) out
    /// of their batch and report them in `Batch::skipped`, instead of failing.
    pub skip_bad_samples: bool,
}

/// How the decode stage turns encoded images into pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeOptions {
    /// Resize every image to (height, width); None keeps each image's size.
    pub size: Option<(u32, u32)>,
    /// Drop samples that fail to decode (reported in `Batch::skipped`)
    /// instead of failing the batch.
    pub skip_errors: bool,
}

/// Default bytes of batches in flight. Hiding a round trip takes throughput
/// times the time a whole batch takes to arrive, which under load is well above
/// the network's round trip (a batch waits for its slowest sample): at 1.5 GB/s
/// and 100 ms of added latency, about 1 GB. Small beside a training host's memory.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;
/// Batch reads a stream starts with; each delivered batch allows
/// `SLOW_START_STEP` more, up to the window (the window quadruples every round
/// trip, like TCP's slow start), so that the first batch of an epoch does not
/// queue behind a whole window of reads (at 100 ms of latency and a window of
/// 64, 0.14 s to the first batch instead of 0.8 s).
const SLOW_START: usize = 8;
const SLOW_START_STEP: usize = 3;
/// Upper bound of the tuned window, whatever the budget.
const MAX_WINDOW: usize = 256;

impl EngineOptions {
    /// A fixed window of `window` batch reads (no tuning), as an expert knob.
    pub fn fixed_window(&mut self, window: usize) {
        self.window = window.max(1);
        self.autotune = false;
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            window: cores.clamp(2, 8),
            autotune: true,
            memory_budget: DEFAULT_MEMORY_BUDGET,
            ready: 2,
            ordered: true,
            decode: None,
            skip_bad_samples: false,
        }
    }
}

/// Finished batches, in delivery order. Dropping it stops the background work.
pub struct BatchStream {
    rx: mpsc::Receiver<Result<Batch>>,
    driver: tokio::task::JoinHandle<()>,
    remaining: usize,
    window: Arc<AtomicUsize>,
}

// Returned once per batch and moved straight on: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Batch(Batch),
    End,
    /// Nothing arrived within the wait; the caller may check for interrupts and wait again.
    Pending,
}

impl BatchStream {
    /// Waits up to `wait` for the next batch (blocking the calling thread, which
    /// must not be a runtime thread).
    pub fn next_blocking(&mut self, wait: Duration) -> Result<Next> {
        if self.remaining == 0 {
            return Ok(Next::End);
        }
        let rt = runtime();
        match rt.block_on(async { tokio::time::timeout(wait, self.rx.recv()).await }) {
            Err(_) => Ok(Next::Pending),
            Ok(Some(Ok(batch))) => {
                self.remaining -= 1;
                Ok(Next::Batch(batch))
            }
            Ok(Some(Err(e))) => {
                self.remaining = 0;
                Err(e)
            }
            Ok(None) => {
                self.remaining = 0;
                Err(StoreError::Internal(
                    "the fetch task ended before delivering every batch".into(),
                ))
            }
        }
    }

    pub async fn next(&mut self) -> Option<Result<Batch>> {
        if self.remaining == 0 {
            return None;
        }
        let item = self.rx.recv().await;
        self.remaining = match &item {
            Some(Ok(_)) => self.remaining - 1,
            _ => 0,
        };
        Some(item.unwrap_or_else(|| {
            Err(StoreError::Internal(
                "the fetch task ended before delivering every batch".into(),
            ))
        }))
    }

    /// Batches not yet delivered.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// Batch reads the stream allows in flight now (the tuner's current choice).
    pub fn window(&self) -> usize {
        self.window.load(Ordering::Relaxed)
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Aborting the driver drops its JoinSet, which aborts every read in flight.
        self.driver.abort();
    }
}

pub struct FetchEngine;

impl FetchEngine {
    /// Starts reading `batches` (this reader's share of the epoch plan) of
    /// `reader`, where batch indices refer to `ids`.
    pub fn start(
        reader: Arc<dyn TableReader>,
        ids: Arc<[Uuid]>,
        batches: Vec<PlannedBatch>,
        options: EngineOptions,
    ) -> BatchStream {
        let tuner = if options.autotune {
            let start = tuner::recall(&reader.spec().table).unwrap_or(options.window);
            let outside = held_outside_window(options.ready);
            WindowTuner::auto(start, MAX_WINDOW, options.memory_budget)
                .reserve(outside)
                .learning_for(&reader.spec().table)
        } else {
            WindowTuner::fixed(options.window)
        };
        let (tx, rx) = mpsc::channel(options.ready.max(1));
        let remaining = batches.len();
        let pool = ArenaPool::new(POOL_FREE);
        let window = Arc::new(AtomicUsize::new(tuner.window()));
        let driver = runtime().spawn(drive(
            window.clone(),
            reader,
            ids,
            batches,
            tuner,
            options.ordered,
            options.decode,
            options.skip_bad_samples,
            pool,
            tx,
        ));
        BatchStream {
            rx,
            driver,
            remaining,
            window,
        }
    }
}

/// Reads a batch; with `skip_bad_samples`, a sample that cannot be read is
/// left out and reported in `Batch::skipped`, and the rest is read again.
/// (Re-reading costs one batch read per bad sample: they are rare.)
async fn read_batch(
    reader: Arc<dyn TableReader>,
    mut job: BatchJob,
    pool: Arc<ArenaPool>,
    skip_bad_samples: bool,
) -> Result<Batch> {
    let mut skipped: Vec<(usize, Uuid)> = Vec::new();
    loop {
        match reader.clone().read_batch(job.clone(), pool.clone()).await {
            Ok(mut batch) => {
                for (index, id) in skipped {
                    batch.skipped.push(index as i64);
                    batch.skipped_ids.extend_from_slice(id.as_bytes());
                }
                return Ok(batch);
            }
            Err(e) if skip_bad_samples => {
                let Some(slot) = e
                    .bad_sample()
                    .and_then(|bad| job.ids.iter().position(|&id| id == bad))
                else {
                    return Err(e);
                };
                // A pad repeats a real sample, which is reported once.
                if !job.is_pad[slot] {
                    skipped.push((job.indices[slot] as usize, job.ids[slot]));
                }
                job.ids.remove(slot);
                job.indices.remove(slot);
                job.is_pad.remove(slot);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Spare buffers a pool keeps beyond those in use.
const POOL_FREE: usize = 2;

/// Batches a stream holds outside its window of reads, which the memory
/// budget must also cover: those queued for the consumer (`ready`), the one
/// it holds, and the pool's spares.
fn held_outside_window(ready: usize) -> usize {
    ready + 1 + POOL_FREE
}

/// Sends a finished batch, telling the tuner its size and whether the consumer
/// was waiting for it (nothing queued).
async fn deliver(
    tx: &mpsc::Sender<Result<Batch>>,
    result: Result<Batch>,
    tuner: &mut WindowTuner,
    ramp: &mut usize,
) -> std::result::Result<(), ()> {
    if let Ok(batch) = &result {
        let bytes = batch.data.len() + batch.images.as_ref().map_or(0, |i| i.pixels.len());
        tuner.on_batch(bytes, tx.capacity() == tx.max_capacity());
        *ramp = ramp.saturating_add(SLOW_START_STEP);
    }
    tx.send(result).await.map_err(drop)
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    shown_window: Arc<AtomicUsize>,
    reader: Arc<dyn TableReader>,
    ids: Arc<[Uuid]>,
    batches: Vec<PlannedBatch>,
    mut tuner: WindowTuner,
    ordered: bool,
    decode: Option<DecodeOptions>,
    skip_bad_samples: bool,
    pool: Arc<ArenaPool>,
    tx: mpsc::Sender<Result<Batch>>,
) {
    let image_pool = ArenaPool::new(POOL_FREE);
    let spec = Arc::new(reader.spec().clone());
    let mut pending = batches.into_iter().enumerate();
    let mut in_flight: JoinSet<(usize, Result<Batch>)> = JoinSet::new();
    let mut reorder: BTreeMap<usize, Result<Batch>> = BTreeMap::new();
    let mut next_seq = 0usize;
    let mut failed = false;
    let mut ramp = SLOW_START;
    let mut pooled = 0;
    loop {
        let window = tuner.window().min(ramp);
        if window != pooled {
            // Every buffer the stream may hold at once stays pooled: in flight,
            // queued for the consumer, held by it, and spare.
            pooled = window;
            let held = window + held_outside_window(tx.max_capacity());
            pool.set_max_free(held);
            image_pool.set_max_free(held);
            shown_window.store(window, Ordering::Relaxed);
        }
        while !failed && in_flight.len() + reorder.len() < window {
            let Some((seq, planned)) = pending.next() else {
                break;
            };
            let job = BatchJob {
                position: planned.position,
                ids: planned.indices.iter().map(|&i| ids[i as usize]).collect(),
                indices: planned.indices,
                is_pad: planned.is_pad,
            };
            let read = read_batch(reader.clone(), job, pool.clone(), skip_bad_samples);
            let (spec, image_pool) = (spec.clone(), image_pool.clone());
            in_flight.spawn(async move {
                let result = match (read.await, decode) {
                    (Ok(batch), Some(options)) => tokio::task::spawn_blocking(move || {
                        decode_stage(batch, &spec, options, &image_pool)
                    })
                    .await
                    .unwrap_or_else(|e| {
                        Err(StoreError::Internal(format!(
                            "image decoding panicked: {e}"
                        )))
                    }),
                    (result, _) => result,
                };
                (seq, result)
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            return;
        };
        let (seq, result) = match joined {
            Ok(done) => done,
            Err(e) if e.is_cancelled() => return,
            Err(e) => (
                next_seq,
                Err(StoreError::Internal(format!("a batch read panicked: {e}"))),
            ),
        };
        failed |= result.is_err();
        if !ordered || result.is_err() {
            // An error is delivered at once: the consumer should not wait for
            // batches that will never complete the epoch.
            if deliver(&tx, result, &mut tuner, &mut ramp).await.is_err() || failed {
                return;
            }
            continue;
        }
        reorder.insert(seq, result);
        while let Some(result) = reorder.remove(&next_seq) {
            next_seq += 1;
            if deliver(&tx, result, &mut tuner, &mut ramp).await.is_err() {
                return;
            }
        }
    }
}
