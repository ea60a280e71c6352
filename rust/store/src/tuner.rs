//! Automatic choice of the fetch window (batch reads in flight).
//!
//! The window starts small and grows while two things hold: the consumer is
//! waiting for batches (so more concurrency could help), and the last growth
//! raised throughput by more than 10%. At a plateau it settles on the smallest
//! window measured within 5% of the best rate, and it never exceeds what the
//! memory budget allows at the observed batch size. If throughput later
//! falls well below the plateau while the consumer waits (latency rose, a node
//! slowed down), it starts growing again. A fixed window disables all of this.
//!
//! What a reader learned is remembered per table for the rest of the process,
//! so the next epoch starts where this one ended.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

fn learned_windows() -> &'static Mutex<HashMap<String, usize>> {
    static LEARNED: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    LEARNED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The window learned for `table` by an earlier reader of this process.
pub fn recall(table: &str) -> Option<usize> {
    learned_windows().lock().ok()?.get(table).copied()
}

/// Remembers the window learned for `table`.
pub fn remember(table: &str, window: usize) {
    if let Ok(mut m) = learned_windows().lock() {
        m.insert(table.to_string(), window);
    }
}

use std::time::{Duration, Instant};

/// Batches a measurement interval spans at least.
const MIN_INTERVAL_BATCHES: usize = 8;
/// And its minimum duration, so that fast local reads are not judged on noise.
const MIN_INTERVAL: Duration = Duration::from_millis(250);
const GROWTH: f64 = 1.5;
/// Growth steps without gain before settling (one miss may be noise).
const MAX_MISSES: u32 = 2;
/// Settled intervals well below the best rate before searching again.
const RETUNE_AFTER: u32 = 3;
/// A growth step must raise throughput by this much to count: CPU-bound
/// reads fluctuate by several percent from interval to interval.
const GAIN: f64 = 1.1;
const RETUNE_DROP: f64 = 0.7;
/// Settling picks the smallest window measured within this fraction of the
/// best rate: at equal throughput, fewer reads in flight use less memory and
/// cache (and a noisy interval must not leave the window large).
const NEAR_BEST: f64 = 0.95;

#[derive(Debug, Clone)]
pub struct WindowTuner {
    window: usize,
    max_window: usize,
    fixed: bool,
    memory_budget: usize,
    avg_batch_bytes: f64,
    interval_start: Instant,
    interval_batches: usize,
    interval_starved: usize,
    growing: bool,
    best_rate: f64,
    best_window: usize,
    /// (window, rate) of each interval judged in the current search.
    tried: Vec<(usize, f64)>,
    /// Growth steps in a row that did not beat the best rate.
    misses: u32,
    /// Batches outside the window that the memory budget must also cover.
    reserved: usize,
    /// Consecutive settled intervals well below the best rate.
    low_intervals: u32,
    /// Whether the first interval (which includes connecting and the first
    /// round trip) is over; its rate says nothing about the window.
    warmed_up: bool,
    /// The window just changed: the interval under way mixes the old and new
    /// windows and is not judged.
    settling: bool,
    /// Where to remember what was learned.
    table: Option<String>,
}

impl WindowTuner {
    /// A tuner starting at `initial`, growing up to `max_window` batches and
    /// `memory_budget` bytes of batches in flight.
    pub fn auto(initial: usize, max_window: usize, memory_budget: usize) -> Self {
        let window = initial.clamp(1, max_window.max(1));
        Self {
            window,
            max_window: max_window.max(1),
            fixed: false,
            memory_budget,
            avg_batch_bytes: 0.0,
            interval_start: Instant::now(),
            interval_batches: 0,
            interval_starved: 0,
            growing: true,
            best_rate: 0.0,
            best_window: window,
            tried: Vec::new(),
            misses: 0,
            reserved: 0,
            low_intervals: 0,
            warmed_up: false,
            settling: false,
            table: None,
        }
    }

    /// Counts `batches` held outside the window (queued, in use, pooled) against
    /// the memory budget.
    pub fn reserve(mut self, batches: usize) -> Self {
        self.reserved = batches;
        self
    }

    /// Remembers each decision for the next reader of `table` in this process.
    pub fn learning_for(mut self, table: &str) -> Self {
        self.table = Some(table.to_string());
        self
    }

