//! Loader statistics: where an epoch's time went, for every front end.
//!
//! Three sources feed an epoch's figures ([`EpochStats`]):
//! - the consumer's side of a [`crate::Reader`]: batches, samples and bytes
//!   delivered, samples skipped, and the time the consumer spent waiting for
//!   the next batch (the data stall, as a share of the epoch);
//! - the fetch engine ([`EngineCounters`]): how long each batch read took
//!   (from issue to finish), the window and the reads in flight, sampled as
//!   reads finish, with a timeline;
//! - the store ([`crate::ReadStats`]): sample reads, retries, timeouts,
//!   hedges, cache hits, and per node the latency of each read.
//!
//! Every counter is cumulative; an epoch's figures are the difference between
//! the counters when its consumer first asked for a batch and when it got the
//! last one (or now, for the epoch under way). Reads of the epochs read ahead
//! count in the epoch during which they finish. Latencies go into
//! [`Histogram`]s (atomic, no locks; 16 buckets per power of two, so a
//! percentile is within about 3% of the exact one), which subtract and add:
//! the figures of several readers (the DataLoader workers of a rank) merge
//! into one ([`EpochStats::merge`]) with their percentiles recomputed, not
//! averaged.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Linear buckets below this many microseconds, then this many per power of two.
const SUB: u64 = 16;
/// Powers of two covered: latencies up to 2^(SUB_BITS + OCTAVES) µs (~38 h).
const OCTAVES: usize = 34;
const SUB_BITS: u32 = 4;
const BUCKETS: usize = SUB as usize * (OCTAVES + 1);

/// The bucket of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let e = 63 - us.leading_zeros(); // >= SUB_BITS
    let m = (us >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as usize * SUB as usize + m as usize).min(BUCKETS - 1)
}

/// The range [low, high) of microseconds of bucket `i`.
fn bucket_range(i: usize) -> (f64, f64) {
    if i < SUB as usize {
        return (i as f64, i as f64 + 1.0);
    }
    let octave = i / SUB as usize - 1;
    let m = (i % SUB as usize) as f64;
    let unit = (1u64 << octave) as f64;
    ((SUB as f64 + m) * unit, (SUB as f64 + m + 1.0) * unit)
}

/// A latency histogram (microseconds) that threads record into without locks.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.snapshot().count())
            .finish()
    }
}

impl Histogram {
    pub fn record(&self, latency: Duration) {
        self.record_us(latency.as_micros() as u64);
    }

    pub fn record_us(&self, us: u64) {
        self.counts[bucket(us)].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Counts {
        Counts(
            self.counts
                .iter()
                .enumerate()
                .filter_map(|(i, c)| match c.load(Relaxed) {
                    0 => None,
                    n => Some((i as u32, n)),
                })
                .collect(),
        )
    }
}

/// A histogram's counts at one time: (bucket, count) pairs, by bucket, the
/// empty ones left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts(pub Vec<(u32, u64)>);

impl Counts {
    pub fn count(&self) -> u64 {
        self.0.iter().map(|&(_, n)| n).sum()
    }

    fn combine(&self, other: &Counts, f: impl Fn(u64, u64) -> u64) -> Counts {
        let mut out = BTreeMap::new();
        for &(i, n) in &self.0 {
            out.insert(i, n);
        }
        for &(i, n) in &other.0 {
            let v = out.entry(i).or_insert(0);
            *v = f(*v, n);
        }
        Counts(out.into_iter().filter(|&(_, n)| n > 0).collect())
    }

    /// What was recorded since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Counts) -> Counts {
        self.combine(earlier, u64::saturating_sub)
    }

    pub fn plus(&self, other: &Counts) -> Counts {
        self.combine(other, u64::saturating_add)
    }

    /// The `p`-th percentile in milliseconds, interpolated within its bucket;
    /// None when empty.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * p / 100.0).clamp(0.0, total as f64);
        let mut seen = 0.0;
        for &(i, n) in &self.0 {
            let n = n as f64;
            if seen + n >= rank {
                let (low, high) = bucket_range(i as usize);
                let within = if n > 0.0 { (rank - seen) / n } else { 0.0 };
                return Some((low + (high - low) * within) / 1000.0);
            }
            seen += n;
        }
        self.0
            .last()
            .map(|&(i, _)| bucket_range(i as usize).1 / 1000.0)
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            p50: self.percentile_ms(50.0),
            p90: self.percentile_ms(90.0),
            p99: self.percentile_ms(99.0),
        }
    }
}

