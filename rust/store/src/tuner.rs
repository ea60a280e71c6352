//! Automatic choice of the fetch window (batch reads in flight).
//!
//! What must be in flight to keep a reader busy is its throughput times the
//! time a read takes when nothing queues ahead of it (Little's law: the
//! bandwidth-delay product). Both are measured from finished batch reads, as
//! TCP's BBR does from acknowledged packets:
//!
//! - **throughput**: the bytes that finished over the last [`RATE_ROUNDS`]
//!   round trips, over their length (not over one read's time in flight, as
//!   BBR takes it per packet: see [`RATE_ROUNDS`]); the window uses the
//!   highest such rate of the last [`BW_ROUNDS`] round trips;
//! - **round trip**: the lowest time in flight seen over the last
//!   [`MIN_RTT_LIFE`]. A window wider than needed only queues reads (at the
//!   server, in the network), which lengthens every round trip but not the
//!   lowest; so that queueing of its own making never passes for network
//!   latency, the tuner narrows the window to [`MIN_WINDOW`] reads for one
//!   round trip when starting ends and whenever the lowest is that old
//!   (about 1% of the time at a 100 ms round trip), and takes the lowest seen
//!   then.
//!
//! The window is [`GAIN`] times that product, in bytes, divided by the bytes
//! of a batch: sized in bytes and round trips, not by growing a batch count a
//! step at a time. A reader starts with the window doubling (almost
//! tripling) every round trip until throughput stops rising by a quarter
//! three round trips in a row, as TCP's slow start; then the window follows
//! the estimates, whose factor of two lets throughput rise (a faster consumer,
//! a less loaded server) and so be measured and followed. A consumer slower
//! than the store sets the rate, so the window stays what that rate needs.
//! The memory budget bounds the window at the observed batch size; a fixed
//! window disables all of this.
//!
//! What a reader learned is remembered per table and batch size for the rest
//! of the process, so the next reader starts where the last one ended.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Factor on the bandwidth-delay product: room for batch read times that vary
/// (a batch waits for its slowest sample) and for throughput to rise.
const GAIN: f64 = 2.0;
/// The factor while starting: the window grows by it every round trip.
const STARTUP_GAIN: f64 = 2.89;
/// Starting ends once throughput has not grown by this factor for
/// [`STARTUP_PLATEAU`] round trips in a row.
const STARTUP_GROWTH: f64 = 1.25;
const STARTUP_PLATEAU: u32 = 3;
/// Round trips over which the highest throughput is kept.
const BW_ROUNDS: usize = 10;
/// Each throughput sample is the bytes delivered over this many round trips.
/// Reads finish in clumps (a server's pauses, many reads served together): a
/// rate over one read's time in flight that ends in a clump overstated a
/// real node's throughput 3-5 fold, and one over a single round trip that
/// ends inside a clump counts part of it twice.
const RATE_ROUNDS: usize = 2;
/// How long the lowest round trip stands before it is measured again.
const MIN_RTT_LIFE: Duration = Duration::from_secs(10);
/// A round trip lasts at least this long (and at least the lowest round
/// trip), so that the filters of a store answering in microseconds span more
/// than noise.
const MIN_ROUND: Duration = Duration::from_millis(10);
/// The window never goes below this many batch reads.
const MIN_WINDOW: usize = 4;

/// What a reader of a table learned, for the next one.
#[derive(Debug, Clone, Copy)]
struct Learned {
    bandwidth: f64,
    min_rtt: Duration,
    batch_bytes: f64,
}

fn learned() -> &'static Mutex<HashMap<String, Learned>> {
    static LEARNED: OnceLock<Mutex<HashMap<String, Learned>>> = OnceLock::new();
    LEARNED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The window an earlier reader of `key` in this process ended with.
pub fn recall(key: &str) -> Option<usize> {
    let l = *learned().lock().ok()?.get(key)?;
    Some(window_for(GAIN, l.bandwidth, l.min_rtt, l.batch_bytes))
}