    pub fn fixed(window: usize) -> Self {
        let mut t = Self::auto(window, window, usize::MAX);
        t.fixed = true;
        t
    }

    /// Batch reads that may be in flight now.
    pub fn window(&self) -> usize {
        if self.fixed {
            return self.window;
        }
        self.window.min(self.memory_cap())
    }

    /// The most batches in flight the memory budget allows at the observed
    /// batch size.
    fn memory_cap(&self) -> usize {
        if self.avg_batch_bytes <= 0.0 {
            return self.max_window;
        }
        let by_memory = (self.memory_budget as f64 / self.avg_batch_bytes).floor() as usize;
        by_memory.saturating_sub(self.reserved).max(1)
    }

    /// Records a finished batch of `bytes`; `starved` if the consumer had
    /// nothing queued when it was delivered.
    pub fn on_batch(&mut self, bytes: usize, starved: bool) {
        self.on_batch_at(bytes, starved, Instant::now());
    }

    fn remember(&self) {
        if let Some(table) = &self.table {
            remember(
                table,
                if self.growing {
                    self.window
                } else {
                    self.best_window
                },
            );
        }
    }

    /// Sets the window; the next interval, while reads at the new window
    /// are still filling the pipeline, is not measured.
    fn set_window(&mut self, window: usize) {
        if window != self.window {
            self.window = window;
            self.settling = true;
        }
    }

    /// Grows the window; false if the memory budget or the bound allow no more.
    fn grow(&mut self) -> bool {
        // Double while small, then finer steps so as not to overshoot far.
        let factor = if self.window < 8 { 2.0 } else { GROWTH };
        let next = (self.window as f64 * factor).ceil() as usize;
        let cap = self.memory_cap().min(self.max_window);
        let next = next.max(self.window + 1).min(cap);
        if next <= self.window {
            return false;
        }
        self.set_window(next);
        true
    }

    /// Ends a search on the smallest window that did about as well as the best.
    fn settle(&mut self) {
        self.growing = false;
        let best = self.tried.iter().map(|&(_, r)| r).fold(0.0, f64::max);
        self.best_window = self
            .tried
            .iter()
            .filter(|&&(_, r)| r >= best * NEAR_BEST)
            .map(|&(w, _)| w)
            .min()
            .unwrap_or(self.best_window);
        self.set_window(self.best_window);
    }

