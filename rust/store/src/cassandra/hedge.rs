//! Hedged reads: a sample read that has not answered after a high percentile
//! of recent reads' latencies (`hedge_percentile`, at least `hedge_min_delay`)
//! is sent again, to the next replica of its query plan (the driver's
//! speculative execution, with [`Hedging`] as its policy), and the first
//! answer wins.
//!
//! [`Hedging`] is also the read statement's history listener: it counts reads,
//! hedges and hedges that won ([`ReadStats`]), and keeps a latency histogram
//! per node, of attempts that answered first (a late attempt overtaken by its
//! hedge is dropped and never recorded). The delay is the median of the
//! percentiles of the nodes not found slow (the lower one of two): a read is
//! late when it is later than on a typical node, even while a slow node's
//! reads are a good share of the recent ones (under load, when latencies are
//! mostly queueing, a node 200 ms late need not be twice as slow as the
//! others, yet its reads are all later than theirs).
//!
//! A node is slow when its median latency is over twice the fastest node's,
//! or when far more of the reads first sent to it need a hedge than of any
//! other's (once hedges overtake its reads its latencies are no longer seen):
//! [`AvoidSlow`] puts it at the end of query plans for a while, so that it is
//! not asked first (each hedge costs a duplicate read); then it is tried again.
//!
//! Hedges are also held to a budget, a share of the reads (with a small
//! burst): when the whole cluster or this client stalls, every read in flight
//! is late and a second copy of each would only add load. The budget is
//! checked when the hedge is due, by [`AvoidSlow`]: a hedge that finds it
//! spent gets an empty plan and is not sent. Everything here is atomics, no
//! locks.

use crate::stats::Histogram;
use crate::ReadStats;
use scylla::cluster::{ClusterState, NodeRef};
use scylla::errors::{RequestAttemptError, RequestError};
use scylla::observability::history::{AttemptId, HistoryListener, RequestId, SpeculativeId};
use scylla::policies::load_balancing::{FallbackPlan, LoadBalancingPolicy, RoutingInfo};
use scylla::policies::retry::RetryDecision;
use scylla::policies::speculative_execution::{Context, SpeculativeExecutionPolicy};
use scylla::routing::Shard;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Nodes with a histogram of their own; any further node shares the last one.
const NODES: usize = 16;
/// Latency buckets: four per power of two of microseconds, up to ~2 minutes.
const BUCKETS: usize = 108;
/// The delay is recomputed (and the histograms halved, so that they follow
/// recent reads) every this many answered reads.
const PERIOD: u64 = 1024;
/// A node's percentile counts once its (decayed) histogram has this many reads.
const ENOUGH: u32 = 64;
/// A node is slow whose median latency is over this many times the lowest
/// median of a node...
const SLOW_FACTOR: u64 = 2;
/// ... or of whose reads more than this share needed a hedge, and over
/// [`SLOW_FACTOR`] times the lowest share of any node (with the delay at the
/// 99th percentile, a node as fast as the others needs one for about 1%).
const SLOW_SHARE: f64 = 0.25;
/// What of the histograms and shares is kept at each update (of 4).
const KEEP: u32 = 3;
/// Hedges sent at most, as a share of reads, in thousandths...
const BUDGET_PER_READ: u64 = 50;
/// ... with a burst of this many (thousandths of a hedge).
const BUDGET_BURST: u64 = 20_000;
/// How long a slow node stays at the end of query plans before it is tried again.
const AVOID_FOR: Duration = Duration::from_secs(10);
/// Requests whose first attempt's node is remembered (by request id, modulo).
const ORIGINS: usize = 1 << 16;

struct Node {
    /// The node's address, encoded (0: slot free).
    key: AtomicU64,
    latency: [AtomicU32; BUCKETS],
    /// Requests first sent to this node, and those of them that were hedged.
    first: AtomicU32,
    hedged: AtomicU32,
    /// Microseconds since [`Hedging::epoch`] until which the node is avoided.
    avoid_until: AtomicU64,
    /// Its address, once known, and the latency of every read it answered
    /// first, never decayed (for [`ReadStats`]).
    addr: std::sync::OnceLock<SocketAddr>,
    answers: Histogram,
}

impl Node {
    fn new() -> Self {
        Self {
            key: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            first: AtomicU32::new(0),
            hedged: AtomicU32::new(0),
            avoid_until: AtomicU64::new(0),
            addr: std::sync::OnceLock::new(),
            answers: Histogram::default(),
        }
    }
}