fn window_for(gain: f64, bandwidth: f64, min_rtt: Duration, batch_bytes: f64) -> usize {
    if batch_bytes <= 0.0 {
        return MIN_WINDOW;
    }
    let w = (gain * bandwidth * min_rtt.as_secs_f64() / batch_bytes).ceil();
    if w.is_finite() && w > 0.0 {
        (w as usize).max(MIN_WINDOW)
    } else {
        MIN_WINDOW
    }
}

/// Handed out when a read is issued and given back when it finishes.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    sent: Instant,
    /// Bytes finished before it was issued.
    delivered: u64,
}

impl Ticket {
    /// When the read was issued.
    pub fn sent(&self) -> Instant {
        self.sent
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Startup,
    Steady,
    /// Measuring the round trip afresh until a read issued from `delivered`
    /// on finishes.
    Probe {
        from: u64,
    },
}

#[derive(Debug, Clone)]
pub struct WindowTuner {
    fixed: Option<usize>,
    window: usize,
    max_window: usize,
    memory_budget: usize,
    /// Batches outside the window that the memory budget must also cover.
    reserved: usize,
    avg_batch_bytes: f64,
    phase: Phase,
    /// Bytes of every finished read so far.
    delivered: u64,
    /// Round trips: one ends when a read issued after the last one ended
    /// finishes, and lasts at least the lowest round trip. Where the last
    /// [`RATE_ROUNDS`] started, (when, bytes delivered then); the current
    /// one's start last.
    round_starts: VecDeque<(Instant, u64)>,
    /// The throughput sample taken at the end of each of the last rounds.
    round_rates: VecDeque<f64>,
    min_rtt: Option<(Duration, Instant)>,
    probe_min: Option<Duration>,
    /// The throughput starting was last measured to rise to, and the round
    /// trips since.
    full_bw: f64,
    flat_rounds: u32,
    /// Where to remember what was learned.
    key: Option<String>,
}

impl WindowTuner {
    /// A tuner starting at `initial` batch reads, within `max_window` of them
    /// and `memory_budget` bytes of batches in flight.
    pub fn auto(initial: usize, max_window: usize, memory_budget: usize) -> Self {
        let now = Instant::now();
        let max_window = max_window.max(1);
        Self {
            fixed: None,
            window: initial.clamp(1, max_window),
            max_window,
            memory_budget,
            reserved: 0,
            avg_batch_bytes: 0.0,
            phase: Phase::Startup,
            delivered: 0,
            round_starts: VecDeque::from([(now, 0)]),
            round_rates: VecDeque::with_capacity(BW_ROUNDS),
            min_rtt: None,
            probe_min: None,
            full_bw: 0.0,
            flat_rounds: 0,
            key: None,
        }
    }

    pub fn fixed(window: usize) -> Self {
        let mut t = Self::auto(window, window, usize::MAX);
        t.fixed = Some(window.max(1));
        t
    }

    /// Counts `batches` held outside the window (queued, in use, pooled) against
    /// the memory budget.
    pub fn reserve(mut self, batches: usize) -> Self {
        self.reserved = batches;
        self
    }

    /// Starts from what an earlier reader of `key` learned in this process
    /// (skipping the start-up search), and remembers for the next one.
    pub fn learning_for(mut self, key: &str) -> Self {
        let known = learned().lock().ok().and_then(|m| m.get(key).copied());
        if let Some(l) = known {
            let now = Instant::now();
            self.phase = Phase::Steady;
            self.round_rates.push_back(l.bandwidth);
            self.min_rtt = Some((l.min_rtt, now));
            self.avg_batch_bytes = l.batch_bytes;
            self.full_bw = l.bandwidth;
            self.window = self.target().clamp(1, self.max_window);
        }
        self.key = Some(key.to_string());
        self
    }