/// Percentiles of a latency, in milliseconds (None: nothing measured).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// A quantity sampled over an epoch: its mean, its highest and its last value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub max: f64,
    pub last: f64,
}

/// One node's reads in an epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    pub reads: u64,
    pub latency_ms: Percentiles,
    pub histogram: Counts,
}

/// A point of the window timeline kept at most this often.
const TIMELINE_STEP: Duration = Duration::from_millis(50);
/// Points kept at most (at one per 50 ms, the last ~17 minutes).
const TIMELINE_POINTS: usize = 20_000;

/// What the fetch engine counts, shared between its driver and the stream's
/// consumer.
#[derive(Debug, Default)]
pub struct EngineCounters {
    /// Batch read times, from issue to finish (decoding included).
    pub batch_read: Histogram,
    samples: AtomicU64,
    window_sum: AtomicU64,
    in_flight_sum: AtomicU64,
    window_max: AtomicU64,
    in_flight_max: AtomicU64,
    window_last: AtomicU64,
    in_flight_last: AtomicU64,
    timeline: Mutex<VecDeque<(Instant, u32, u32)>>,
}

/// The engine's counters at one time.
#[derive(Debug, Clone, Default)]
pub struct EngineSnapshot {
    batch_read: Counts,
    samples: u64,
    window_sum: u64,
    in_flight_sum: u64,
}

impl EngineCounters {
    /// A read finished, with `in_flight` reads (it included) under a window of `window`.
    pub fn finished(&self, read_time: Duration, window: usize, in_flight: usize, now: Instant) {
        self.batch_read.record(read_time);
        let (w, f) = (window as u64, in_flight as u64);
        self.samples.fetch_add(1, Relaxed);
        self.window_sum.fetch_add(w, Relaxed);
        self.in_flight_sum.fetch_add(f, Relaxed);
        self.window_max.fetch_max(w, Relaxed);
        self.in_flight_max.fetch_max(f, Relaxed);
        self.window_last.store(w, Relaxed);
        self.in_flight_last.store(f, Relaxed);
        if let Ok(mut points) = self.timeline.try_lock() {
            if points
                .back()
                .is_none_or(|&(t, _, _)| now.duration_since(t) >= TIMELINE_STEP)
            {
                if points.len() == TIMELINE_POINTS {
                    points.pop_front();
                }
                points.push_back((now, window as u32, in_flight as u32));
            }
        }
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            batch_read: self.batch_read.snapshot(),
            samples: self.samples.load(Relaxed),
            window_sum: self.window_sum.load(Relaxed),
            in_flight_sum: self.in_flight_sum.load(Relaxed),
        }
    }

    /// Starts the highest values afresh (at an epoch's start).
    fn reset_max(&self) {
        self.window_max
            .store(self.window_last.load(Relaxed), Relaxed);
        self.in_flight_max
            .store(self.in_flight_last.load(Relaxed), Relaxed);
    }

    fn timeline_since(&self, start: Instant) -> Vec<[f64; 3]> {
        let points = self.timeline.lock().unwrap_or_else(|e| e.into_inner());
        points
            .iter()
            .filter(|&&(t, _, _)| t >= start)
            .map(|&(t, w, f)| {
                [
                    t.duration_since(start).as_secs_f64(),
                    f64::from(w),
                    f64::from(f),
                ]
            })
            .collect()
    }
}

/// The figures of one epoch of one reader, or of several merged. Times are in
/// seconds, latencies in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: u64,
    /// Every batch of the epoch was delivered.
    pub complete: bool,
    /// When the consumer first asked for a batch (seconds since the Unix epoch).
    pub started_at: f64,
    /// From then to the last batch delivered (or to now).
    pub seconds: f64,
    pub batches: u64,
    pub samples: u64,
    pub bytes: u64,
    pub skipped: u64,
    pub samples_per_s: f64,
    pub mb_per_s: f64,
    /// Time the consumer spent waiting for batches, and its share of `seconds`.
    pub wait_s: f64,
    pub stall: f64,
    /// Readers whose figures these are (DataLoader workers merged).
    pub readers: u64,
    /// Batch reads, from issue to finish: how many and how long.
    pub batch_reads: u64,
    pub batch_read_ms: Percentiles,
    /// Batch reads allowed in flight, and in flight, as reads finished.
    pub window: Spread,
    pub in_flight: Spread,
    /// [seconds since start, window, reads in flight], at most every 50 ms.
    pub timeline: Vec<[f64; 3]>,
    pub reads: u64,
    pub retries: u64,
    pub timeouts: u64,
    pub hedged: u64,
    pub hedges_won: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Per node (address): its sample reads and their latency.
    pub nodes: BTreeMap<String, NodeStats>,
    /// The batch read histogram, for merging.
    pub batch_read_histogram: Counts,
}