/// A store's hedging state and read counters; see the module docs.
pub struct Hedging {
    percentile: f64,
    min_delay: Duration,
    epoch: Instant,
    reads: AtomicU64,
    hedged: AtomicU64,
    hedges_won: AtomicU64,
    retries: AtomicU64,
    timeouts: AtomicU64,
    answered: AtomicU64,
    /// The hedge delay in microseconds; 0 until enough reads were seen.
    delay_us: AtomicU64,
    /// Whether some node may be avoided now (skips the look-up when none is).
    avoiding: AtomicBool,
    /// Hedges that may be sent now, in thousandths.
    budget: AtomicU64,
    next_request: AtomicU64,
    /// The node slot of each request's first attempt, by request id.
    origin: Box<[AtomicU8]>,
    nodes: Box<[Node]>,
}

impl std::fmt::Debug for Hedging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedging")
            .field("percentile", &self.percentile)
            .field("min_delay", &self.min_delay)
            .field("delay", &self.delay())
            .finish_non_exhaustive()
    }
}

/// The bucket of a latency of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let e = 63 - us.leading_zeros() as usize;
    ((e - 1) * 4 + ((us >> (e - 2)) & 3) as usize).min(BUCKETS - 1)
}

/// The upper bound (microseconds) of bucket `i`.
fn bucket_top(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let (e, m) = (i / 4 + 1, (i % 4) as u64);
    (5 + m) << (e - 2)
}

