//! Throughput and latency of reads over CQL, without Python: the scylla
//! driver alone and the fetch engine, against a running server (such as a
//! Cassandra node of `testbed/`, behind a toxiproxy latency toxic). A harness
//! for profiling the hot path with perf or callgrind.
//!
//! ```text
//! cql_probe HOST:PORT load 2000        # 2000 blobs of 110 KB into p.d (driver modes)
//! cql_probe HOST:PORT steady K [SECS]  # driver: K requests always in flight
//! cql_probe HOST:PORT burst K          # driver: K requests at once
//! cql_probe HOST:PORT batches K [SECS] # driver: K batches of $BS requests in flight
//! cql_probe HOST:PORT eload            # 2000 samples of 110 KB into table e.d (engine mode)
//! cql_probe HOST:PORT engine W [SECS]  # fetch engine, batches of $BS (128), window W (0: auto),
//!                                      # in plan order unless ORDERED=0; batch read times
//! ```

use futures::stream::{FuturesUnordered, StreamExt};
use scylla::client::session_builder::SessionBuilder;
use scylla::client::PoolSize;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr = &args[1];
    let mode = args[2].as_str();
    let k: usize = args.get(3).map_or(0, |s| s.parse().unwrap());
    let secs: f64 = args.get(4).map_or(4.0, |s| s.parse().unwrap());
    let s = Arc::new(
        SessionBuilder::new()
            .known_node(addr)
            .pool_size(PoolSize::PerShard(NonZeroUsize::new(4).unwrap()))
            .build()
            .await
            .unwrap(),
    );
    if mode == "load" {
        s.query_unpaged("CREATE KEYSPACE IF NOT EXISTS p WITH replication = {'class':'SimpleStrategy','replication_factor':1}", &[]).await.unwrap();
        s.query_unpaged(
            "CREATE TABLE IF NOT EXISTS p.d (id int PRIMARY KEY, data blob)",
            &[],
        )
        .await
        .unwrap();
        let ins = s
            .prepare("INSERT INTO p.d (id, data) VALUES (?, ?)")
            .await
            .unwrap();
        for i in 0..k as i32 {
            let blob = vec![(i % 251) as u8; 110_000];
            s.execute_unpaged(&ins, (i, blob)).await.unwrap();
        }
        return;
    }
    if mode == "engine" || mode == "eload" {
        engine(addr, mode, k, secs).await;
        return;
    }
    let sel = Arc::new(
        s.prepare("SELECT data FROM p.d WHERE id = ?")
            .await
            .unwrap(),
    );
    let n_keys = 2000;
    let t0 = Instant::now();
    let mut lat = Vec::new();
    let mut done = 0usize;
    let mut futs = FuturesUnordered::new();
    let mut next = 0usize;
    let issue = |i: usize| {
        let (s, sel) = (s.clone(), sel.clone());
        async move {
            let t = Instant::now();
            let r = s
                .execute_unpaged(&sel, ((i % n_keys) as i32,))
                .await
                .unwrap();
            let rows = r.into_rows_result().unwrap();
            let (d,): (bytes::Bytes,) = rows.first_row().unwrap();
            (t.elapsed(), d.len())
        }
    };
    if mode == "batches" {
        // k batches of $BS requests in flight; a batch ends with its last reply
        let bs: usize = std::env::var("BS").map_or(128, |s| s.parse().unwrap());
        let batch = |b: usize| {
            let futs: Vec<_> = (0..bs).map(|j| issue(b * bs + j)).collect();
            async move {
                let t = Instant::now();
                futures::future::join_all(futs).await;
                t.elapsed()
            }
        };
        let mut inflight = FuturesUnordered::new();
        let mut b = 0;
        while b < k {
            inflight.push(batch(b));
            b += 1;
        }
        let mut n = 0usize;
        while let Some(l) = inflight.next().await {
            lat.push(l);
            n += bs;
            if t0.elapsed().as_secs_f64() < secs {
                inflight.push(batch(b));
                b += 1;
            }
        }
        lat.sort();
        let p = |q: f64| percentile(&lat, q);
        println!(
            "batches {k}x{bs}: {:.0}/s batch p10 {:?} p50 {:?} p90 {:?}",
            n as f64 / t0.elapsed().as_secs_f64(),
            p(0.1),
            p(0.5),
            p(0.9)
        );
        return;
    }
    if mode == "burst" {
        for i in 0..k {
            futs.push(issue(i));
        }
        let mut firsts = Vec::new();
        while let Some((l, _)) = futs.next().await {
            firsts.push(t0.elapsed());
            lat.push(l);
        }
        println!(
            "burst {k}: first {:?} median {:?} last {:?} rate {:.0}/s",
            firsts[0],
            firsts[k / 2],
            firsts[k - 1],
            k as f64 / firsts[k - 1].as_secs_f64()
        );
        return;
    }
    // steady: keep k in flight for secs
    while next < k {
        futs.push(issue(next));
        next += 1;
    }
    let deadline = Duration::from_secs_f64(secs);
    let warm = Duration::from_secs_f64(1.0);
    let mut counted = 0usize;
    let mut tw = None;
    while let Some((l, _)) = futs.next().await {
        done += 1;
        let el = t0.elapsed();
        if el > warm {
            if tw.is_none() {
                tw = Some(Instant::now());
            }
            counted += 1;
            lat.push(l);
        }
        if el < deadline {
            futs.push(issue(next));
            next += 1;
        }
    }
    let dt = tw.unwrap().elapsed().as_secs_f64();
    lat.sort();
    let p = |q: f64| percentile(&lat, q);
    println!(
        "steady {k}: {:.0}/s  lat p10 {:?} p50 {:?} p90 {:?} p99 {:?} (done {done})",
        counted as f64 / dt,
        p(0.1),
        p(0.5),
        p(0.9),
        p(0.99)
    );
}

