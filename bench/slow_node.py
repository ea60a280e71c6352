"""A slow node: three Apache Cassandra nodes (replication factor 3), each behind
a toxiproxy proxy, one of them answering late (a latency toxic on node 2).
Plan-ordered delivery waits for every batch that touched the slow node;
`ordered=False` lets the others through; speculative execution
(`speculative_delay=`) re-sends a late read to another node after a fixed
delay; hedged reads (the default) re-send it after a percentile of recent
latencies and put a node whose reads keep needing that at the end of query
plans. Each row also counts the hedges (`store.read_stats()`) over the timed
seconds: duplicate reads as a share of reads."""

from __future__ import annotations

import sys
import time
import uuid

import numpy as np

import crs4_cassandra as cc
from crs4_cassandra import _native

from .common import HERE, log

sys.path.insert(0, str(HERE.parent))
from testbed import Cluster  # noqa: E402

SLOW_MS = 200
OFF = {"hedged_reads": False}
CONFIGS = (
    ("ordered", {"ordered": True}, OFF),
    ("ordered=False", {"ordered": False}, OFF),
    ("ordered + speculative 20 ms", {"ordered": True}, {"speculative_delay": 0.02}),
    ("ordered=False + speculative 20 ms", {"ordered": False}, {"speculative_delay": 0.02}),
    ("ordered + latency-aware", {"ordered": True}, {**OFF, "latency_aware": True}),
    (
        "ordered + latency-aware + speculative 20 ms",
        {"ordered": True},
        {"latency_aware": True, "speculative_delay": 0.02},
    ),
    ("ordered + hedged (default)", {"ordered": True}, {}),
    ("ordered=False + hedged (default)", {"ordered": False}, {}),
    ("ordered + hedged + latency-aware", {"ordered": True}, {"latency_aware": True}),
)


# Epochs here are short (32 batches): warm up for some seconds, as a job's
# first minutes would, so that the self-tuning window has found its size.
WARM_UP_S = 2.0
NODES_WARM_UP_S = 20.0


def run(samples: int = 2000, kb: int = 32, batch_size: int = 64, seconds: float = 3.0) -> dict:
    rng = np.random.default_rng(0)
    rows = []
    with Cluster(3, name="slow", heap="512m") as cl:
        url = cl.url("slow")
        # Every node holds every sample, so a read can go to either of the others;
        # written at ALL so that a read at LOCAL_ONE finds it on any replica.
        rf3 = "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        st = _native.open_store(
            url, create=True, options={"replication": rf3, "consistency": "all"}
        )
        st.create_tables("t", "t_metadata", "int", overwrite=True)
        ids = [uuid.uuid4().bytes for _ in range(samples)]
        blob = rng.bytes(kb * 1024)
        for i in range(0, samples, 500):
            chunk = ids[i : i + 500]
            st.put_samples("t", b"".join(chunk), [0] * len(chunk), [blob] * len(chunk))
        uuids = np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16)
        # Fresh nodes: their JIT and first flushes make the first seconds of
        # reads slower than any later ones. Read for a while before timing.
        warm = cc.ShardedDataset(url, "t", uuids, batch_size, ordered=False)
        t0, epoch = time.perf_counter(), 0
        while time.perf_counter() - t0 < NODES_WARM_UP_S:
            warm.set_epoch(epoch)
            list(warm)
            epoch += 1
        log(f"nodes warmed up over {epoch} epochs")
        for slow in (0, SLOW_MS):
            cl.proxies[1].clear()
            if slow:
                cl.proxies[1].latency(slow)
            for name, ds_kw, store_kw in CONFIGS:
                store = cc.open_store(url, **store_kw)
                ds = cc.ShardedDataset(store, "t", uuids, batch_size, **ds_kw)
                t0, epoch = time.perf_counter(), 0
                while time.perf_counter() - t0 < WARM_UP_S:  # connect, tune the window
                    ds.set_epoch(epoch)
                    list(ds)
                    epoch += 1
                before = store.read_stats()
                t0, n = time.perf_counter(), 0
                while time.perf_counter() - t0 < seconds:
                    ds.set_epoch(epoch)
                    n += sum(len(b) for b in ds)
                    epoch += 1
                r = n / (time.perf_counter() - t0)
                stats = {k: v - before[k] for k, v in store.read_stats().items()}
                hedged = stats["hedged"] / max(stats["reads"], 1)
                log(
                    f"slow node {slow} ms, {name}: {r:,.0f} samples/s, "
                    f"{hedged:.1%} of {stats['reads']} reads hedged, "
                    f"{stats['hedges_won']} hedges won"
                )
                rows.append({"slow_ms": slow, "name": name, "samples_per_s": r, **stats})
    return {
        "samples": samples,
        "kb": kb,
        "batch_size": batch_size,
        "slow_ms": SLOW_MS,
        "warm_up_s": WARM_UP_S,
        "rows": rows,
    }
