"""Latency hiding: throughput over the CQL test server as its response delay
grows (emulating network round-trip time), with the self-tuning window and with
fixed windows of a few sizes (like cassandra-dali-plugin's prefetch_buffers)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import crs4_cassandra as cc
from crs4_cassandra.ingest import ingest_folder

from .common import HERE, log

sys.path.insert(0, str(HERE.parent))
from tests.cqlserver import CqlServer  # noqa: E402

DELAYS_MS = (0, 1, 10, 50, 100, 200)
FIXED = (2, 8, 32)


def rate(ds: cc.ShardedDataset, min_seconds: float) -> float:
    t0 = time.perf_counter()
    n = 0
    epoch = 0
    while time.perf_counter() - t0 < min_seconds:
        ds.set_epoch(epoch)
        for b in ds:
            n += len(b)
        epoch += 1
    return n / (time.perf_counter() - t0)


def run(folder: Path, batch_size: int = 128, seconds: float = 4.0) -> dict[str, object]:
    rows: dict[str, dict[int, float]] = {}
    with CqlServer() as srv:
        url = f"cassandra://127.0.0.1:{srv.port}/lat"
        report = ingest_folder(folder, url, "data", val_frac=0.0, progress=False)
        assert report.split_file is not None
        # Each sample ten times per epoch: epochs long enough that the pipeline's
        # ramp-up at an epoch start (one round trip) does not dominate, as with real
        # data sets, while the server's memory holds only the generated set.
        uuids = np.tile(report.split_file.uuids("train"), (10, 1))
        store = cc.open_store(url)
        configs: list[tuple[str, int | None]] = [("auto (default)", None)]
        configs += [(f"fixed window {w}", w) for w in FIXED]
        for delay in DELAYS_MS:
            srv.admin(f"delay {delay}")
            for name, window in configs:
                # The tuner keeps what it learned at the previous delay, as it
                # would in a job whose network slows down.
                ds = cc.ShardedDataset(store, "data", uuids, batch_size, window=window)
                for _ in ds:  # warm-up epoch (and the tuner's learning, for auto)
                    pass
                r = rate(ds, seconds)
                rows.setdefault(name, {})[delay] = r
                log(f"delay {delay:>3} ms, {name}: {r:,.0f} samples/s")
    return {"batch_size": batch_size, "delays_ms": list(DELAYS_MS), "rows": rows}
