//! What a reader is, once for every front end (Python dataset, DALI reader,
//! tch loader): its configuration ([`ReaderConfig`], validated here and
//! nowhere else), its share of the epoch plan ([`Share`]), and the running
//! [`Reader`] that streams that share's batches through the fetch engine,
//! epoch after epoch.

use crate::array::patch::{PatchSpec, PatchTable};
use crate::batch::{ArenaPool, BatchJob, Labels};
use crate::cache::UseClock;
use crate::engine::{BatchStream, EngineOptions, FetchEngine, Next};
use crate::error::{Result, StoreError};
use crate::runtime::runtime;
use crate::stats::{EpochCounter, EpochStats, ReaderStats};
use crate::{DecodeOptions, LabelType, LabelValue, SampleRow, SampleStore, TableReader, TableSpec};
use crs4_cassandra_core::{
    find_duplicate, uuids_fingerprint, EpochPlan, LoaderState, PlanSpec, PlannedBatch, Progress,
    RunIdentity,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What to do with a sample that cannot be read or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Fail the epoch with an error naming the sample.
    #[default]
    Raise,
    /// Leave the sample out of its batch and report it in `Batch::skipped`.
    Skip,
}

impl OnError {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "raise" => Ok(Self::Raise),
            "skip" => Ok(Self::Skip),
            other => Err(invalid(format!(
                "on_error must be \"raise\" or \"skip\", got {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raise => "raise",
            Self::Skip => "skip",
        }
    }
}

/// How decoded images are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Layout {
    /// (B, H, W, 3): how the decoder writes them.
    #[default]
    #[serde(rename = "NHWC")]
    Nhwc,
    /// (B, 3, H, W), what torchvision and most models expect: a view of the
    /// same pixels (PyTorch's channels-last memory format), not a copy.
    #[serde(rename = "NCHW")]
    Nchw,
}

impl Layout {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "NHWC" => Ok(Self::Nhwc),
            "NCHW" => Ok(Self::Nchw),
            other => Err(invalid(format!(
                "layout must be \"NHWC\" or \"NCHW\", got {other:?}"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nhwc => "NHWC",
            Self::Nchw => "NCHW",
        }
    }
}

/// Everything that defines a reader but its share and its position in the
/// epoch: table and columns, the uuid list, plan options, engine options and
/// decoding. Built by every front end from its own arguments, validated by
/// [`ReaderConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReaderConfig {
    pub table: TableSpec,
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    /// Deliver batches in plan order (true) or as they complete.
    pub ordered: bool,
    /// A fixed number of batch reads in flight (an expert knob); None tunes it.
    pub window: Option<usize>,
    /// Bytes of batches in flight at most, shared by the DataLoader workers of
    /// a process; None: [`crate::engine::DEFAULT_MEMORY_BUDGET`].
    pub memory_budget: Option<usize>,
    /// Decode JPEG/PNG samples to RGB after their read.
    pub decode: bool,
    /// Resize decoded images to (height, width); needs `decode`.
    pub size: Option<(u32, u32)>,
    /// Layout of the decoded images; channels-first needs `decode`.
    #[serde(default)]
    pub layout: Layout,
    /// Whether the uuid list may name a sample more than once (see [`reader_ids`]).
    #[serde(default)]
    pub allow_repeats: bool,
    pub on_error: OnError,
    /// Finished batches queued ahead of the consumer; None: the engine's default.
    pub ready: Option<usize>,
    /// The rank and world size when given explicitly; None: the caller's
    /// environment decides (e.g. torch.distributed).
    pub rank: Option<usize>,
    pub world_size: Option<usize>,
    /// Read patches of arrays instead of samples of `table` (whose name is
    /// then the spec's, see [`PatchSpec::table_name`]); the uuids are slot ids.
    #[serde(default)]
    pub patches: Option<PatchSpec>,
}

fn invalid(message: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(message.into())
}

