//! Hedged reads: a sample read that has not answered after a high percentile
//! of recent reads' latencies (`hedge_percentile`, at least `hedge_min_delay`)
//! is sent again, to the next replica of its query plan (the driver's
//! speculative execution, with [`Hedging`] as its policy), and the first
//! answer wins.
//!
//! [`Hedging`] is also the read statement's history listener: it counts reads,
//! hedges and hedges that won ([`ReadStats`]), and keeps a latency histogram
//! per node, of attempts that answered first (a late attempt overtaken by its
//! hedge is dropped and never recorded, so a slow replica does not pull the
//! percentile up to its own latency). The delay is the lowest of the nodes'
//! percentiles: a read is late when it is late for the fastest replica.
//!
//! A node whose reads need a hedge far more often than the percentile implies
//! is slow: [`AvoidSlow`] puts it at the end of query plans for a while, so
//! that it is not asked first (each hedge costs a duplicate read); then it is
//! tried again. Everything here is atomics, no locks.

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
/// A node first asked for reads of which more than this share needed a hedge
/// is slow (with the delay at the 99th percentile of the fastest node, a node
/// as fast as the others needs a hedge for a few percent of its reads).
const SLOW_SHARE: f64 = 0.25;
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
}

impl Node {
    fn new() -> Self {
        Self {
            key: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            first: AtomicU32::new(0),
            hedged: AtomicU32::new(0),
            avoid_until: AtomicU64::new(0),
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
    answered: AtomicU64,
    /// The hedge delay in microseconds; 0 until enough reads were seen.
    delay_us: AtomicU64,
    /// Whether some node may be avoided now (skips the look-up when none is).
    avoiding: AtomicBool,
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
            answered: AtomicU64::new(0),
            delay_us: AtomicU64::new(0),
            avoiding: AtomicBool::new(false),
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
                    Ok(_) => return i,
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
        self.nodes[slot.min(NODES - 1)].latency[bucket(latency_us)].fetch_add(1, Relaxed);
        if (self.answered.fetch_add(1, Relaxed) + 1).is_multiple_of(PERIOD) {
            self.update(self.now_us());
        }
    }

    /// Recomputes the delay and which nodes to avoid, then halves the counts.
    fn update(&self, now_us: u64) {
        let mut delay = None::<u64>;
        let mut avoiding = false;
        for n in self.nodes.iter().filter(|n| n.key.load(Relaxed) != 0) {
            let counts: Vec<u32> = n.latency.iter().map(|c| c.load(Relaxed)).collect();
            let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
            if total >= u64::from(ENOUGH) {
                let rank = (total as f64 * self.percentile / 100.0).ceil() as u64;
                let mut seen = 0;
                for (i, &c) in counts.iter().enumerate() {
                    seen += u64::from(c);
                    if seen >= rank {
                        let top = bucket_top(i);
                        delay = Some(delay.map_or(top, |d| d.min(top)));
                        break;
                    }
                }
            }
            let (first, hedged) = (n.first.load(Relaxed), n.hedged.load(Relaxed));
            if first >= ENOUGH && f64::from(hedged) > SLOW_SHARE * f64::from(first) {
                n.avoid_until
                    .store(now_us + AVOID_FOR.as_micros() as u64, Relaxed);
            }
            avoiding |= n.avoid_until.load(Relaxed) > now_us;
            for c in n.latency.iter().chain([&n.first, &n.hedged]) {
                let v = c.load(Relaxed);
                c.fetch_sub(v / 2, Relaxed);
            }
        }
        self.avoiding.store(avoiding, Relaxed);
        if let Some(us) = delay {
            let floor = self.min_delay.as_micros() as u64;
            self.delay_us.store(us.max(floor).max(1), Relaxed);
        }
    }
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
        RequestId(self.next_request.fetch_add(1, Relaxed) as usize)
    }

    fn log_request_success(&self, _: RequestId) {}

    fn log_request_error(&self, _: RequestId, _: &RequestError) {}

    fn log_new_speculative_fiber(&self, request: RequestId) -> SpeculativeId {
        self.hedged.fetch_add(1, Relaxed);
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
        if speculative.is_none() {
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
        let picked = self.inner.pick(request, cluster);
        match (picked, self.avoiding()) {
            (Some((node, _)), Some(now)) if self.hedging.avoided(addr_of(node), now) => {
                self.fallback(request, cluster).next()
            }
            (picked, _) => picked,
        }
    }

    fn fallback<'a>(
        &'a self,
        request: &'a RoutingInfo,
        cluster: &'a ClusterState,
    ) -> FallbackPlan<'a> {
        let plan = self.inner.fallback(request, cluster);
        let Some(now) = self.avoiding() else {
            return plan;
        };
        let (fast, slow): (Vec<_>, Vec<_>) =
            plan.partition(|(node, _)| !self.hedging.avoided(addr_of(node), now));
        Box::new(fast.into_iter().chain(slow))
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
    fn the_delay_follows_the_fastest_node_with_a_floor() {
        let h = Hedging::new(99.0, Duration::from_millis(1));
        assert_eq!(h.delay(), None);
        reads(&h, 1, 600, 3_000, 0);
        reads(&h, 2, 424, 200_000, 0);
        let d = h.delay().expect("a delay after a period of reads");
        assert!(
            d >= Duration::from_millis(3) && d < Duration::from_millis(4),
            "{d:?}"
        );
        let h = Hedging::new(99.0, Duration::from_millis(5));
        reads(&h, 1, 1024, 300, 0);
        assert_eq!(h.delay(), Some(Duration::from_millis(5)));
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
        let s = h.stats();
        assert_eq!((s.reads, s.hedged, s.hedges_won), (1024, 305, 0));
    }
}