impl EpochStats {
    /// Recomputes the figures derived from the counts.
    fn derive(&mut self) {
        let secs = self.seconds.max(1e-9);
        self.samples_per_s = self.samples as f64 / secs;
        self.mb_per_s = self.bytes as f64 / 1e6 / secs;
        self.stall = if self.seconds > 0.0 {
            (self.wait_s / self.readers.max(1) as f64 / self.seconds).min(1.0)
        } else {
            0.0
        };
        self.batch_reads = self.batch_read_histogram.count();
        self.batch_read_ms = self.batch_read_histogram.percentiles();
        for node in self.nodes.values_mut() {
            node.reads = node.histogram.count();
            node.latency_ms = node.histogram.percentiles();
        }
    }

    /// The figures of several readers of one epoch (the DataLoader workers
    /// of a rank) as one: counts and waits summed, the span from the first
    /// start to the last end, histograms added, windows summed (the reads in
    /// flight of the whole rank), timelines summed on a common grid. The
    /// stall is the mean of the readers' (each waits in its own process).
    pub fn merge(parts: &[EpochStats]) -> Option<EpochStats> {
        let first = parts.first()?;
        let start = parts
            .iter()
            .map(|p| p.started_at)
            .fold(f64::INFINITY, f64::min);
        let end = parts
            .iter()
            .map(|p| p.started_at + p.seconds)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut out = EpochStats {
            epoch: first.epoch,
            complete: parts.iter().all(|p| p.complete),
            started_at: start,
            seconds: (end - start).max(0.0),
            ..EpochStats::default()
        };
        for p in parts {
            out.batches += p.batches;
            out.samples += p.samples;
            out.bytes += p.bytes;
            out.skipped += p.skipped;
            out.wait_s += p.wait_s;
            out.readers += p.readers.max(1);
            out.reads += p.reads;
            out.retries += p.retries;
            out.timeouts += p.timeouts;
            out.hedged += p.hedged;
            out.hedges_won += p.hedges_won;
            out.cache_hits += p.cache_hits;
            out.cache_misses += p.cache_misses;
            out.batch_read_histogram = out.batch_read_histogram.plus(&p.batch_read_histogram);
            for (addr, node) in &p.nodes {
                let n = out.nodes.entry(addr.clone()).or_default();
                n.histogram = n.histogram.plus(&node.histogram);
            }
            out.window.mean += p.window.mean;
            out.window.max += p.window.max;
            out.window.last += p.window.last;
            out.in_flight.mean += p.in_flight.mean;
            out.in_flight.max += p.in_flight.max;
            out.in_flight.last += p.in_flight.last;
        }
        out.timeline = merged_timeline(parts, start);
        out.derive();
        Some(out)
    }
}

/// The readers' timelines summed on a grid of [`TIMELINE_STEP`] from `start`:
/// at each point, each reader's last value at or before it.
fn merged_timeline(parts: &[EpochStats], start: f64) -> Vec<[f64; 3]> {
    let step = TIMELINE_STEP.as_secs_f64();
    let end = parts
        .iter()
        .filter_map(|p| p.timeline.last().map(|pt| p.started_at + pt[0]))
        .fold(f64::NEG_INFINITY, f64::max);
    if !end.is_finite() {
        return Vec::new();
    }
    let points = (((end - start) / step + 1e-9).floor() as usize + 1).min(TIMELINE_POINTS);
    let mut cursors = vec![0usize; parts.len()];
    (0..points)
        .map(|k| {
            let t = k as f64 * step;
            let (mut w, mut f) = (0.0, 0.0);
            for (p, cursor) in parts.iter().zip(cursors.iter_mut()) {
                let offset = p.started_at - start;
                while *cursor + 1 < p.timeline.len()
                    && offset + p.timeline[*cursor + 1][0] <= t + 1e-9
                {
                    *cursor += 1;
                }
                if let Some(pt) = p
                    .timeline
                    .get(*cursor)
                    .filter(|pt| offset + pt[0] <= t + 1e-9)
                {
                    w += pt[1];
                    f += pt[2];
                }
            }
            [t, w, f]
        })
        .collect()
}