impl ReaderConfig {
    /// The defaults of every front end for `table`.
    pub fn new(table: TableSpec, batch_size: usize) -> Self {
        Self {
            table,
            batch_size,
            shuffle: true,
            seed: 0,
            drop_last: false,
            ordered: true,
            window: None,
            memory_budget: None,
            decode: false,
            size: None,
            layout: Layout::Nhwc,
            allow_repeats: false,
            on_error: OnError::Raise,
            ready: None,
            rank: None,
            world_size: None,
            patches: None,
        }
    }

    /// The one check of a reader's options.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(invalid("batch_size must be a positive int, got 0"));
        }
        match (self.rank, self.world_size) {
            (Some(rank), Some(world_size)) => Share::new(rank, world_size, 1, 0).map(drop)?,
            (None, None) => {}
            _ => return Err(invalid("give both rank and world_size, or neither")),
        }
        if self.window == Some(0) {
            return Err(invalid("window must be positive, got 0"));
        }
        if self.memory_budget == Some(0) {
            return Err(invalid("memory_budget must be positive, got 0"));
        }
        if self.ready == Some(0) {
            return Err(invalid(
                "prefetch (batches ready ahead) must be positive, got 0",
            ));
        }
        if let Some(p) = &self.patches {
            if self.decode {
                return Err(invalid(
                    "patches are arrays, not images: decode must be None",
                ));
            }
            if self.table.table != p.table_name() || self.table.label_type != p.label_type() {
                return Err(invalid("a patch reader's table is its patch spec's"));
            }
        }
        if self.layout == Layout::Nchw && !self.decode {
            return Err(invalid("layout=\"NCHW\" needs decode=\"rgb\""));
        }
        if let Some((h, w)) = self.size {
            if h == 0 || w == 0 {
                return Err(invalid(format!(
                    "size (resize) must be (height, width) > 0, got ({h}, {w})"
                )));
            }
            if !self.decode {
                return Err(invalid("size needs decode=\"rgb\""));
            }
        }
        Ok(())
    }

    /// The plan of `epoch` over `n` samples and `world_size` ranks, from its start.
    pub fn plan_spec(&self, n: usize, world_size: usize, epoch: u64) -> PlanSpec {
        PlanSpec {
            n,
            batch_size: self.batch_size,
            world_size,
            drop_last: self.drop_last,
            shuffle: self.shuffle,
            seed: self.seed,
            epoch,
            start: 0,
        }
    }

    /// What a saved state of this reader over `uuid_bytes` must match.
    pub fn run_identity(&self, uuid_bytes: &[u8]) -> RunIdentity {
        RunIdentity {
            seed: self.seed,
            shuffle: self.shuffle,
            drop_last: self.drop_last,
            batch_size: self.batch_size,
            num_samples: uuid_bytes.len() / 16,
            uuids_fingerprint: uuids_fingerprint(uuid_bytes),
            table: self.table.table.clone(),
        }
    }

    /// How the fetch engine runs for one reader of `share`: the memory budget
    /// is shared by the DataLoader workers of a rank.
    pub fn engine_options(&self, share: &Share) -> EngineOptions {
        let mut options = EngineOptions {
            ordered: self.ordered,
            skip_bad_samples: self.on_error == OnError::Skip,
            decode: self.decode.then_some(DecodeOptions {
                size: self.size,
                skip_errors: self.on_error == OnError::Skip,
            }),
            ..EngineOptions::default()
        };
        if let Some(ready) = self.ready {
            options.ready = ready;
        }
        if let Some(w) = self.window {
            options.fixed_window(w);
        }
        let budget = self.memory_budget.unwrap_or(options.memory_budget);
        options.memory_budget = (budget / share.num_workers).max(1);
        options
    }

    /// The batches `share` serves in the epoch of `progress`.
    pub fn batches(
        &self,
        n: usize,
        share: &Share,
        progress: &Progress,
    ) -> Result<Vec<PlannedBatch>> {
        let spec = progress.shape(&self.plan_spec(n, share.world_size, progress.epoch));
        EpochPlan::new(spec)
            .and_then(|plan| {
                plan.reader_batches_after(
                    share.rank,
                    share.num_workers,
                    share.worker_id,
                    &progress.consumed_positions,
                )
            })
            .map_err(|e| invalid(e.to_string()))
    }

    /// Opens the table this reader reads (checking its columns and label
    /// type), or the arrays of its patches.
    pub async fn open_table(&self, store: &Arc<dyn SampleStore>) -> Result<Arc<dyn TableReader>> {
        match &self.patches {
            Some(spec) => Ok(Arc::new(
                PatchTable::open(store.clone(), spec, self.seed).await?,
            )),
            None => store.open_table(&self.table).await,
        }
    }

    /// The state of one rank after `progress` (see [`LoaderState`]).
    pub fn state(
        &self,
        uuid_bytes: &[u8],
        rank: usize,
        world_size: usize,
        progress: &Progress,
    ) -> LoaderState {
        LoaderState::new(&self.run_identity(uuid_bytes), rank, world_size, progress)
    }
}