    /// Batch reads that may be in flight now.
    pub fn window(&self) -> usize {
        match self.fixed {
            Some(w) => w,
            None => self.window.min(self.memory_cap()),
        }
    }

    /// The most batches in flight the memory budget allows at the observed
    /// batch size.
    fn memory_cap(&self) -> usize {
        if self.avg_batch_bytes <= 0.0 {
            return self.max_window;
        }
        let by_memory = (self.memory_budget as f64 / self.avg_batch_bytes).floor() as usize;
        by_memory
            .saturating_sub(self.reserved)
            .clamp(1, self.max_window)
    }

    /// The highest throughput (bytes/s) of the last round trips.
    fn bandwidth(&self) -> f64 {
        self.round_rates.iter().copied().fold(0.0, f64::max)
    }

    /// The window the estimates call for now.
    fn target(&self) -> usize {
        let Some((min_rtt, _)) = self.min_rtt else {
            return self.window;
        };
        let gain = match self.phase {
            Phase::Startup => STARTUP_GAIN,
            Phase::Steady => GAIN,
            Phase::Probe { .. } => return MIN_WINDOW,
        };
        window_for(gain, self.bandwidth(), min_rtt, self.avg_batch_bytes)
    }

    /// Call as a read is issued; hand the ticket back when it finishes.
    pub fn on_issue(&self, now: Instant) -> Ticket {
        Ticket {
            sent: now,
            delivered: self.delivered,
        }
    }

    /// Records a read of `bytes`, issued with `ticket`, finished at `now`.
    pub fn on_batch(&mut self, ticket: Ticket, bytes: usize, now: Instant) {
        self.avg_batch_bytes = if self.avg_batch_bytes == 0.0 {
            bytes as f64
        } else {
            0.9 * self.avg_batch_bytes + 0.1 * bytes as f64
        };
        if self.fixed.is_some() {
            return;
        }
        self.delivered += bytes as u64;
        let rtt = now.saturating_duration_since(ticket.sent);
        self.on_rtt(ticket, rtt, now);
        let min_round = self
            .min_rtt
            .map_or(MIN_ROUND, |(low, _)| low.max(MIN_ROUND));
        let (round_start, round_from) = *self.round_starts.back().expect("a round started");
        if ticket.delivered >= round_from && now.saturating_duration_since(round_start) >= min_round
        {
            self.end_round(now);
        }
        self.window = self.target().clamp(1, self.max_window);
    }

    fn on_rtt(&mut self, ticket: Ticket, rtt: Duration, now: Instant) {
        match self.phase {
            Phase::Probe { from } => {
                if ticket.delivered >= from {
                    // Issued within the narrowed window: the round trip
                    // without our own queueing.
                    let low = self.probe_min.map_or(rtt, |m| m.min(rtt));
                    self.min_rtt = Some((low, now));
                    self.probe_min = None;
                    self.phase = Phase::Steady;
                } else if rtt > Duration::ZERO {
                    self.probe_min = Some(self.probe_min.map_or(rtt, |m| m.min(rtt)));
                }
            }
            _ => match self.min_rtt {
                Some((low, _)) if rtt <= low => self.min_rtt = Some((rtt, now)),
                None if rtt > Duration::ZERO => self.min_rtt = Some((rtt, now)),
                Some((_, at))
                    if self.phase == Phase::Steady
                        && now.saturating_duration_since(at) > MIN_RTT_LIFE =>
                {
                    self.phase = Phase::Probe {
                        from: self.delivered,
                    };
                    self.probe_min = None;
                }
                _ => {}
            },
        }
    }