/// The store's counters at one time (see [`crate::ReadStats`]).
fn store_delta(now: &crate::ReadStats, then: &crate::ReadStats, out: &mut EpochStats) {
    out.reads = now.reads.saturating_sub(then.reads);
    out.retries = now.retries.saturating_sub(then.retries);
    out.timeouts = now.timeouts.saturating_sub(then.timeouts);
    out.hedged = now.hedged.saturating_sub(then.hedged);
    out.hedges_won = now.hedges_won.saturating_sub(then.hedges_won);
    out.cache_hits = now.cache_hits.saturating_sub(then.cache_hits);
    out.cache_misses = now.cache_misses.saturating_sub(then.cache_misses);
    let empty = Counts::default();
    for (addr, counts) in &now.nodes {
        let before = then
            .nodes
            .iter()
            .find(|(a, _)| a == addr)
            .map_or(&empty, |(_, c)| c);
        let delta = counts.since(before);
        if delta.count() > 0 {
            out.nodes.insert(
                addr.clone(),
                NodeStats {
                    histogram: delta,
                    ..NodeStats::default()
                },
            );
        }
    }
}

/// One epoch being counted by a reader's consumer.
#[derive(Debug, Clone)]
pub struct EpochCounter {
    epoch: u64,
    started: Instant,
    started_at: SystemTime,
    last: Instant,
    batches: u64,
    samples: u64,
    bytes: u64,
    skipped: u64,
    wait: Duration,
    complete: bool,
    engine: EngineSnapshot,
    store: crate::ReadStats,
}

impl EpochCounter {
    /// Starts counting `epoch` at `now`, from the store's counters `store`
    /// and the engine's as they are now.
    pub fn start(
        epoch: u64,
        engine: &EngineCounters,
        store: crate::ReadStats,
        now: Instant,
    ) -> Self {
        engine.reset_max();
        Self::from(epoch, engine.snapshot(), store, now)
    }

    /// Starts counting the first epoch of a new engine: from zero, since its
    /// reads started with it.
    pub fn first(epoch: u64, store: crate::ReadStats, now: Instant) -> Self {
        Self::from(epoch, EngineSnapshot::default(), store, now)
    }

