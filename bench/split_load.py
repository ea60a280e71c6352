"""Loading a split file of 1.3 million uuids (ImageNet's training set size)."""

from __future__ import annotations

import statistics
import time
import uuid

import numpy as np

import crs4_cassandra as cc

from .common import DATA, log


def run(n: int = 1_300_000, runs: int = 5) -> dict[str, float]:
    path = DATA / f"split-{n}.split"
    if not path.exists():
        sf = cc.SplitFile("imagenet.data", "int", classes=[f"c{i}" for i in range(1000)])
        ids = np.frombuffer(b"".join(uuid.uuid4().bytes for _ in range(n)), np.uint8)
        sf.add("train", ids.reshape(-1, 16)[: int(n * 0.8)])
        sf.add("val", ids.reshape(-1, 16)[int(n * 0.8) :])
        DATA.mkdir(parents=True, exist_ok=True)
        sf.save(path)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        loaded = cc.SplitFile.load(path)
        total = sum(len(loaded.uuids(name)) for name in loaded.names())
        times.append(time.perf_counter() - t0)
    assert total == n
    med = statistics.median(times)
    log(f"split file of {n:,} uuids: load median {med * 1000:.1f} ms over {runs} runs")
    return {"uuids": n, "load_median_s": med, "bytes": path.stat().st_size}
