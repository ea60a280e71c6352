"""Loader statistics: what an epoch delivered, how long the consumer waited
(the data stall), batch read and per-node round trips, the window, and the
store's counters; merged from DataLoader workers; logged by the Lightning
callback, served to Prometheus, and printed by `crs4-cassandra probe`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from crs4_cassandra.lightning import LoaderStats
from crs4_cassandra.stats import PrometheusExporter, summary
from testbed import Proxy

from .conftest import fill_table

pytestmark = pytest.mark.timeout(180)


def test_an_epoch_reports_what_it_delivered(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    ds = cc.ShardedDataset(local_store[0], "shapes", all_uuids, 8, seed=1)
    assert ds.stats() == {"current": None, "last": None}
    it = iter(ds)
    first = [next(it) for _ in range(3)]
    now = ds.stats()["current"]
    assert (now["epoch"], now["batches"], now["samples"]) == (0, 3, 24)
    assert now["bytes"] == sum(int(b.offsets[-1]) for b in first)
    assert not now["complete"] and now["stall_source"] == "reader"
    rest = list(it)
    s = ds.stats()
    assert s["current"] is None
    last = s["last"]
    assert last["complete"] and last["epoch"] == 0
    assert last["batches"] == len(first) + len(rest) == len(ds)
    assert last["samples"] == len(all_uuids)  # the pads of the last batch are not counted
    assert last["batch_reads"] >= last["batches"] and last["batch_read_ms"]["p50"] > 0
    assert 1 <= last["window"]["mean"] <= last["window"]["max"]
    assert 0 < last["in_flight"]["mean"] <= last["window"]["max"]
    assert last["samples_per_s"] == pytest.approx(last["samples"] / last["seconds"])
    # The local store counts no network reads.
    assert last["reads"] == last["hedged"] == 0 and last["nodes"] == {}
    flat = summary(last, "data/")
    assert flat["data/samples"] == len(all_uuids) and "data/batch_read_p50_ms" in flat


def _epoch(ds: cc.ShardedDataset, per_batch: float) -> dict[str, Any]:
    for _ in ds:
        if per_batch:
            time.sleep(per_batch)
    last: dict[str, Any] = ds.stats()["last"]
    return last


@pytest.mark.slow
def test_the_stall_is_the_consumers_wait(cassandra_store: tuple[str, Path], proxy: Proxy) -> None:
    url, split = cassandra_store
    proxy.latency(40)
    try:
        # Two batch reads of 40 ms+ in flight: a consumer that does nothing
        # waits most of the time; one that takes 100 ms per batch never does.
        ds = cc.ShardedDataset.from_split(url, split, "train", 8, window=2)
        _epoch(ds, 0)  # connect
        eager = _epoch(ds, 0)
        slow = _epoch(ds, 0.1)
    finally:
        proxy.clear()
    assert eager["stall"] > 0.8, eager
    assert slow["stall"] < 0.1, slow
    # From the first request to the last batch: every sleep but the last.
    assert slow["seconds"] >= 0.1 * (slow["batches"] - 1)


@pytest.mark.slow
def test_round_trips_follow_added_latency(cassandra_store: tuple[str, Path], proxy: Proxy) -> None:
    url, split = cassandra_store
    # Two reads at a time, so that the node's own queueing stays out of it
    # (with more in flight, added latency also lowers the load on the node).
    ds = cc.ShardedDataset.from_split(url, split, "val", 2, window=1)
    _epoch(ds, 0)  # connect and warm up

    def p50s() -> tuple[float, float]:
        last = _epoch(ds, 0)
        (node,) = last["nodes"].values()
        # Reads count in the epoch during which they finish: with the next
        # epoch read ahead, some of this one's may finish in the last.
        assert node["reads"] >= len(ds), last
        return node["latency_ms"]["p50"], last["batch_read_ms"]["p50"]

    base_node, base_batch = p50s()
    proxy.latency(50)
    try:
        slow_node, slow_batch = p50s()
    finally:
        proxy.clear()
    assert slow_node - base_node == pytest.approx(50, abs=5), (base_node, slow_node)
    assert slow_batch - base_batch == pytest.approx(50, abs=10), (base_batch, slow_batch)


def test_dataloader_workers_figures_reach_the_main_process(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    ds = cc.ShardedDataset(local_store[0], "shapes", all_uuids, 8, seed=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    batches = list(loader)
    last = ds.stats()["last"]
    assert last["readers"] == 2 and last["stall_source"] == "workers"
    assert last["samples"] == len(all_uuids) and last["batches"] == len(batches)
    # Measured where the loop waits instead: a loop slower than its workers
    # hardly waits after the first batch.
    ds.set_epoch(1)
    for _ in ds.watch(loader):
        time.sleep(0.05)
    last = ds.stats()["last"]
    assert last["epoch"] == 1 and last["stall_source"] == "loop"
    assert last["loop_seconds"] >= 0.05 * (len(batches) - 1)
    assert last["stall"] == pytest.approx(last["loop_wait_s"] / last["loop_seconds"])
    assert last["stall"] < 0.5, last


def test_prometheus_scrapes_the_running_figures(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    ds = cc.ShardedDataset(local_store[0], "shapes", all_uuids, 8)
    exporter = PrometheusExporter({"train": ds}, port=0, addr="127.0.0.1")
    try:
        list(ds)
        url = f"http://127.0.0.1:{exporter.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    finally:
        exporter.close()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("crs4_cassandra_")
    }
    assert values['crs4_cassandra_epoch_samples{dataset="train"}'] == len(all_uuids)
    assert values['crs4_cassandra_samples_per_second{dataset="train"}'] > 0
    assert 0 <= values['crs4_cassandra_stall_ratio{dataset="train"}'] <= 1
    assert values['crs4_cassandra_batch_read_seconds{dataset="train",quantile="0.50"}'] > 0


@pytest.mark.slow
# Lightning 2.6 calls a torch pytree API that this torch deprecates.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_lightning_callback_logs_each_epoch(local_store: tuple[str, Path], tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from crs4_cassandra.lightning import ShardedDataModule

    def features(b: cc.Batch) -> torch.Tensor:
        return (b.offsets[1:] - b.offsets[:-1]).float().unsqueeze(1) / 1000.0

    class Slow(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(1, 1)

        def training_step(self, x: torch.Tensor, i: int) -> torch.Tensor:
            time.sleep(0.02)  # slower than the local store: little stall
            return self.lin(x).pow(2).mean()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    url, split = local_store
    dm = ShardedDataModule(url, split, 8, val_split=None, transform=features, num_workers=1)
    callback = LoaderStats()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Slow(), datamodule=dm)
    n_train = len(cc.SplitFile.load(split).uuids("train"))
    assert callback.last["data/samples"] == n_train
    assert 0 <= callback.last["data/stall"] < 0.5, callback.last
    rows = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    epochs = [r for r in logged if r.get("data/samples")]
    assert len(epochs) == 2, rows
    assert all(float(r["data/samples"]) == n_train for r in epochs)
    assert all(float(r["data/samples_per_s"]) > 0 for r in epochs)


@pytest.mark.slow
def test_probe_reports_a_clusters_round_trips(
    cassandra_store: tuple[str, Path], proxy: Proxy
) -> None:
    url, split = cassandra_store
    proxy.latency(30)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "crs4_cassandra.cli", "probe", "--store", url,
             "--split-file", str(split), "--batch-size", "8", "--seconds", "3", "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        proxy.clear()
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    steady = report["steady"]
    assert report["table"] == "shapes" and report["epochs_read"] >= 2
    assert steady["samples_per_s"] > 0 and steady["window"] >= 1
    (node,) = steady["nodes"].values()
    p50 = float(node["latency_ms"].split("/")[0])
    assert p50 >= 30, report
    # Readable text too.
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "probe", "--store", url,
         "--table", "shapes", "--seconds", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "samples/s" in r.stdout and "node " in r.stdout, r.stdout


def test_probe_names_a_missing_table(local_store: tuple[str, Path]) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "crs4_cassandra.cli", "probe", "--store", local_store[0],
         "--table", "nope", "--seconds", "1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "nope" in r.stderr, r.stderr


def test_cassandra_reads_are_counted_per_epoch(
    keyspace_url: str,
) -> None:
    uuids, _, _ = fill_table(keyspace_url, "t", "int", 40, seed=3)
    ds = cc.ShardedDataset(keyspace_url, "t", uuids, 8)
    for epoch in range(2):
        ds.set_epoch(epoch)
        list(ds)
        last = ds.stats()["last"]
        assert last["epoch"] == epoch
        # Each epoch's own reads (not the store's total since it opened);
        # from the second epoch on, the next ones are read ahead (several,
        # when epochs are shorter than the window), and those reads count
        # in the epoch during which they start (requests) or finish (nodes).
        answered = sum(n["reads"] for n in last["nodes"].values())
        if epoch == 0:
            assert last["reads"] == answered == 40, str(
                {k: v for k, v in last.items() if k != "timeline"}
            )
        else:
            total = ds.store.read_stats()["reads"]
            assert 40 <= answered <= last["reads"] <= total - 40, (total, last)
        assert last["retries"] == last["timeouts"] == 0
