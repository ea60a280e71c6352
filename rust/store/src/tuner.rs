//! Automatic choice of the fetch window (batch reads in flight).
//!
//! The window starts small and grows while two things hold: the consumer is
//! waiting for batches (so more concurrency could help), and the last growth
//! raised throughput by more than 5%. It stops at a plateau, and never exceeds
//! what the memory budget allows at the observed batch size. If throughput later
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
const MIN_INTERVAL_BATCHES: usize = 4;
/// And its minimum duration, so that fast local reads are not judged on noise.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
const GROWTH: f64 = 2.0;
const GAIN: f64 = 1.05;
const RETUNE_DROP: f64 = 0.7;

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
    last_rate: f64,
    growing: bool,
    plateau_rate: f64,
}

impl WindowTuner {
    /// A tuner starting at `initial`, growing up to `max_window` batches and
    /// `memory_budget` bytes of batches in flight.
    pub fn auto(initial: usize, max_window: usize, memory_budget: usize) -> Self {
        Self {
            window: initial.clamp(1, max_window.max(1)),
            max_window: max_window.max(1),
            fixed: false,
            memory_budget,
            avg_batch_bytes: 0.0,
            interval_start: Instant::now(),
            interval_batches: 0,
            interval_starved: 0,
            last_rate: 0.0,
            growing: true,
            plateau_rate: 0.0,
        }
    }

    pub fn fixed(window: usize) -> Self {
        let mut t = Self::auto(window, window, usize::MAX);
        t.fixed = true;
        t
    }

    /// Records what was learned for the next reader of `table` in this process.
    pub fn remember_for(&self, table: &str) {
        if !self.fixed {
            remember(table, self.window);
        }
    }

    /// Batch reads that may be in flight now.
    pub fn window(&self) -> usize {
        if self.fixed || self.avg_batch_bytes <= 0.0 {
            return self.window;
        }
        let by_memory = (self.memory_budget as f64 / self.avg_batch_bytes).floor() as usize;
        self.window.min(by_memory.max(1))
    }

    /// Records a finished batch of `bytes`; `starved` if the consumer had
    /// nothing queued when it was delivered.
    pub fn on_batch(&mut self, bytes: usize, starved: bool) {
        self.on_batch_at(bytes, starved, Instant::now());
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
        if self.interval_batches < MIN_INTERVAL_BATCHES.max(self.window / 2)
            || elapsed < MIN_INTERVAL
        {
            return;
        }
        let rate = self.interval_batches as f64 / elapsed.as_secs_f64();
        let starved = self.interval_starved * 2 > self.interval_batches;
        self.interval_start = now;
        self.interval_batches = 0;
        self.interval_starved = 0;
        if !starved {
            // The consumer sets the pace: more reads in flight would only cost memory.
            self.last_rate = rate;
            return;
        }
        if self.growing {
            if self.last_rate == 0.0 || rate > self.last_rate * GAIN {
                self.window = ((self.window as f64 * GROWTH).ceil() as usize).min(self.max_window);
            } else {
                self.growing = false;
                self.plateau_rate = rate.max(self.last_rate);
            }
        } else if rate < self.plateau_rate * RETUNE_DROP {
            self.growing = true;
        }
        self.last_rate = rate;
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
    fn fixed_never_moves() {
        let mut t = WindowTuner::fixed(3);
        simulate(&mut t, 0.2, 1000.0, 500);
        assert_eq!(t.window(), 3);
    }
}