    pub fn on_batch_at(&mut self, bytes: usize, starved: bool, now: Instant) {
        self.avg_batch_bytes = if self.avg_batch_bytes == 0.0 {
            bytes as f64
        } else {
            0.9 * self.avg_batch_bytes + 0.1 * bytes as f64
        };
        if self.fixed {
            return;
        }
        self.interval_batches += 1;
        self.interval_starved += starved as usize;
        let elapsed = now.duration_since(self.interval_start);
        if self.settling {
            // The window just changed: once a window's worth of batches has
            // arrived, the reads it allowed are under way and measuring can start.
            if self.interval_batches < self.window() {
                return;
            }
        } else {
            // Two windows' worth of batches: with a long round trip, the rate
            // over a single window swings with the phase of the reads in flight.
            let needed = MIN_INTERVAL_BATCHES.max(2 * self.window());
            if self.interval_batches < needed || elapsed < MIN_INTERVAL {
                return;
            }
        }
        let rate = self.interval_batches as f64 / elapsed.as_secs_f64();
        let starved = self.interval_starved * 2 > self.interval_batches;
        self.interval_start = now;
        self.interval_batches = 0;
        self.interval_starved = 0;
        if !self.warmed_up {
            self.warmed_up = true;
            return;
        }
        if self.settling {
            self.settling = false;
            return;
        }
        if !starved {
            // The consumer sets the pace: more reads in flight would only cost memory.
            return;
        }
        if !self.growing && rate >= self.best_rate * RETUNE_DROP {
            self.low_intervals = 0;
        }
        if self.growing {
            self.tried.push((self.window, rate));
            if rate > self.best_rate * GAIN {
                self.best_rate = rate;
                self.best_window = self.window;
                self.misses = 0;
                if !self.grow() {
                    // At the memory budget.
                    self.settle();
                }
            } else {
                self.misses += 1;
                if self.misses >= MAX_MISSES || !self.grow() {
                    // A plateau (or worse: too much in flight costs CPU and
                    // memory traffic).
                    self.settle();
                }
            }
        } else if rate < self.best_rate * RETUNE_DROP {
            // One slow interval is noise (a pause of the consumer, a busy core);
            // several in a row mean conditions changed (latency rose, a node
            // slowed): search again.
            self.low_intervals += 1;
            if self.low_intervals < RETUNE_AFTER {
                return;
            }
            self.low_intervals = 0;
            self.best_rate = rate;
            self.best_window = self.window;
            self.misses = 0;
            self.tried.clear();
            self.growing = self.grow();
        }
        self.remember();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a store with `latency` per batch read and unlimited parallelism:
    /// throughput is window / latency until the consumer's own ceiling.
    fn simulate(t: &mut WindowTuner, latency: f64, consumer_max: f64, steps: usize) {
        let mut now = Instant::now();
        for _ in 0..steps {
            let supply = t.window() as f64 / latency;
            let rate = supply.min(consumer_max);
            now += Duration::from_secs_f64(1.0 / rate);
            t.on_batch_at(1 << 20, supply <= consumer_max, now);
        }
    }

    #[test]
    fn grows_until_the_consumer_is_the_limit() {
        let mut t = WindowTuner::auto(2, 256, usize::MAX);
        simulate(&mut t, 0.1, 400.0, 5000);
        // 400 batches/s at 100 ms needs 40 in flight.
        assert!(
            t.window() >= 40 && t.window() <= 90,
            "window {}",
            t.window()
        );
    }

    #[test]
    fn finds_a_long_round_trips_window_within_seconds() {
        // 100 ms per batch read: 40 in flight needed for 400 batches/s. Each
        // step waits for the reads it allowed to arrive (a round trip), then
        // measures a quarter of a second: a few seconds in all, not a minute.
        let mut t = WindowTuner::auto(2, 256, usize::MAX);
        let start = Instant::now();
        let mut now = start;
        while t.window() < 40 && now - start < Duration::from_secs(60) {
            let rate = (t.window() as f64 / 0.1).min(400.0);
            now += Duration::from_secs_f64(1.0 / rate);
            t.on_batch_at(1 << 20, true, now);
        }
        let took = now - start;
        assert!(
            took < Duration::from_secs(4),
            "window {} after {took:?}",
            t.window()
        );
    }

    #[test]
    fn stays_small_when_reads_are_fast() {
        let mut t = WindowTuner::auto(2, 256, usize::MAX);
        simulate(&mut t, 0.001, 400.0, 3000);
        assert!(t.window() <= 3, "window {}", t.window());
    }

    #[test]
    fn respects_the_memory_budget() {
        let mut t = WindowTuner::auto(2, 256, 10 << 20);
        simulate(&mut t, 0.2, 1000.0, 5000);
        assert_eq!(t.window(), 10);
    }

    #[test]
    fn settles_near_the_best_window_when_too_much_in_flight_hurts() {
        // Throughput peaks at 16 batches in flight and falls beyond.
        let mut t = WindowTuner::auto(2, 256, usize::MAX);
        let mut now = Instant::now();
        for _ in 0..5000 {
            let w = t.window() as f64;
            let rate = if w <= 16.0 {
                w * 10.0
            } else {
                160.0 * (16.0 / w).sqrt()
            };
            now += Duration::from_secs_f64(1.0 / rate);
            t.on_batch_at(1 << 20, true, now);
        }
        assert!((12..=24).contains(&t.window()), "window {}", t.window());
    }

    #[test]
    fn a_noisy_plateau_settles_on_a_small_window() {
        // The consumer's ceiling is reached at 4 batches in flight; beyond, the
        // rate only wobbles by a few percent from interval to interval.
        let mut t = WindowTuner::auto(2, 256, usize::MAX);
        let mut now = Instant::now();
        let mut seed = 7u64;
        for _ in 0..20_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let wobble = 1.0 + ((seed >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.08;
            let rate = (t.window() as f64 * 50.0).min(200.0) * wobble;
            now += Duration::from_secs_f64(1.0 / rate);
            t.on_batch_at(1 << 20, true, now);
        }
        assert!(!t.growing && t.window() <= 6, "window {}", t.window());
    }

    #[test]
    fn fixed_never_moves() {
        let mut t = WindowTuner::fixed(3);
        simulate(&mut t, 0.2, 1000.0, 500);
        assert_eq!(t.window(), 3);
    }
}