async fn engine(addr: &str, mode: &str, window: usize, secs: f64) {
    use crs4_cassandra_core::PlannedBatch;
    use crs4_cassandra_store::cassandra::{CassandraOptions, CassandraStore};
    use crs4_cassandra_store::*;
    let mut o = CassandraOptions::from_url(&format!("cassandra://{addr}/e")).unwrap();
    if let Ok(m) = std::env::var("MIF") {
        o.max_in_flight = m.parse().unwrap();
    }
    let store = CassandraStore::new(o).unwrap();
    let spec = TableSpec::new("d", LabelType::Int);
    let ids: Vec<uuid::Uuid> = (0..2000u128)
        .map(|i| uuid::Uuid::from_u128(i + 1))
        .collect();
    if mode == "eload" {
        store.create_tables(&spec, "m", true).await.unwrap();
        for c in ids.chunks(100) {
            let rows = c
                .iter()
                .map(|&id| SampleRow {
                    id,
                    label: LabelValue::Int(1),
                    data: vec![7u8; 110_000],
                })
                .collect();
            store.put_samples("d", rows).await.unwrap();
        }
        return;
    }
    let inner = store.clone().open_table_async(spec).await.unwrap();
    let lat = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader: Arc<dyn TableReader> = Arc::new(Timed(inner, lat.clone()));
    let bs: usize = std::env::var("BS").map_or(128, |s| s.parse().unwrap());
    let ids: Arc<[uuid::Uuid]> = ids.into();
    let nb = (secs * 20000.0 / bs as f64) as usize;
    let batches: Vec<PlannedBatch> = (0..nb)
        .map(|p| PlannedBatch {
            epoch: 0,
            position: p,
            indices: (0..bs).map(|j| ((p * bs + j) % 2000) as u32).collect(),
            is_pad: vec![false; bs],
        })
        .collect();
    let mut opts = EngineOptions::default();
    if window > 0 {
        opts.fixed_window(window);
    }
    opts.ordered = std::env::var("ORDERED").map_or(true, |v| v != "0");
    let t0 = std::time::Instant::now();
    let mut st = FetchEngine::start(reader, ids, batches, opts);
    let mut n = 0usize;
    let mut first = None;
    while let Some(b) = st.next().await {
        let b = b.unwrap();
        if first.is_none() {
            first = Some(t0.elapsed());
        }
        n += b.offsets.len() - 1;
    }
    let mut lat = lat.lock().unwrap().clone();
    lat.sort();
    let p = |q: f64| percentile(&lat, q);
    println!(
        "engine window {window}: {:.0}/s first {:?}; batch read p10 {:?} p50 {:?} p90 {:?} p99 {:?}",
        n as f64 / t0.elapsed().as_secs_f64(),
        first.unwrap(),
        p(0.1),
        p(0.5),
        p(0.9),
        p(0.99)
    );
}

/// The `q` quantile of sorted durations.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

/// A table reader that records how long each batch read takes.
struct Timed(
    Arc<dyn crs4_cassandra_store::TableReader>,
    Arc<std::sync::Mutex<Vec<Duration>>>,
);

impl crs4_cassandra_store::TableReader for Timed {
    fn read_batch(
        self: Arc<Self>,
        job: crs4_cassandra_store::BatchJob,
        pool: Arc<crs4_cassandra_store::ArenaPool>,
    ) -> futures::future::BoxFuture<
        'static,
        crs4_cassandra_store::Result<crs4_cassandra_store::Batch>,
    > {
        use futures::FutureExt;
        async move {
            let t = Instant::now();
            let r = self.0.clone().read_batch(job, pool).await;
            self.1.lock().unwrap().push(t.elapsed());
            r
        }
        .boxed()
    }

    fn spec(&self) -> &crs4_cassandra_store::TableSpec {
        self.0.spec()
    }
}