    fn from(epoch: u64, engine: EngineSnapshot, store: crate::ReadStats, now: Instant) -> Self {
        Self {
            epoch,
            started: now,
            started_at: SystemTime::now(),
            last: now,
            batches: 0,
            samples: 0,
            bytes: 0,
            skipped: 0,
            wait: Duration::ZERO,
            complete: false,
            engine,
            store,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The consumer waited `wait` for a batch of `samples` real samples and
    /// `bytes` bytes, `skipped` left out, delivered at `now`.
    pub fn delivered(&mut self, samples: u64, bytes: u64, skipped: u64, now: Instant) {
        self.batches += 1;
        self.samples += samples;
        self.bytes += bytes;
        self.skipped += skipped;
        self.last = now;
    }

    pub fn waited(&mut self, wait: Duration) {
        self.wait += wait;
    }

    /// Every batch was delivered.
    pub fn finish(&mut self) {
        self.complete = true;
    }

    /// The figures so far (up to the last batch once complete, else up to `now`).
    pub fn stats(
        &self,
        engine: &EngineCounters,
        store: &crate::ReadStats,
        now: Instant,
    ) -> EpochStats {
        let end = if self.complete { self.last } else { now };
        let unix = self
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let e = engine.snapshot();
        let finished = e.samples.saturating_sub(self.engine.samples);
        let mean = |sum: u64, base: u64| {
            if finished == 0 {
                0.0
            } else {
                sum.saturating_sub(base) as f64 / finished as f64
            }
        };
        let mut out = EpochStats {
            epoch: self.epoch,
            complete: self.complete,
            started_at: unix.as_secs_f64(),
            seconds: end.saturating_duration_since(self.started).as_secs_f64(),
            batches: self.batches,
            samples: self.samples,
            bytes: self.bytes,
            skipped: self.skipped,
            wait_s: self.wait.as_secs_f64(),
            readers: 1,
            window: Spread {
                mean: mean(e.window_sum, self.engine.window_sum),
                max: engine.window_max.load(Relaxed) as f64,
                last: engine.window_last.load(Relaxed) as f64,
            },
            in_flight: Spread {
                mean: mean(e.in_flight_sum, self.engine.in_flight_sum),
                max: engine.in_flight_max.load(Relaxed) as f64,
                last: engine.in_flight_last.load(Relaxed) as f64,
            },
            timeline: engine.timeline_since(self.started),
            batch_read_histogram: e.batch_read.since(&self.engine.batch_read),
            ..EpochStats::default()
        };
        store_delta(store, &self.store, &mut out);
        out.derive();
        out
    }
}

/// A reader's figures: the epoch under way (None between epochs) and the
/// last one finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReaderStats {
    pub current: Option<EpochStats>,
    pub last: Option<EpochStats>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_narrow() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            15,
            16,
            17,
            31,
            32,
            1000,
            50_000,
            1 << 30,
            u64::MAX / 2,
        ] {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            last = b;
            let (low, high) = bucket_range(b);
            if b < BUCKETS - 1 {
                assert!(
                    low <= us as f64 && (us as f64) < high,
                    "{us}: {low}..{high}"
                );
                assert!(high - low <= (low / 16.0).max(1.0), "{us}: {low}..{high}");
            }
        }
    }

    #[test]
    fn percentiles_are_within_a_bucket_of_the_exact_ones() {
        let h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.snapshot().percentiles();
        for (got, want) in [(p.p50, 50.0), (p.p90, 90.0), (p.p99, 99.0)] {
            let got = got.unwrap();
            assert!((got - want).abs() <= want * 0.07, "{got} vs {want}");
        }
        assert_eq!(Counts::default().percentile_ms(50.0), None);
    }

    #[test]
    fn snapshots_subtract_and_add() {
        let h = Histogram::default();
        h.record(Duration::from_millis(5));
        let before = h.snapshot();
        for _ in 0..10 {
            h.record(Duration::from_millis(50));
        }
        let since = h.snapshot().since(&before);
        assert_eq!(since.count(), 10);
        let p50 = since.percentile_ms(50.0).unwrap();
        assert!((p50 - 50.0).abs() < 3.0, "{p50}");
        assert_eq!(since.plus(&before).count(), 11);
    }

    #[test]
    fn readers_merge_into_one_with_percentiles_recomputed() {
        let part = |start: f64, secs: f64, ms: u64, samples: u64| {
            let h = Histogram::default();
            for _ in 0..samples {
                h.record(Duration::from_millis(ms));
            }
            let mut s = EpochStats {
                epoch: 3,
                complete: true,
                started_at: start,
                seconds: secs,
                samples,
                bytes: samples * 1000,
                wait_s: secs / 2.0,
                readers: 1,
                batch_read_histogram: h.snapshot(),
                window: Spread {
                    mean: 4.0,
                    max: 8.0,
                    last: 4.0,
                },
                timeline: vec![[0.0, 4.0, 2.0], [secs, 8.0, 3.0]],
                ..EpochStats::default()
            };
            s.derive();
            s
        };
        let merged =
            EpochStats::merge(&[part(100.0, 2.0, 10, 100), part(100.5, 2.0, 30, 300)]).unwrap();
        assert_eq!(merged.samples, 400);
        assert_eq!(merged.readers, 2);
        assert!((merged.seconds - 2.5).abs() < 1e-9);
        assert!((merged.samples_per_s - 160.0).abs() < 1e-6);
        // Each waited half its epoch: the mean stall over 2.5 s.
        assert!((merged.stall - 0.4).abs() < 1e-9, "{}", merged.stall);
        let p50 = merged.batch_read_ms.p50.unwrap();
        assert!((p50 - 30.0).abs() < 2.0, "{p50}");
        assert_eq!(merged.window.max, 16.0);
        // At 0.5 s the second reader has started: 4 + 4 in flight allowed.
        let at = |t: f64| {
            merged
                .timeline
                .iter()
                .find(|p| (p[0] - t).abs() < 1e-6)
                .unwrap()[1]
        };
        assert_eq!(at(0.0), 4.0);
        assert_eq!(at(0.5), 8.0);
        assert_eq!(at(2.5), 16.0);
        assert!(EpochStats::merge(&[]).is_none());
    }
}