    fn end_round(&mut self, now: Instant) {
        let (since, from) = self.round_starts[0];
        let span = now.saturating_duration_since(since).as_secs_f64();
        let rate = (self.delivered - from) as f64 / span.max(1e-9);
        if self.round_starts.len() == RATE_ROUNDS {
            self.round_starts.pop_front();
        }
        self.round_starts.push_back((now, self.delivered));
        if self.round_rates.len() == BW_ROUNDS {
            self.round_rates.pop_front();
        }
        self.round_rates.push_back(rate);
        if self.phase == Phase::Startup {
            let bw = self.bandwidth();
            if bw >= self.full_bw * STARTUP_GROWTH {
                self.full_bw = bw;
                self.flat_rounds = 0;
            } else {
                self.flat_rounds += 1;
                if self.flat_rounds >= STARTUP_PLATEAU || self.window >= self.memory_cap() {
                    // Starting filled the pipe, and a server that is the limit
                    // with it: every round trip seen so far includes the queue
                    // of a wide window. Measure it without, right away.
                    self.phase = Phase::Probe {
                        from: self.delivered,
                    };
                    self.probe_min = None;
                }
            }
        }
        self.remember();
    }

    fn remember(&self) {
        let (Some(key), Some((min_rtt, _))) = (&self.key, self.min_rtt) else {
            return;
        };
        if let Ok(mut m) = learned().lock() {
            m.insert(
                key.clone(),
                Learned {
                    bandwidth: self.bandwidth(),
                    min_rtt,
                    batch_bytes: self.avg_batch_bytes,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// A store behind a network: each batch read crosses `delay` (the round
    /// trip, half each way) and is served first come, first served at
    /// `server` batches/s; a consumer takes at most `consumer` batches/s and
    /// queues at most 2 finished ones (reads finished but not consumed hold
    /// their place in the window, as in the engine). Returns the batches/s
    /// consumed over the last half of `seconds`.
    struct Sim {
        now: Instant,
        start: Instant,
        server_free: Instant,
        /// (finish time, ticket)
        flying: BinaryHeap<Reverse<(Instant, u64)>>,
        tickets: HashMap<u64, Ticket>,
        seq: u64,
        finished_unconsumed: usize,
        next_consume: Instant,
        consumed: Vec<Instant>,
    }

    impl Sim {
        fn new() -> Self {
            let now = Instant::now();
            Self {
                now,
                start: now,
                server_free: now,
                flying: BinaryHeap::new(),
                tickets: HashMap::new(),
                seq: 0,
                finished_unconsumed: 0,
                next_consume: now,
                consumed: Vec::new(),
            }
        }

        fn run(
            &mut self,
            t: &mut WindowTuner,
            delay: f64,
            server: f64,
            consumer: f64,
            seconds: f64,
        ) -> f64 {
            let end = self.now + Duration::from_secs_f64(seconds);
            let from = self.now + Duration::from_secs_f64(seconds / 2.0);
            let half = Duration::from_secs_f64(delay / 2.0);
            let service = Duration::from_secs_f64(1.0 / server);
            while self.now < end {
                while self.flying.len() + self.finished_unconsumed < t.window() {
                    let arrive = self.now + half;
                    let start = arrive.max(self.server_free);
                    self.server_free = start + service;
                    let done = self.server_free + half;
                    self.tickets.insert(self.seq, t.on_issue(self.now));
                    self.flying.push(Reverse((done, self.seq)));
                    self.seq += 1;
                }
                // The next event: a read finishing, or the consumer taking one.
                let next_done = self.flying.peek().map(|r| r.0 .0);
                let can_consume = self.finished_unconsumed > 0;
                let consume_at = self.next_consume.max(self.now);
                match next_done {
                    Some(d) if !can_consume || d <= consume_at => {
                        let Reverse((d, s)) = self.flying.pop().unwrap();
                        self.now = d;
                        let ticket = self.tickets.remove(&s).unwrap();
                        t.on_batch(ticket, 1 << 20, d);
                        self.finished_unconsumed += 1;
                    }
                    _ if can_consume => {
                        self.now = consume_at;
                        self.finished_unconsumed -= 1;
                        self.next_consume = self.now + Duration::from_secs_f64(1.0 / consumer);
                        self.consumed.push(self.now);
                    }
                    _ => unreachable!("nothing in flight and nothing to consume"),
                }
            }
            let n = self.consumed.iter().filter(|&&c| c >= from).count();
            n as f64 / (seconds / 2.0)
        }

        fn elapsed(&self) -> Duration {
            self.now - self.start
        }
    }

    #[test]
    fn fills_a_long_round_trip() {
        // 100 ms round trip, 400 batches/s: about 41 batches must be in flight.
        let mut t = WindowTuner::auto(8, 4096, usize::MAX);
        let rate = Sim::new().run(&mut t, 0.1, 400.0, 1e9, 20.0);
        assert!(rate > 0.95 * 400.0, "{rate} batches/s");
        assert!((41..=130).contains(&t.window()), "window {}", t.window());
    }

    #[test]
    fn reaches_full_speed_within_a_few_round_trips() {
        let mut t = WindowTuner::auto(8, 4096, usize::MAX);
        let mut sim = Sim::new();
        while t.window() < 41 && sim.elapsed() < Duration::from_secs(10) {
            sim.run(&mut t, 0.1, 400.0, 1e9, 0.01);
        }
        assert!(
            sim.elapsed() < Duration::from_millis(800),
            "window {} after {:?}",
            t.window(),
            sim.elapsed()
        );
    }

    #[test]
    fn stays_small_when_reads_are_fast() {
        let mut t = WindowTuner::auto(8, 4096, usize::MAX);
        let rate = Sim::new().run(&mut t, 0.0005, 400.0, 1e9, 20.0);
        assert!(rate > 0.95 * 400.0, "{rate} batches/s");
        assert!(t.window() <= 8, "window {}", t.window());
    }

    #[test]
    fn a_server_bound_window_does_not_creep_up() {
        // The server is the limit (a round trip of 2.5 ms of service, 1 ms of
        // network): reads queue at the server beyond a couple in flight, and
        // must not make the window grow over time.
        let mut t = WindowTuner::auto(8, 4096, usize::MAX);
        let mut sim = Sim::new();
        sim.run(&mut t, 0.001, 400.0, 1e9, 60.0);
        let rate = sim.run(&mut t, 0.001, 400.0, 1e9, 60.0);
        assert!(rate > 0.95 * 400.0, "{rate} batches/s");
        assert!(t.window() <= 8, "window {}", t.window());
    }

    /// A server that serves every read in flight at once, sharing its
    /// `server` batches/s among them (as a node's threads serve many
    /// requests), behind a network of `delay`: a read's time grows with the
    /// window however fast the network. Returns batches/s over `seconds`.
    fn shared_server(t: &mut WindowTuner, delay: f64, server: f64, seconds: f64) -> f64 {
        let start = Instant::now();
        let mut now = start;
        let end = start + Duration::from_secs_f64(seconds);
        // (work left in batches, ticket, arrival at the server)
        let mut flying: Vec<(f64, Ticket, Instant)> = Vec::new();
        let half = Duration::from_secs_f64(delay / 2.0);
        let mut done = 0usize;
        while now < end {
            while flying.len() < t.window() {
                flying.push((1.0, t.on_issue(now), now + half));
            }
            let serving: Vec<usize> = (0..flying.len()).filter(|&i| flying[i].2 <= now).collect();
            // The next event: a read arriving, or the least-done one finishing.
            let next_arrival = flying.iter().map(|f| f.2).filter(|&a| a > now).min();
            let k = serving.len() as f64;
            let finish = serving
                .iter()
                .map(|&i| flying[i].0)
                .fold(f64::INFINITY, f64::min);
            let step = if serving.is_empty() {
                next_arrival.expect("a read on its way") - now
            } else {
                let to_finish = Duration::from_secs_f64((finish * k / server).max(0.0));
                match next_arrival {
                    Some(a) if a - now < to_finish => a - now,
                    _ => to_finish,
                }
            };
            for &i in &serving {
                flying[i].0 -= step.as_secs_f64() * server / k;
            }
            now += step;
            let mut i = 0;
            while i < flying.len() {
                if flying[i].2 <= now && flying[i].0 <= 1e-9 {
                    let (_, ticket, _) = flying.swap_remove(i);
                    t.on_batch(ticket, 1 << 20, now + half);
                    done += 1;
                } else {
                    i += 1;
                }
            }
        }
        done as f64 / seconds
    }

    #[test]
    fn a_shared_server_is_not_queued_for() {
        // 0.5 ms of network, 400 batches/s shared by every read in flight: any
        // window serves 400/s, and a wide one only makes each read slower.
        let mut t = WindowTuner::auto(8, 4096, usize::MAX);
        let rate = shared_server(&mut t, 0.0005, 400.0, 5.0);
        assert!(rate > 0.95 * 400.0, "{rate} batches/s");
        assert!(t.window() <= 2 * MIN_WINDOW + 1, "window {}", t.window());
    }

    #[test]
    fn follows_the_consumer() {
        // A consumer of 100 batches/s over a 100 ms round trip needs ~10 in
        // flight, not what the store could serve (400/s -> 41).
        let mut t = WindowTuner::auto(8, 4096, usize::MAX);
        let rate = Sim::new().run(&mut t, 0.1, 400.0, 100.0, 20.0);
        assert!(rate > 0.97 * 100.0, "{rate} batches/s");
        assert!((10..=32).contains(&t.window()), "window {}", t.window());
    }

    #[test]
    fn follows_a_rising_and_a_falling_round_trip() {
        let mut t = WindowTuner::auto(8, 4096, usize::MAX);
        let mut sim = Sim::new();
        sim.run(&mut t, 0.01, 400.0, 1e9, 10.0);
        let small = t.window();
        // The network slows to 100 ms: within the round trip's life plus a
        // few round trips, full speed again.
        sim.run(&mut t, 0.1, 400.0, 1e9, 15.0);
        let rate = sim.run(&mut t, 0.1, 400.0, 1e9, 10.0);
        assert!(rate > 0.95 * 400.0, "{rate} batches/s after the slowdown");
        let large = t.window();
        assert!(large >= 41 && large > 3 * small, "{small} -> {large}");
        // And back to 10 ms: reads queue behind the wide window, so the
        // shorter round trip shows at the next measurement without our own
        // queueing, within the round trip's life; the window shrinks then.
        sim.run(&mut t, 0.01, 400.0, 1e9, 11.0);
        assert!(t.window() <= small + 2, "{large} -> {}", t.window());
    }

    #[test]
    fn respects_the_memory_budget() {
        let mut t = WindowTuner::auto(2, 4096, 10 << 20);
        Sim::new().run(&mut t, 0.2, 1000.0, 1e9, 10.0);
        assert_eq!(t.window(), 10);
        let mut t = WindowTuner::auto(2, 4096, 20 << 20).reserve(5);
        Sim::new().run(&mut t, 0.2, 1000.0, 1e9, 10.0);
        assert_eq!(t.window(), 15);
    }

    #[test]
    fn a_next_reader_starts_where_the_last_ended() {
        let key = "tuner-test-table/32";
        let mut t = WindowTuner::auto(8, 4096, usize::MAX).learning_for(key);
        Sim::new().run(&mut t, 0.1, 400.0, 1e9, 10.0);
        let learned = recall(key).expect("remembered");
        assert!((41..=130).contains(&learned), "{learned}");
        let next = WindowTuner::auto(8, 4096, usize::MAX).learning_for(key);
        assert_eq!(next.window(), learned);
        assert_eq!(next.phase, Phase::Steady);
    }

    #[test]
    fn fixed_never_moves() {
        let mut t = WindowTuner::fixed(3);
        Sim::new().run(&mut t, 0.2, 1000.0, 1e9, 5.0);
        assert_eq!(t.window(), 3);
    }
}