/// One reader's share of an epoch plan: a rank's, or one DataLoader worker's
/// of a rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub rank: usize,
    pub world_size: usize,
    pub num_workers: usize,
    pub worker_id: usize,
}

impl Share {
    /// Whether other processes read this plan too (other ranks, or other
    /// DataLoader workers of this rank).
    pub fn is_shared(&self) -> bool {
        self.world_size * self.num_workers > 1
    }

    pub fn new(
        rank: usize,
        world_size: usize,
        num_workers: usize,
        worker_id: usize,
    ) -> Result<Self> {
        if world_size == 0 || rank >= world_size {
            return Err(invalid(format!(
                "rank {rank} is out of range for world_size {world_size}"
            )));
        }
        if num_workers == 0 || worker_id >= num_workers {
            return Err(invalid(format!(
                "worker {worker_id} is out of range for {num_workers} DataLoader workers"
            )));
        }
        Ok(Self {
            rank,
            world_size,
            num_workers,
            worker_id,
        })
    }
}

/// A running reader: one share's batches of an epoch, with later epochs
/// queued behind it ([`Reader::read_next`]) so that the window of reads stays
/// full across epoch boundaries. Dropping it stops the background reads.
pub struct Reader {
    stream: BatchStream,
    config: Arc<ReaderConfig>,
    ids: Arc<[Uuid]>,
    share: Share,
    /// The epoch being delivered.
    epoch: u64,
    /// Epochs queued behind it, in delivery order.
    queued: VecDeque<u64>,
    /// Then, without end: the next epoch and the step between epochs.
    ahead: Option<(u64, u64)>,
    /// For the store's read counters.
    table: Arc<dyn TableReader>,
    /// The epoch being counted, from the consumer's first request for it.
    counting: Option<EpochCounter>,
    /// The figures of the last epoch delivered.
    last_stats: Option<EpochStats>,
    /// Every batch of the current epoch was delivered (its figures are final).
    delivered_all: bool,
}

impl Reader {
    /// Starts reading the epoch of `progress` from its resume point. Must be
    /// called from outside the runtime's threads.
    pub fn start(
        table: Arc<dyn TableReader>,
        config: Arc<ReaderConfig>,
        ids: Arc<[Uuid]>,
        share: Share,
        progress: &Progress,
    ) -> Result<Self> {
        let batches = config.batches(ids.len(), &share, progress)?;
        let options = config.engine_options(&share);
        // Every epoch's order follows from these: a cache in front of the
        // table keeps the samples due soonest.
        table.plan_known(Arc::new(UseClock::new(
            ids.len(),
            config.shuffle,
            config.seed,
        )));
        // The first epoch counts from here: its first reads start now,
        // before the consumer asks for a batch.
        let (store_base, started) = (table.read_stats(), Instant::now());
        let stream = {
            let rt = runtime();
            let _guard = rt.enter();
            FetchEngine::start(table.clone(), ids.clone(), batches, options)
        };
        let counting = EpochCounter::first(progress.epoch, store_base, started);
        Ok(Self {
            stream,
            config,
            ids,
            share,
            epoch: progress.epoch,
            queued: VecDeque::new(),
            ahead: None,
            counting: Some(counting),
            table,
            last_stats: None,
            delivered_all: false,
        })
    }