fn address_key(addr: SocketAddr) -> u64 {
    let k = match addr {
        SocketAddr::V4(a) => (u64::from(a.ip().to_bits()) << 16) | u64::from(a.port()),
        SocketAddr::V6(a) => {
            // FNV-1a of the address and port.
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for b in a.ip().octets().into_iter().chain(a.port().to_be_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            h
        }
    };
    k | (1 << 63)
}

// An attempt id carries what its answer needs: when it started (microseconds,
// wrapping at 2^32, ~71 minutes: far past any request timeout), its node's
// slot, and whether it is a hedge.
fn attempt_id(start_us: u64, slot: usize, hedge: bool) -> AttemptId {
    AttemptId(((start_us & 0xffff_ffff) << 8 | (slot as u64) << 1 | u64::from(hedge)) as usize)
}

fn parse_attempt(id: AttemptId) -> (u64, usize, bool) {
    let v = id.0 as u64;
    (v >> 8, ((v >> 1) & 0x7f) as usize, v & 1 == 1)
}

impl Hedging {
    pub fn new(percentile: f64, min_delay: Duration) -> Self {
        Self {
            percentile,
            min_delay,
            epoch: Instant::now(),
            reads: AtomicU64::new(0),
            hedged: AtomicU64::new(0),
            hedges_won: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            delay_us: AtomicU64::new(0),
            avoiding: AtomicBool::new(false),
            budget: AtomicU64::new(BUDGET_BURST),
            next_request: AtomicU64::new(0),
            origin: (0..ORIGINS).map(|_| AtomicU8::new(u8::MAX)).collect(),
            nodes: (0..NODES).map(|_| Node::new()).collect(),
        }
    }

    pub fn stats(&self) -> ReadStats {
        ReadStats {
            reads: self.reads.load(Relaxed),
            hedged: self.hedged.load(Relaxed),
            hedges_won: self.hedges_won.load(Relaxed),
            retries: self.retries.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            nodes: self
                .nodes
                .iter()
                .filter_map(|n| Some((n.addr.get()?.to_string(), n.answers.snapshot())))
                .collect(),
            slow_nodes: {
                let now = self.now_us();
                self.nodes
                    .iter()
                    .filter(|n| n.key.load(Relaxed) != 0 && n.avoid_until.load(Relaxed) > now)
                    .count() as u64
            },
            ..ReadStats::default()
        }
    }

    /// A request failed with a transient error (a timeout or not) and is tried again.
    pub fn retried(&self, timeout: bool) {
        self.retries.fetch_add(1, Relaxed);
        self.timed_out(timeout);
    }

    /// A request failed for good; counted when it was a timeout.
    pub fn timed_out(&self, timeout: bool) {
        if timeout {
            self.timeouts.fetch_add(1, Relaxed);
        }
    }

    /// The current hedge delay; None until enough reads have answered.
    pub fn delay(&self) -> Option<Duration> {
        match self.delay_us.load(Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The slot of the node at `addr`, taking a free one the first time.
    fn slot(&self, addr: SocketAddr) -> usize {
        let key = address_key(addr);
        for (i, n) in self.nodes.iter().enumerate() {
            match n.key.load(Relaxed) {
                k if k == key => return i,
                0 => match n.key.compare_exchange(0, key, Relaxed, Relaxed) {
                    Ok(_) => {
                        let _ = n.addr.set(addr);
                        return i;
                    }
                    Err(k) if k == key => return i,
                    Err(_) => continue,
                },
                _ => {}
            }
        }
        NODES - 1
    }

    fn avoided(&self, addr: SocketAddr, now_us: u64) -> bool {
        let key = address_key(addr);
        self.nodes
            .iter()
            .find(|n| n.key.load(Relaxed) == key)
            .is_some_and(|n| n.avoid_until.load(Relaxed) > now_us)
    }

    fn answered(&self, slot: usize, latency_us: u64) {
        let node = &self.nodes[slot.min(NODES - 1)];
        node.latency[bucket(latency_us)].fetch_add(1, Relaxed);
        node.answers.record_us(latency_us);
        if (self.answered.fetch_add(1, Relaxed) + 1).is_multiple_of(PERIOD) {
            self.update(self.now_us());
        }
    }

    /// Takes a hedge from the budget, if there is one left.
    fn spend(&self) -> bool {
        self.budget
            .fetch_update(Relaxed, Relaxed, |b| b.checked_sub(1000))
            .is_ok()
    }

    /// Recomputes which nodes to avoid and the delay, then decays the counts.
    fn update(&self, now_us: u64) {
        let used: Vec<&Node> = self
            .nodes
            .iter()
            .filter(|n| n.key.load(Relaxed) != 0)
            .collect();
        let counts: Vec<Vec<u32>> = used
            .iter()
            .map(|n| n.latency.iter().map(|c| c.load(Relaxed)).collect())
            .collect();
        let medians: Vec<Option<u64>> = counts
            .iter()
            .map(|c| percentile(c, 50.0, u64::from(ENOUGH)))
            .collect();
        let shares: Vec<Option<f64>> = used
            .iter()
            .map(|n| {
                let (first, hedged) = (n.first.load(Relaxed), n.hedged.load(Relaxed));
                (first >= ENOUGH).then(|| f64::from(hedged) / f64::from(first))
            })
            .collect();
        let least_median = medians.iter().flatten().min().copied();
        let least_share = shares.iter().flatten().copied().reduce(f64::min);
        let floor = self.min_delay.as_micros() as u64;
        let mut tops = Vec::new();
        let mut avoiding = false;
        for (i, n) in used.iter().enumerate() {
            let slow_median = matches!((medians[i], least_median),
                (Some(m), Some(least)) if m > SLOW_FACTOR * least && m > floor);
            let slow_share = matches!((shares[i], least_share),
                (Some(s), Some(least)) if s > SLOW_SHARE && s > SLOW_FACTOR as f64 * least);
            if slow_median || slow_share {
                n.avoid_until
                    .store(now_us + AVOID_FOR.as_micros() as u64, Relaxed);
            }
            if n.avoid_until.load(Relaxed) > now_us {
                avoiding = true;
            } else if let Some(top) = percentile(&counts[i], self.percentile, u64::from(ENOUGH)) {
                tops.push(top);
            }
            for c in n.latency.iter().chain([&n.first, &n.hedged]) {
                let v = c.load(Relaxed);
                c.fetch_sub(v - v * KEEP / 4, Relaxed);
            }
        }
        self.avoiding.store(avoiding, Relaxed);
        tops.sort_unstable();
        if let Some(&us) = tops.get(tops.len().saturating_sub(1) / 2) {
            self.delay_us.store(us.max(floor).max(1), Relaxed);
        }
    }
}

/// The `p`-th percentile (upper bound of its bucket) of a histogram of at
/// least `enough` values.
fn percentile(counts: &[u32], p: f64, enough: u64) -> Option<u64> {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    if total < enough.max(1) {
        return None;
    }
    let rank = ((total as f64 * p / 100.0).ceil() as u64).max(1);
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += u64::from(c);
        if seen >= rank {
            return Some(bucket_top(i));
        }
    }
    None
}

impl SpeculativeExecutionPolicy for Hedging {
    fn max_retry_count(&self, _: &Context) -> usize {
        usize::from(self.delay_us.load(Relaxed) != 0)
    }

    fn retry_interval(&self, _: &Context) -> Duration {
        // Without a delay yet no hedge is sent (no retries), whatever this says.
        self.delay().unwrap_or(Duration::from_secs(3600))
    }
}

impl HistoryListener for Hedging {
    fn log_request_start(&self) -> RequestId {
        self.reads.fetch_add(1, Relaxed);
        if self.budget.load(Relaxed) < BUDGET_BURST {
            self.budget.fetch_add(BUDGET_PER_READ, Relaxed);
        }
        RequestId(self.next_request.fetch_add(1, Relaxed) as usize)
    }

    fn log_request_success(&self, _: RequestId) {}

    fn log_request_error(&self, _: RequestId, _: &RequestError) {}

    fn log_new_speculative_fiber(&self, request: RequestId) -> SpeculativeId {
        // A hedge due (sent or not, see the budget): the first node was late.
        let first = self.origin[request.0 % ORIGINS].load(Relaxed);
        if let Some(n) = self.nodes.get(usize::from(first)) {
            n.hedged.fetch_add(1, Relaxed);
        }
        SpeculativeId(0)
    }

    fn log_attempt_start(
        &self,
        request: RequestId,
        speculative: Option<SpeculativeId>,
        node: SocketAddr,
    ) -> AttemptId {
        let slot = self.slot(node);
        if speculative.is_some() {
            self.hedged.fetch_add(1, Relaxed);
        } else {
            self.origin[request.0 % ORIGINS].store(slot as u8, Relaxed);
            self.nodes[slot].first.fetch_add(1, Relaxed);
        }
        attempt_id(self.now_us(), slot, speculative.is_some())
    }

    fn log_attempt_success(&self, attempt: AttemptId) {
        let (start, slot, hedge) = parse_attempt(attempt);
        if hedge {
            self.hedges_won.fetch_add(1, Relaxed);
        }
        let latency = (self.now_us() & 0xffff_ffff).wrapping_sub(start) & 0xffff_ffff;
        self.answered(slot, latency);
    }

    fn log_attempt_error(&self, _: AttemptId, _: &RequestAttemptError, _: &RetryDecision) {}
}

/// A load-balancing policy that puts the nodes [`Hedging`] found slow at the
/// end of each query plan, keeping the inner policy's order otherwise.
#[derive(Debug)]
pub struct AvoidSlow {
    pub inner: Arc<dyn LoadBalancingPolicy>,
    pub hedging: Arc<Hedging>,
}

impl AvoidSlow {
    fn avoiding(&self) -> Option<u64> {
        self.hedging
            .avoiding
            .load(Relaxed)
            .then(|| self.hedging.now_us())
    }

    /// `plan` with the nodes found slow moved to its end.
    fn ordered<'a>(&'a self, plan: FallbackPlan<'a>) -> FallbackPlan<'a> {
        let Some(now) = self.avoiding() else {
            return plan;
        };
        let (fast, slow): (Vec<_>, Vec<_>) =
            plan.partition(|(node, _)| !self.hedging.avoided(addr_of(node), now));
        Box::new(fast.into_iter().chain(slow))
    }
}

fn addr_of(node: NodeRef<'_>) -> SocketAddr {
    SocketAddr::new(node.address.ip(), node.address.port())
}

impl LoadBalancingPolicy for AvoidSlow {
    fn pick<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> Option<(NodeRef<'a>, Option<Shard>)> {
        let picked = match self.inner.pick(request, cluster) {
            Some(p) => p,
            // Never None but for an empty plan: `fallback` is then only asked
            // for a second target, which the budget may refuse.
            None => return self.ordered(self.inner.fallback(request, cluster)).next(),
        };
        match self.avoiding() {
            Some(now) if self.hedging.avoided(addr_of(picked.0), now) => self
                .ordered(self.inner.fallback(request, cluster))
                .next()
                .or(Some(picked)),
            _ => Some(picked),
        }
    }

    /// The targets after the first: asked for when a hedge is due (or when
    /// the first target had no connection), so the hedge budget is spent here.
    fn fallback<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> FallbackPlan<'a> {
        if !self.hedging.spend() {
            return Box::new(std::iter::empty());
        }
        self.ordered(self.inner.fallback(request, cluster))
    }

    fn on_request_success(&self, request: &RoutingInfo, latency: Duration, node: NodeRef<'_>) {
        self.inner.on_request_success(request, latency, node)
    }

    fn on_request_failure(
        &self,
        request: &RoutingInfo,
        latency: Duration,
        node: NodeRef<'_>,
        error: &RequestAttemptError,
    ) {
        self.inner.on_request_failure(request, latency, node, error)
    }

    fn name(&self) -> String {
        format!("AvoidSlow({})", self.inner.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_cover_their_values() {
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 999, 1000, 65_535, 10_000_000] {
            let i = bucket(us);
            assert!(
                us < bucket_top(i),
                "{us} in bucket {i} (top {})",
                bucket_top(i)
            );
            assert!(i == 0 || us >= bucket_top(i - 1), "{us} in bucket {i}");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn attempt_ids_round_trip() {
        let id = attempt_id(0x1_2345_6789, 15, true);
        assert_eq!(parse_attempt(id), (0x2345_6789, 15, true));
        assert_eq!(parse_attempt(attempt_id(7, 0, false)), (7, 0, false));
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 1, i], 9042))
    }

    /// `n` reads of `latency_us` first sent to node `i`, `hedged` of them hedged.
    fn reads(h: &Hedging, i: u8, n: usize, latency_us: u64, hedged: usize) {
        for k in 0..n {
            let r = h.log_request_start();
            let a = h.log_attempt_start(r, None, addr(i));
            if k < hedged {
                h.log_new_speculative_fiber(r);
            }
            let (_, slot, _) = parse_attempt(a);
            h.answered(slot, latency_us);
        }
    }

    #[test]
    fn the_delay_leaves_out_slow_nodes_and_has_a_floor() {
        let h = Hedging::new(99.0, Duration::from_millis(1));
        assert_eq!(h.delay(), None);
        reads(&h, 1, 600, 3_000, 0);
        reads(&h, 2, 424, 200_000, 0);
        let d = h.delay().expect("a delay after a period of reads");
        assert!(
            d >= Duration::from_millis(3) && d < Duration::from_millis(4),
            "{d:?}"
        );
        assert!(h.avoided(addr(2), h.now_us()) && !h.avoided(addr(1), h.now_us()));
        let h = Hedging::new(99.0, Duration::from_millis(5));
        reads(&h, 1, 1024, 300, 0);
        assert_eq!(h.delay(), Some(Duration::from_millis(5)));
        assert!(!h.avoiding.load(Relaxed));
    }

    #[test]
    fn the_delay_is_a_typical_nodes_even_with_a_slow_one_under_twice_as_slow() {
        let h = Hedging::new(99.0, Duration::from_millis(1));
        reads(&h, 1, 342, 150_000, 0);
        reads(&h, 2, 341, 160_000, 0);
        reads(&h, 3, 341, 250_000, 0);
        assert!(!h.avoiding.load(Relaxed));
        let d = h.delay().unwrap();
        assert!(
            d > Duration::from_millis(160) && d < Duration::from_millis(200),
            "{d:?}"
        );
    }

    #[test]
    fn a_node_whose_reads_need_hedges_is_avoided_for_a_while() {
        let h = Hedging::new(99.0, Duration::from_millis(1));
        reads(&h, 1, 512, 3_000, 5);
        reads(&h, 2, 512, 3_000, 300);
        assert!(h.avoiding.load(Relaxed));
        let now = h.now_us();
        assert!(h.avoided(addr(2), now) && !h.avoided(addr(1), now));
        assert!(!h.avoided(addr(2), now + AVOID_FOR.as_micros() as u64 + 1));
    }

    #[test]
    fn nodes_alike_are_not_avoided_even_when_many_reads_are_late() {
        let h = Hedging::new(99.0, Duration::from_millis(1));
        reads(&h, 1, 512, 3_000, 200);
        reads(&h, 2, 512, 4_000, 250);
        assert!(!h.avoiding.load(Relaxed));
    }

    #[test]
    fn hedges_are_counted_when_sent_and_held_to_a_budget() {
        let h = Hedging::new(99.0, Duration::from_millis(1));
        let r = h.log_request_start();
        h.log_attempt_start(r, None, addr(1));
        h.log_new_speculative_fiber(r);
        let a = h.log_attempt_start(r, Some(SpeculativeId(0)), addr(2));
        h.log_attempt_success(a);
        let s = h.stats();
        assert_eq!((s.reads, s.hedged, s.hedges_won), (1, 1, 1));
        let burst = (0..100).take_while(|_| h.spend()).count();
        assert_eq!(burst as u64, BUDGET_BURST / 1000);
        for _ in 0..1000 / BUDGET_PER_READ {
            h.log_request_start();
        }
        assert!(h.spend() && !h.spend());
    }
}
