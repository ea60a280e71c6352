//! The fetch engine: keeps a bounded window of batch reads in flight and
//! delivers finished batches in plan order (`ordered`) or as they complete.
//!
//! A stream may carry the plans of several epochs back to back
//! ([`BatchStream::read_next`], or [`BatchStream::read_ahead`] for as many
//! as the window needs): the reads of the next epoch start as soon as
//! the current one has issued its last read,
//! so the window stays full across the boundary instead of draining and
//! refilling (a round trip lost at each end of every epoch), however short
//! the epochs are next to the window. No batch of an
//! epoch is delivered before every batch of the previous one, in either
//! delivery order.
//! (That rule is the [`ReorderBuffer`]'s; the driver task issues the reads and
//! hands their completions to it.)
//!
//! Completion order never changes a batch's composition: each read fills the
//! batch the plan assigned. Memory is bounded: at most `window` batches are
//! being read or waiting to be reordered, plus `ready` finished ones queued for
//! the consumer; their buffers come from a recycling [`ArenaPool`]. The window
//! tunes itself ([`WindowTuner`]) within a memory budget unless fixed.

use crate::batch::{ArenaPool, Batch, BatchJob};
use crate::decode::{decode_stage, DecodeOptions};
use crate::error::{Result, StoreError};
use crate::reorder::ReorderBuffer;
use crate::runtime::runtime;
use crate::stats::EngineCounters;
use crate::tuner::{Ticket, WindowTuner};
use crate::{TableReader, TableSpec};
use crs4_cassandra_core::{PlannedBatch, ProcessOwned};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Batch reads in flight (and awaiting reorder): the starting point when
    /// `autotune`, else a fixed number.
    pub window: usize,
    /// Size the window from measured throughput and round trip (see [`WindowTuner`]).
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

/// Default bytes of batches in flight. Hiding a round trip takes throughput
/// times the time a whole batch takes to arrive, which under load is well above
/// the network's round trip (a batch waits for its slowest sample): at 1.5 GB/s
/// and 100 ms of added latency, about 1 GB. Small beside a training host's memory.
pub const DEFAULT_MEMORY_BUDGET: usize = 1 << 30;
/// Batch reads a stream starts with; each delivered batch allows
/// `SLOW_START_STEP` more, up to the window (the window quadruples every round
/// trip, like TCP's slow start), so that the first batch of an epoch does not
/// queue behind a whole window of reads (at 100 ms of latency and a window of
/// 64, 0.14 s to the first batch instead of 0.8 s). A node serves the reads in
/// flight together, so the first batch arrives with the last of them: 8 reads
/// of 128 x 109 KB (112 MB) kept the first batch 0.4 s away at 0-10 ms, 4 of
/// them 0.2 s; the ramp makes up the difference within a round trip.
const SLOW_START: usize = 4;
const SLOW_START_STEP: usize = 3;
/// Upper bound of the tuned window, whatever the budget (which is what
/// bounds it in practice: 4096 batches of 8 samples of 32 KB are 1 GiB).
const MAX_WINDOW: usize = 4096;

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
    /// A forked child inherits the memory of the stream but not the runtime's
    /// threads, and must not touch either: there they are leaked, unused.
    link: ProcessOwned<Link>,
    /// Batches of the current epoch not yet delivered.
    remaining: usize,
    /// Batch counts of the epochs read after the current one.
    queued_epochs: VecDeque<usize>,
    /// After those, epochs of this many batches without end ([`BatchStream::read_ahead`]).
    endless: Option<usize>,
    window: Arc<AtomicUsize>,
    counters: Arc<EngineCounters>,
}

/// The stream's end of the driver task: dropping it stops the task.
struct Link {
    driver: tokio::task::JoinHandle<()>,
    rx: mpsc::Receiver<Result<Batch>>,
    /// Plans of later epochs, for the driver.
    plans: mpsc::UnboundedSender<Plans>,
}

/// Makes the plan of each next epoch, in turn.
pub type PlanSource = Box<dyn FnMut() -> Result<Vec<PlannedBatch>> + Send>;

/// Later epochs handed to the driver.
enum Plans {
    One(Vec<PlannedBatch>),
    /// As many epochs as the window needs, each of the given batch count.
    Endless(PlanSource, usize),
}

