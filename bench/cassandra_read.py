"""Reading from one Apache Cassandra node on loopback: crs4_cassandra's Cassandra store
against a plain Python loader on the DataStax cassandra-driver
(``execute_concurrent_with_args`` over the same uuids, same batch size), both
handing the same bytes to Python as uint8 tensors."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

import crs4_cassandra as cc
from crs4_cassandra.ingest import ingest_folder

from .common import HERE, Measure, log, measure

sys.path.insert(0, str(HERE.parent))
from testbed import Cluster  # noqa: E402

KEYSPACE = "bench"


def ours_epoch(
    url: str, uuids: np.ndarray, batch_size: int, **kw: object
) -> Iterator[tuple[int, int]]:
    # The set is listed several times over (a longer epoch): repeats on purpose.
    ds = cc.ShardedDataset(url, "data", uuids, batch_size, seed=0, allow_repeats=True, **kw)  # type: ignore[arg-type]
    for b in ds:
        yield len(b), b.data.numel()


class PythonDriverLoader:
    """What a user writes with the DataStax driver alone."""

    def __init__(self, host: str, port: int, batch_size: int) -> None:
        from cassandra.cluster import Cluster

        self.cluster = Cluster([host], port=port)
        self.session = self.cluster.connect()
        self.select = self.session.prepare(f"SELECT label, data FROM {KEYSPACE}.data WHERE id = ?")
        self.batch_size = batch_size

    def epoch(self, uuids: list[object]) -> Iterator[tuple[int, int]]:
        from cassandra.concurrent import execute_concurrent_with_args

        order = np.random.default_rng(0).permutation(len(uuids))
        for s in range(0, len(order), self.batch_size):
            ids = [(uuids[i],) for i in order[s : s + self.batch_size]]
            results = execute_concurrent_with_args(
                self.session, self.select, ids, concurrency=self.batch_size
            )
            tensors = []
            labels = []
            for ok, rows in results:
                if not ok:
                    raise rows
                row = rows.one()
                labels.append(row.label)
                tensors.append(torch.frombuffer(bytearray(row.data), dtype=torch.uint8))
            yield len(tensors), sum(t.numel() for t in tensors)

    def close(self) -> None:
        self.cluster.shutdown()


def run(folder: Path, runs: int, batch_size: int = 128) -> dict[str, object]:
    import uuid as uuidlib

    with Cluster(1, name="bench", heap="1g") as cl:
        # Straight to the node: no proxy in the path of either loader.
        url = cl.direct_url(KEYSPACE)
        log(f"ingesting {folder} into Apache Cassandra ({url})")
        t0 = time.perf_counter()
        report = ingest_folder(folder, url, "data", val_frac=0.0, progress=False)
        log(f"ingested {report.written} samples in {time.perf_counter() - t0:.1f} s")
        assert report.split_file is not None
        # Each sample five times per epoch, so that epoch starts (one round trip
        # of ramp-up) weigh as little as in a real data set.
        uuids = np.tile(report.split_file.uuids("train"), (5, 1))

        results: list[tuple[Measure, float]] = []

        def timed(name: str, epoch: object) -> None:
            c0, t0 = cl.cpu_seconds(), time.perf_counter()
            m = measure(name, epoch, runs)  # type: ignore[arg-type]
            share = (cl.cpu_seconds() - c0) / (time.perf_counter() - t0)
            results.append((m, share))

        timed("crs4_cassandra", lambda: ours_epoch(url, uuids, batch_size))
        py = PythonDriverLoader(cl.node_addresses[0], cl.port, batch_size)
        try:
            as_uuid = [uuidlib.UUID(bytes=r.tobytes()) for r in uuids]
            timed("cassandra-driver execute_concurrent_with_args", lambda: py.epoch(as_uuid))
        finally:
            py.close()
    return {
        "samples": len(uuids),
        "batch_size": batch_size,
        "rows": [
            {
                "name": m.name,
                "samples_per_s": m.samples_median,
                "gbps": m.gbps_median,
                "server_cores": share,
                "cpu_s_per_gb": sorted(m.cpu_s_per_gb)[len(m.cpu_s_per_gb) // 2],
            }
            for m, share in results
        ],
    }