    /// Reads `epoch` (from its beginning) after the epochs already planned,
    /// as soon as their last reads are issued.
    pub fn read_next(&mut self, epoch: u64) -> Result<()> {
        if self.ahead.is_some() {
            return Err(StoreError::Internal(
                "epochs are already read ahead without end".into(),
            ));
        }
        let batches = self
            .config
            .batches(self.ids.len(), &self.share, &Progress::fresh(epoch))?;
        self.stream.read_next(batches);
        self.queued.push_back(epoch);
        Ok(())
    }

    /// The epoch a [`Reader::next_epoch`] would move on to.
    pub fn upcoming_epoch(&self) -> Option<u64> {
        self.queued
            .front()
            .copied()
            .or(self.ahead.map(|(next, _)| next))
    }

    /// After the epochs queued so far (or the current one), reads `epoch`,
    /// then the epochs after it in steps of `epoch` minus the last one
    /// queued (1 for 0, 1, 2, ...; 0 for the same epoch again and again), as
    /// far ahead as the window reaches: several epochs when they are short.
    /// Asking again for the epoch that comes next anyway does nothing.
    pub fn read_ahead(&mut self, epoch: u64) -> Result<()> {
        if self.ahead.is_some() {
            if self.upcoming_epoch() == Some(epoch) {
                return Ok(());
            }
            return Err(StoreError::Internal(format!(
                "epochs from {:?} are already read ahead, not {epoch}",
                self.upcoming_epoch()
            )));
        }
        let last = self.queued.back().copied().unwrap_or(self.epoch);
        let Some(step) = epoch.checked_sub(last) else {
            return self.read_next(epoch);
        };
        let progress = Progress::fresh(epoch);
        let first = self
            .config
            .batches(self.ids.len(), &self.share, &progress)?;
        let batches = first.len();
        let (config, share, n) = (self.config.clone(), self.share, self.ids.len());
        let mut plans = Some(first);
        let mut next = epoch;
        self.stream.read_ahead(
            batches,
            Box::new(move || match plans.take() {
                Some(first) => {
                    next = next.saturating_add(step);
                    Ok(first)
                }
                None => {
                    let plan = config.batches(n, &share, &Progress::fresh(next));
                    next = next.saturating_add(step);
                    plan
                }
            }),
        );
        self.ahead = Some((epoch, step));
        Ok(())
    }

    /// Waits up to `wait` for the next batch of the current epoch. The time
    /// spent here is the consumer's wait (see [`Reader::stats`]).
    pub fn next_blocking(&mut self, wait: Duration) -> Result<Next> {
        let asked = Instant::now();
        if self.counting.is_none() && !self.delivered_all {
            self.counting = Some(EpochCounter::start(
                self.epoch,
                self.stream.counters(),
                self.table.read_stats(),
                asked,
            ));
        }
        let next = self.stream.next_blocking(wait);
        if matches!(next, Ok(Next::End)) && self.share.is_shared() {
            // Where other processes read this plan (ranks, DataLoader
            // workers), what this epoch's reads left to do in the background
            // (a cache's admissions) is done before the epoch ends, part of
            // the consumer's wait, so that they find this epoch's samples. A
            // reader alone does not wait: its own lookups find them queued.
            self.table.settle();
        }
        let now = Instant::now();
        if let Some(counter) = self.counting.as_mut() {
            counter.waited(now - asked);
            match &next {
                Ok(Next::Batch(b)) => counter.delivered(
                    b.is_pad.iter().filter(|&&pad| !pad).count() as u64,
                    b.data.len() as u64,
                    b.skipped.len() as u64,
                    now,
                ),
                Ok(Next::End) => {
                    counter.finish();
                    self.last_stats =
                        Some(counter.stats(self.stream.counters(), &self.table.read_stats(), now));
                    self.counting = None;
                    self.delivered_all = true;
                }
                _ => {}
            }
        }
        next
    }