impl Drop for Link {
    fn drop(&mut self) {
        // Aborting the driver drops its JoinSet, which aborts every read in flight.
        self.driver.abort();
    }
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
        let rx = &mut self.link()?.rx;
        let rt = runtime();
        match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
            Err(_) => Ok(Next::Pending),
            Ok(Some(Ok(batch))) => {
                self.remaining -= 1;
                Ok(Next::Batch(batch))
            }
            Ok(Some(Err(e))) => {
                self.stop();
                Err(e)
            }
            Ok(None) => {
                self.stop();
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
        let item = match self.link() {
            Ok(link) => link.rx.recv().await,
            Err(e) => return Some(Err(e)),
        };
        match &item {
            Some(Ok(_)) => self.remaining -= 1,
            _ => self.stop(),
        }
        Some(item.unwrap_or_else(|| {
            Err(StoreError::Internal(
                "the fetch task ended before delivering every batch".into(),
            ))
        }))
    }

    /// Batches of the current epoch not yet delivered.
    pub fn remaining(&self) -> usize {
        self.remaining
    }

    /// The driver's end, in the process that started the stream only.
    fn link(&mut self) -> Result<&mut Link> {
        self.link.get_mut().ok_or_else(|| {
            StoreError::Internal(
                "this batch stream was started before fork() and cannot be used in a child process"
                    .into(),
            )
        })
    }

    fn stop(&mut self) {
        self.remaining = 0;
        self.queued_epochs.clear();
        self.endless = None;
    }

    /// Reads the batches of `plan` (a next epoch's share) once every read of
    /// the epochs before it has been issued, keeping the window full across
    /// the boundary; [`BatchStream::next_epoch`] moves on to them.
    pub fn read_next(&mut self, plan: Vec<PlannedBatch>) {
        let n = plan.len();
        // A driver that is gone (after an error) takes no more plans.
        let Some(link) = self.link.get() else {
            return;
        };
        if self.endless.is_none() && link.plans.send(Plans::One(plan)).is_ok() {
            self.queued_epochs.push_back(n);
        }
    }

    /// After the epochs planned so far, reads epochs of `batches` batches
    /// each, planned by `source` in turn, as far ahead as the window reaches
    /// (several epochs when they are short), for as long as the stream lives.
    pub fn read_ahead(&mut self, batches: usize, source: PlanSource) {
        let Some(link) = self.link.get() else {
            return;
        };
        if self.endless.is_none() && link.plans.send(Plans::Endless(source, batches)).is_ok() {
            self.endless = Some(batches);
        }
    }

    /// Whether the plan of a next epoch is being read after the current one.
    pub fn has_next_epoch(&self) -> bool {
        !self.queued_epochs.is_empty() || self.endless.is_some()
    }

    /// Once the current epoch is fully delivered, moves on to the next epoch
    /// the stream was started with; false if there is none (or the current
    /// one is not over).
    pub fn next_epoch(&mut self) -> bool {
        if self.remaining > 0 {
            return false;
        }
        match self.queued_epochs.pop_front().or(self.endless) {
            Some(n) => {
                self.remaining = n;
                true
            }
            None => false,
        }
    }

    /// Batch reads the stream allows in flight now (the tuner's current choice).
    pub fn window(&self) -> usize {
        self.window.load(Ordering::Relaxed)
    }

    /// What the engine counted so far (see [`crate::stats`]).
    pub fn counters(&self) -> &EngineCounters {
        &self.counters
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
            // What is learned depends on the batch size (a batch's round trip
            // does): one memory per table and batch size.
            let batch_size = batches.first().map_or(0, |b| b.indices.len());
            let key = format!("{}/{batch_size}", reader.spec().table);
            let outside = held_outside_window(options.ready);
            WindowTuner::auto(
                options.window.max(SLOW_START),
                MAX_WINDOW,
                options.memory_budget,
            )
            .reserve(outside)
            .learning_for(&key)
        } else {
            WindowTuner::fixed(options.window)
        };
        let (tx, rx) = mpsc::channel(options.ready.max(1));
        let (plans, plans_rx) = mpsc::unbounded_channel();
        let remaining = batches.len();
        let window = Arc::new(AtomicUsize::new(tuner.window()));
        let counters = Arc::new(EngineCounters::default());
        let driver = Driver::new(
            reader,
            ids,
            batches,
            tuner,
            &options,
            Channels {
                plans: plans_rx,
                tx,
                window: window.clone(),
                counters: counters.clone(),
            },
        );
        let driver = runtime().spawn(driver.run());
        BatchStream {
            // Inherited through fork, the runtime that owns the driver and the
            // channels has no threads, and a lock it held at the fork may never
            // be released: the link is then left alone (leaked).
            link: ProcessOwned::new(Link { driver, rx, plans }),
            remaining,
            queued_epochs: VecDeque::new(),
            endless: None,
            window,
            counters,
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

/// The driver's ends of the stream's channels.
struct Channels {
    /// Plans of later epochs.
    plans: mpsc::UnboundedReceiver<Plans>,
    /// Finished batches (or the error that ends the stream), for the consumer.
    tx: mpsc::Sender<Result<Batch>>,
    /// The window in use, shown by [`BatchStream::window`].
    window: Arc<AtomicUsize>,
    counters: Arc<EngineCounters>,
}

/// A batch read's outcome, with its place in the sequence of reads, the
/// tuner's ticket and when it finished (the driver may take it in later).
struct Finished {
    seq: usize,
    result: Result<Batch>,
    ticket: Ticket,
    at: Instant,
}

/// The background task of a stream: issues batch reads within the window,
/// takes in their completions, and delivers them through the reorder buffer.
struct Driver {
    reader: Arc<dyn TableReader>,
    spec: Arc<TableSpec>,
    ids: Arc<[Uuid]>,
    tuner: WindowTuner,
    decode: Option<DecodeOptions>,
    skip_bad_samples: bool,
    /// Buffers of the batches' samples and of their decoded images.
    pool: Arc<ArenaPool>,
    image_pool: Arc<ArenaPool>,
    channels: Channels,
    /// Planned batches not yet issued, in plan order over every epoch.
    pending: VecDeque<PlannedBatch>,
    /// Plans the epochs after those when the window reaches past them.
    source: Option<(PlanSource, usize)>,
    /// Reads issued so far: the next one's number in the sequence of all of them.
    issued: usize,
    in_flight: JoinSet<Finished>,
    reorder: ReorderBuffer<Batch, StoreError>,
    /// A read failed: no more are issued.
    failed: bool,
    /// The slow start's limit on the window.
    ramp: usize,
    /// The window the pools are sized for.
    pooled: usize,
}

impl Driver {
    fn new(
        reader: Arc<dyn TableReader>,
        ids: Arc<[Uuid]>,
        batches: Vec<PlannedBatch>,
        tuner: WindowTuner,
        options: &EngineOptions,
        channels: Channels,
    ) -> Self {
        let mut reorder = ReorderBuffer::new(options.ordered);
        reorder.add_epoch(batches.len());
        Self {
            spec: Arc::new(reader.spec().clone()),
            reader,
            ids,
            tuner,
            decode: options.decode,
            skip_bad_samples: options.skip_bad_samples,
            pool: ArenaPool::new(POOL_FREE),
            image_pool: ArenaPool::new(POOL_FREE),
            channels,
            pending: batches.into(),
            source: None,
            issued: 0,
            in_flight: JoinSet::new(),
            reorder,
            failed: false,
            ramp: SLOW_START,
            pooled: 0,
        }
    }

    async fn run(mut self) {
        loop {
            while let Ok(plan) = self.channels.plans.try_recv() {
                self.add_plan(plan);
            }
            if let Err(e) = self.plan_ahead() {
                let _ = self.deliver(Err(e)).await;
                return;
            }
            self.issue();
            if self.in_flight.is_empty() {
                // Everything planned is read and delivered: wait for a next epoch
                // (the stream's owner may still add one), or for the end.
                match self.channels.plans.recv().await {
                    Some(plan) => {
                        self.add_plan(plan);
                        continue;
                    }
                    None => return,
                }
            }
            let Some(joined) = self.in_flight.join_next().await else {
                continue;
            };
            let done = match joined {
                Ok(done) => done,
                Err(e) if e.is_cancelled() => return,
                Err(e) => {
                    let e = StoreError::Internal(format!("a batch read panicked: {e}"));
                    let _ = self.deliver(Err(e)).await;
                    return;
                }
            };
            self.complete(done);
            if self.deliver_ready().await.is_err() {
                return;
            }
        }
    }

    /// Queues a later epoch's plan after everything planned so far.
    fn add_plan(&mut self, plans: Plans) {
        match plans {
            Plans::One(plan) => self.add_epoch(plan),
            Plans::Endless(source, batches) => self.source = Some((source, batches)),
        }
    }

    fn add_epoch(&mut self, plan: Vec<PlannedBatch>) {
        self.reorder.add_epoch(plan.len());
        self.pending.extend(plan);
    }

    /// Plans further epochs while the window reaches past those planned.
    fn plan_ahead(&mut self) -> Result<()> {
        let window = self.window();
        while self.pending.len() < window {
            let Some((source, batches)) = self.source.as_mut() else {
                break;
            };
            let plan = source()?;
            if plan.len() != *batches || plan.is_empty() {
                return Err(StoreError::Internal(format!(
                    "an epoch read ahead has {} batches where {batches} were expected",
                    plan.len()
                )));
            }
            self.add_epoch(plan);
        }
        Ok(())
    }

    /// The window now: the tuner's, within the slow start. Every buffer the
    /// stream may hold at once stays pooled: in flight, queued for the
    /// consumer, held by it, and spare.
    fn window(&mut self) -> usize {
        let window = self.tuner.window().min(self.ramp);
        if window != self.pooled {
            self.pooled = window;
            let held = window + held_outside_window(self.channels.tx.max_capacity());
            self.pool.set_max_free(held);
            self.image_pool.set_max_free(held);
            self.channels.window.store(window, Ordering::Relaxed);
        }
        window
    }

    /// Issues planned reads while the window has room (reads in flight and
    /// finished ones awaiting reorder both count), unless one failed.
    fn issue(&mut self) {
        let window = self.window();
        while !self.failed && self.in_flight.len() + self.reorder.held() < window {
            let Some(planned) = self.pending.pop_front() else {
                break;
            };
            let seq = self.issued;
            self.issued += 1;
            let job = BatchJob {
                epoch: planned.epoch,
                position: planned.position,
                ids: planned
                    .indices
                    .iter()
                    .map(|&i| self.ids[i as usize])
                    .collect(),
                indices: planned.indices,
                is_pad: planned.is_pad,
            };
            let read = read_batch(
                self.reader.clone(),
                job,
                self.pool.clone(),
                self.skip_bad_samples,
            );
            let (spec, image_pool, decode) =
                (self.spec.clone(), self.image_pool.clone(), self.decode);
            let ticket = self.tuner.on_issue(Instant::now());
            self.in_flight.spawn(async move {
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
                Finished {
                    seq,
                    result,
                    ticket,
                    at: Instant::now(),
                }
            });
        }
    }

    /// Takes in a finished read.
    fn complete(&mut self, done: Finished) {
        let Finished {
            seq,
            result,
            ticket,
            at,
        } = done;
        self.failed |= result.is_err();
        self.channels.counters.finished(
            at.saturating_duration_since(ticket.sent()),
            self.pooled,
            self.in_flight.len() + 1,
            at,
        );
        if let Some(batch) = result.as_ref().ok().filter(|b| !b.local) {
            // The tuner counts reads as they finish, not as they are
            // delivered: in plan order, one late batch holds back those after
            // it and delivery comes in bursts a window long. A batch served
            // from a local cache is left out: its microseconds would pass for
            // the store's round trip and shrink the window for the reads that
            // do go to the store.
            let bytes = batch.data.len() + batch.images.as_ref().map_or(0, |i| i.pixels.len());
            self.tuner.on_batch(ticket, bytes, at);
        }
        self.reorder.insert(seq, result);
    }

    /// Delivers every batch the reorder buffer allows now; Err once the
    /// stream is over (an error delivered, or the consumer gone).
    async fn deliver_ready(&mut self) -> std::result::Result<(), ()> {
        while let Some(result) = self.reorder.pop() {
            let stop = result.is_err();
            self.deliver(result).await?;
            if stop {
                return Err(());
            }
        }
        Ok(())
    }

    /// Sends a finished batch to the consumer; each one delivered lets the
    /// slow start allow more reads.
    async fn deliver(&mut self, result: Result<Batch>) -> std::result::Result<(), ()> {
        if result.is_ok() {
            self.ramp = self.ramp.saturating_add(SLOW_START_STEP);
        }
        self.channels.tx.send(result).await.map_err(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Labels;
    use crs4_cassandra_core::{EpochPlan, PlanSpec};
    use futures::future::BoxFuture;

    /// A table whose reads take a few milliseconds each, varying with the
    /// batch, so that they finish out of order; sample `i` is `i`'s bytes.
    struct Jittery(TableSpec);

    impl TableReader for Jittery {
        fn read_batch(
            self: Arc<Self>,
            job: BatchJob,
            pool: Arc<ArenaPool>,
        ) -> BoxFuture<'static, Result<Batch>> {
            Box::pin(async move {
                let jitter = (job.indices[0] as u64 * 7919) % 11;
                tokio::time::sleep(Duration::from_millis(jitter)).await;
                let mut batch = Batch::from_job(&job, pool.take(4 * job.ids.len()), Labels::None);
                for &i in &job.indices {
                    batch.data.extend_from_slice(&i.to_le_bytes());
                    batch.offsets.push(batch.data.len() as i64);
                }
                Ok(batch)
            })
        }

        fn spec(&self) -> &TableSpec {
            &self.0
        }
    }

    fn plan(epoch: u64) -> Vec<PlannedBatch> {
        plan_of(1000, epoch)
    }

    /// The plan of `epoch` over `n` samples, batches of 10, one reader.
    fn plan_of(n: usize, epoch: u64) -> Vec<PlannedBatch> {
        EpochPlan::new(PlanSpec {
            n,
            batch_size: 10,
            world_size: 1,
            drop_last: false,
            shuffle: true,
            seed: 3,
            epoch,
            start: 0,
        })
        .unwrap()
        .reader_batches(0, 1, 0)
        .unwrap()
    }

    fn stream(ordered: bool, epochs: &[u64]) -> BatchStream {
        let reader = Arc::new(Jittery(TableSpec::new("t", crate::LabelType::None)));
        let ids: Arc<[Uuid]> = (0..1000u128).map(Uuid::from_u128).collect();
        let mut options = EngineOptions {
            ordered,
            ..EngineOptions::default()
        };
        options.fixed_window(16);
        let _guard = runtime().enter();
        let mut s = FetchEngine::start(reader, ids, plan(epochs[0]), options);
        for &e in &epochs[1..] {
            s.read_next(plan(e));
        }
        s
    }

    /// The batches of the stream's current epoch, as (position, sample indices).
    fn drain(s: &mut BatchStream) -> Vec<(usize, Vec<u32>)> {
        let mut out = Vec::new();
        while let Next::Batch(b) = s.next_blocking(Duration::from_secs(10)).unwrap() {
            let indices = (0..b.len())
                .map(|i| u32::from_le_bytes(b.sample(i).try_into().unwrap()))
                .collect();
            out.push((b.position, indices));
        }
        out
    }

    #[test]
    fn chained_epochs_deliver_each_epoch_whole_and_alone() {
        for ordered in [true, false] {
            let mut s = stream(ordered, &[4, 5, 5]);
            for (k, epoch) in [4u64, 5, 5].into_iter().enumerate() {
                if k > 0 {
                    assert!(s.next_epoch(), "epoch {k} of the stream");
                }
                let mut got = drain(&mut s);
                let want: Vec<(usize, Vec<u32>)> = plan(epoch)
                    .into_iter()
                    .map(|b| (b.position, b.indices))
                    .collect();
                if !ordered {
                    got.sort();
                }
                assert_eq!(got, want, "ordered={ordered}, epoch {epoch}");
            }
            assert!(!s.next_epoch() && !s.has_next_epoch());
            assert!(matches!(s.next_blocking(Duration::ZERO), Ok(Next::End)));
        }
    }

    /// Records how far ahead of the epoch being consumed (the second
    /// counter, as an index into the stream's epochs of step 2 from 1) the
    /// reads started reach, at most.
    struct Counting(Arc<Jittery>, Arc<AtomicUsize>, Arc<AtomicUsize>);

    impl TableReader for Counting {
        fn read_batch(
            self: Arc<Self>,
            job: BatchJob,
            pool: Arc<ArenaPool>,
        ) -> BoxFuture<'static, Result<Batch>> {
            let index = (job.epoch as usize).div_ceil(2);
            let ahead = index.saturating_sub(self.2.load(Ordering::SeqCst));
            self.1.fetch_max(ahead, Ordering::SeqCst);
            self.0.clone().read_batch(job, pool)
        }

        fn spec(&self) -> &TableSpec {
            self.0.spec()
        }
    }

    fn short_plan(epoch: u64) -> Vec<PlannedBatch> {
        plan_of(40, epoch)
    }

    #[test]
    fn short_epochs_are_read_as_far_ahead_as_the_window_reaches() {
        for ordered in [true, false] {
            let ahead = Arc::new(AtomicUsize::new(0));
            let consuming = Arc::new(AtomicUsize::new(0));
            let jittery = Arc::new(Jittery(TableSpec::new("t", crate::LabelType::None)));
            let reader = Arc::new(Counting(jittery, ahead.clone(), consuming.clone()));
            let ids: Arc<[Uuid]> = (0..40u128).map(Uuid::from_u128).collect();
            let mut options = EngineOptions {
                ordered,
                ..EngineOptions::default()
            };
            options.fixed_window(16);
            let mut s = {
                let _guard = runtime().enter();
                FetchEngine::start(reader, ids, short_plan(0), options)
            };
            // Epochs 1, 3, 5, ... (a step of 2) after epoch 0, without end.
            let mut next = 1;
            s.read_ahead(
                4,
                Box::new(move || {
                    let plan = short_plan(next);
                    next += 2;
                    Ok(plan)
                }),
            );
            for (k, epoch) in [0u64, 1, 3, 5, 7, 9].into_iter().enumerate() {
                if k > 0 {
                    assert!(s.next_epoch(), "epoch {epoch}");
                }
                consuming.store(k, Ordering::SeqCst);
                let mut got = drain(&mut s);
                let want: Vec<(usize, Vec<u32>)> = short_plan(epoch)
                    .into_iter()
                    .map(|b| (b.position, b.indices))
                    .collect();
                if !ordered {
                    got.sort();
                }
                assert_eq!(got, want, "ordered={ordered}, epoch {epoch}");
                assert!(s.has_next_epoch());
            }
            // Epochs of 4 batches and a window of 16: reads of epochs two
            // and more past the one being consumed were under way (reading
            // only the next epoch ahead never gets past one), and never more
            // than the window's worth.
            let ahead = ahead.load(Ordering::SeqCst);
            assert!((2..=5).contains(&ahead), "reads {ahead} epochs ahead");
        }
    }

    #[test]
    fn next_epoch_waits_for_the_current_one_to_end() {
        let mut s = stream(true, &[0, 1]);
        assert!(s.has_next_epoch());
        assert!(!s.next_epoch(), "the first epoch has not been read yet");
        assert_eq!(drain(&mut s).len(), 100);
        assert!(s.next_epoch());
        assert_eq!(s.remaining(), 100);
    }

    #[test]
    fn a_plan_added_after_the_reads_are_over_is_read() {
        for ordered in [true, false] {
            let mut s = stream(ordered, &[0]);
            assert_eq!(drain(&mut s).len(), 100);
            // The driver has nothing left to read; it waits for more.
            std::thread::sleep(Duration::from_millis(50));
            s.read_next(Vec::new());
            s.read_next(plan(1));
            assert!(s.next_epoch());
            assert!(drain(&mut s).is_empty(), "an empty share is an empty epoch");
            assert!(s.next_epoch());
            let mut got = drain(&mut s);
            got.sort();
            assert_eq!(got.len(), 100);
            assert_eq!(got[0].0, 0);
        }
    }
}