    /// The figures of the epoch under way (from the consumer's first
    /// request for a batch of it) and of the last one delivered.
    pub fn stats(&self) -> ReaderStats {
        let now = Instant::now();
        ReaderStats {
            current: self
                .counting
                .as_ref()
                .map(|c| c.stats(self.stream.counters(), &self.table.read_stats(), now)),
            last: self.last_stats.clone(),
        }
    }

    /// Whether a next epoch is queued behind the current one.
    pub fn has_next_epoch(&self) -> bool {
        self.stream.has_next_epoch()
    }

    /// Moves on to the next queued epoch once the current one is delivered.
    pub fn next_epoch(&mut self) -> bool {
        if !self.stream.next_epoch() {
            return false;
        }
        self.delivered_all = false;
        self.counting = None;
        self.epoch = match self.queued.pop_front() {
            Some(e) => e,
            None => {
                let (next, step) = self.ahead.expect("an epoch read ahead");
                self.ahead = Some((next.saturating_add(step), step));
                next
            }
        };
        true
    }

    /// Batch reads allowed in flight now.
    pub fn window(&self) -> usize {
        self.stream.window()
    }

    /// Batches of the current epoch not yet delivered.
    pub fn remaining(&self) -> usize {
        self.stream.remaining()
    }

    pub fn config(&self) -> &ReaderConfig {
        &self.config
    }

    pub fn share(&self) -> Share {
        self.share
    }
}

/// One sample of `spec`'s table, read by itself (to look at it).
pub async fn read_sample(store: &dyn SampleStore, spec: &TableSpec, id: Uuid) -> Result<SampleRow> {
    let table = store.open_table(spec).await?;
    let job = BatchJob {
        epoch: 0,
        position: 0,
        indices: vec![0],
        is_pad: vec![false],
        ids: vec![id],
    };
    let batch = table.read_batch(job, ArenaPool::new(0)).await?;
    let label = match &batch.labels {
        Labels::Int(v) => LabelValue::Int(v[0] as i32),
        Labels::Blob { data, .. } => LabelValue::Blob(data.to_vec()),
        Labels::None => LabelValue::None,
    };
    Ok(SampleRow {
        id,
        label,
        data: batch.sample(0).to_vec(),
    })
}

/// Whether decoding is asked for: `None` (no) or `"rgb"` (yes).
pub fn decode_mode(s: Option<&str>) -> Result<bool> {
    match s {
        None => Ok(false),
        Some("rgb") => Ok(true),
        Some(other) => Err(invalid(format!(
            "decode must be \"rgb\" or None, got {other:?}"
        ))),
    }
}

/// A reader's uuid list from its bytes (16 a uuid), as every front end takes
/// it in: refused if a uuid appears twice, since that sample would be served
/// twice per epoch (see [`check_unique_ids`]), unless `allow_repeats` (each
/// entry of the list is then served once per epoch: a uuid listed k times,
/// k times, as deliberate oversampling does).
pub fn reader_ids(uuid_bytes: &[u8], allow_repeats: bool) -> Result<Vec<Uuid>> {
    if !uuid_bytes.len().is_multiple_of(16) {
        return Err(invalid(format!(
            "uuid bytes length {} is not a multiple of 16",
            uuid_bytes.len()
        )));
    }
    if !allow_repeats {
        duplicates_refused(uuid_bytes)?;
    }
    Ok(uuid_bytes
        .chunks_exact(16)
        .map(|c| Uuid::from_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

/// Refuses a uuid list that names a sample twice, naming one such uuid and
/// where it appears.
pub fn check_unique_ids(ids: &[Uuid]) -> Result<()> {
    let bytes: Vec<u8> = ids.iter().flat_map(|u| *u.as_bytes()).collect();
    duplicates_refused(&bytes)
}

fn duplicates_refused(uuid_bytes: &[u8]) -> Result<()> {
    match find_duplicate(uuid_bytes) {
        None => Ok(()),
        Some((uuid, first, second)) => Err(invalid(format!(
            "uuid {uuid} appears twice in the uuid list (at positions {first} and {second}): \
             each sample must appear once, or it is served twice per epoch \
             (allow_repeats=True serves each entry of the list once, for oversampling)"
        ))),
    }
}

/// The label type named `s` ("int", "blob" or "none").
pub fn label_type(s: &str) -> Result<LabelType> {
    LabelType::parse(s).ok_or_else(|| {
        invalid(format!(
            "label_type must be one of ('int', 'blob', 'none'), got {s:?}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_validation_names_the_bad_option() {
        let ok = ReaderConfig::new(TableSpec::new("t", LabelType::Int), 4);
        assert!(ok.validate().is_ok());
        let cases: [(ReaderConfig, &str); 8] = [
            (
                ReaderConfig {
                    batch_size: 0,
                    ..ok.clone()
                },
                "batch_size",
            ),
            (
                ReaderConfig {
                    rank: Some(0),
                    ..ok.clone()
                },
                "both rank and world_size",
            ),
            (
                ReaderConfig {
                    rank: Some(2),
                    world_size: Some(2),
                    ..ok.clone()
                },
                "rank 2",
            ),
            (
                ReaderConfig {
                    window: Some(0),
                    ..ok.clone()
                },
                "window",
            ),
            (
                ReaderConfig {
                    memory_budget: Some(0),
                    ..ok.clone()
                },
                "memory_budget",
            ),
            (
                ReaderConfig {
                    size: Some((2, 2)),
                    ..ok.clone()
                },
                "decode",
            ),
            (
                ReaderConfig {
                    decode: true,
                    size: Some((0, 2)),
                    ..ok.clone()
                },
                "size",
            ),
            (
                ReaderConfig {
                    layout: Layout::Nchw,
                    ..ok.clone()
                },
                "layout",
            ),
        ];
        for (config, needle) in cases {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(needle), "{message}");
        }
        assert!(label_type("float")
            .unwrap_err()
            .to_string()
            .contains("label_type"));
        assert!(OnError::parse("ignore").is_err());
    }

    #[test]
    fn a_uuid_listed_twice_is_refused_and_named() {
        let ids: Vec<Uuid> = (1..=5u128).map(Uuid::from_u128).collect();
        let bytes: Vec<u8> = ids.iter().flat_map(|u| *u.as_bytes()).collect();
        assert_eq!(reader_ids(&bytes, false).unwrap(), ids);
        assert!(check_unique_ids(&ids).is_ok());
        let mut twice = ids.clone();
        twice.insert(1, ids[3]);
        let twice_bytes: Vec<u8> = twice.iter().flat_map(|u| *u.as_bytes()).collect();
        for err in [
            reader_ids(&twice_bytes, false).unwrap_err(),
            check_unique_ids(&twice).unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::InvalidArgument(_)), "{err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains(&ids[3].to_string()) && msg.contains("positions 1 and 4"),
                "{msg}"
            );
        }
        assert!(reader_ids(&bytes[..17], false).is_err());
        assert_eq!(reader_ids(&twice_bytes, true).unwrap(), twice);
    }

    #[test]
    fn workers_share_the_memory_budget_and_the_batches() {
        let config = ReaderConfig {
            memory_budget: Some(1000),
            ..ReaderConfig::new(TableSpec::new("t", LabelType::Int), 4)
        };
        let share = Share::new(0, 1, 4, 1).unwrap();
        assert_eq!(config.engine_options(&share).memory_budget, 250);
        let progress = Progress {
            epoch: 0,
            consumed_samples: 8,
            consumed_positions: vec![1],
        };
        let batches = config.batches(100, &share, &progress).unwrap();
        // 23 batches left after the prefix; worker 1 of 4 had 1, 5, 9...; 1 was consumed.
        let positions: Vec<usize> = batches.iter().map(|b| b.position).collect();
        assert_eq!(positions, vec![5, 9, 13, 17, 21]);
    }
}
