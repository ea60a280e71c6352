"""Loader statistics: whether training waits for data, and why.

``ShardedDataset.stats()`` (and ``CassandraReader.stats()`` of the DALI
reader; ``Loader::stats`` in the tch crate) gives, for the epoch under way
(``"current"``) and the last one delivered (``"last"``), a dict of:

- ``samples``, ``bytes``, ``batches``, ``skipped``, ``seconds`` (from the
  first request for a batch to the last batch), ``samples_per_s``,
  ``mb_per_s``;
- ``wait_s`` and ``stall``: the time the consumer spent waiting for the next
  batch, and its share of the epoch (the data stall). ``stall_source`` says
  whose wait it is: ``"loop"`` when measured where the training loop waits
  (``ShardedDataset.watch(loader)``, or the Lightning :class:`LoaderStats`
  callback), ``"reader"`` without DataLoader workers (the loop iterates the
  reader itself), ``"workers"`` with them and no loop measurement (the mean
  of the workers' waits: they read ahead of the loop, so it is an upper
  bound of what the loop sees only when the queue between them is empty);
- ``batch_read_ms`` (p50, p90, p99 of batch reads from issue to finish),
  ``window`` and ``in_flight`` (mean, max and last batch reads allowed and in
  flight), ``timeline`` ([seconds, window, in flight] at most every 50 ms);
- the store's ``reads``, ``retries``, ``timeouts``, ``hedged``,
  ``hedges_won``, ``cache_hits``, ``cache_misses``, and ``nodes``: per node
  address, its ``reads`` and ``latency_ms`` percentiles.

The figures are made and merged in the Rust core; with DataLoader workers,
each worker publishes its own (a small JSON file per worker, in a temporary
directory of the main process's dataset) and ``stats()`` in the main process
merges them per epoch: counts and waits summed, histograms added (the
percentiles are recomputed, not averaged), windows summed.

:func:`summary` flattens an epoch's dict into numbers for a logger;
:class:`PrometheusExporter` serves the figures of running datasets to
Prometheus (``prometheus-client``, optional).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from . import _native

T = TypeVar("T")

#: Seconds between a DataLoader worker's publications of its figures.
PUBLISH_EVERY = 0.5


def _board_root() -> Path:
    return Path(tempfile.gettempdir()) / "crs4_cassandra-stats"


class Board:
    """Where the DataLoader workers of one dataset (in one main process)
    publish their figures: one JSON file per worker, replaced atomically.

    The directory is named by a token made with the dataset, so the workers
    (forked or spawned, with a copy of the dataset) find it without being
    told; it is removed when the dataset of the process that made it goes.
    """

    def __init__(self) -> None:
        self.token = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._owner = os.getpid()
        self._last_publish = 0.0
        weakref.finalize(self, _remove_board, self.path, self._owner)

    def __getstate__(self) -> dict[str, Any]:
        return {"token": self.token, "owner": self._owner}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.token = state["token"]
        self._owner = state["owner"]
        self._last_publish = 0.0

    @property
    def path(self) -> Path:
        return _board_root() / self.token

    def due(self) -> bool:
        """Whether a worker should publish again now."""
        return time.monotonic() - self._last_publish >= PUBLISH_EVERY

    def publish(self, worker: int, num_workers: int, reader_stats: str) -> None:
        """Writes a worker's figures (best effort: statistics never fail a read)."""
        self._last_publish = time.monotonic()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            final = self.path / f"worker-{worker}.json"
            tmp = self.path / f".worker-{worker}.{os.getpid()}.tmp"
            body = {"worker": worker, "num_workers": num_workers, "pid": os.getpid()}
            tmp.write_text(json.dumps(body)[:-1] + f', "stats": {reader_stats}}}')
            os.replace(tmp, final)
        except OSError:
            pass

    def collect(self) -> list[dict[str, Any]]:
        """The figures the workers of the latest DataLoader published."""
        try:
            files = sorted(self.path.glob("worker-*.json"), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []
        entries = []
        for f in files:
            try:
                entries.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue  # replaced or removed meanwhile
        if not entries:
            return []
        # Files of an earlier DataLoader with more workers may remain.
        n = entries[-1]["num_workers"]
        return [e for e in entries if e["num_workers"] == n and e["worker"] < n]


def _remove_board(path: Path, owner: int) -> None:
    if os.getpid() == owner:  # never from a worker that inherited the dataset
        shutil.rmtree(path, ignore_errors=True)


def merge_epochs(readers: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"current", "last"}`` of several readers of one rank (its DataLoader
    workers) as one: "current" is the highest epoch a reader is still in
    (with the readers that finished it), "last" the highest that every reader
    that had it finished."""
    current = [r["current"] for r in readers if r.get("current")]
    last = [r["last"] for r in readers if r.get("last")]
    out: dict[str, Any] = {"current": None, "last": None}
    if current:
        e = max(c["epoch"] for c in current)
        parts = [c for c in current if c["epoch"] == e] + [x for x in last if x["epoch"] == e]
        out["current"] = _merge(parts)
    done = [x for x in last if not current or x["epoch"] < max(c["epoch"] for c in current)]
    if done:
        e = max(x["epoch"] for x in done)
        out["last"] = _merge([x for x in done if x["epoch"] == e])
    return out


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    if len(parts) == 1:
        return parts[0]
    merged = _native.merge_stats([json.dumps(p) for p in parts])
    out: dict[str, Any] | None = None if merged is None else json.loads(merged)
    return out


class LoopClock:
    """The time a training loop spends waiting for batches, per epoch,
    measured where it waits (``ShardedDataset.watch``, the Lightning
    callback). A copy (sent to a DataLoader worker) starts empty."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epochs: dict[int, dict[str, float]] = {}

    def __reduce__(self) -> tuple[type[LoopClock], tuple[()]]:
        return LoopClock, ()

    def begin(self, epoch: int, start: float | None = None) -> None:
        """Starts counting `epoch` (at `start`, a ``time.monotonic()``, or now)."""
        start = time.monotonic() if start is None else start
        with self._lock:
            self._epochs[epoch] = {"start": start, "end": 0.0, "wait": 0.0, "n": 0}
            for old in sorted(self._epochs)[:-4]:
                del self._epochs[old]

    def waited(self, epoch: int, seconds: float) -> None:
        with self._lock:
            e = self._epochs.get(epoch)
            if e is not None:
                e["wait"] += seconds
                e["n"] += 1

    def end(self, epoch: int) -> None:
        with self._lock:
            e = self._epochs.get(epoch)
            if e is not None and not e["end"]:
                e["end"] = time.monotonic()

    def figures(self, epoch: int) -> tuple[float, float] | None:
        """(seconds waited, seconds of the epoch so far) of `epoch`, if measured."""
        with self._lock:
            e = self._epochs.get(epoch)
            if e is None:
                return None
            return e["wait"], (e["end"] or time.monotonic()) - e["start"]

    def apply(self, stats: dict[str, Any] | None) -> None:
        """Puts the loop's wait into an epoch's figures, as its stall."""
        if stats is None:
            return
        measured = self.figures(stats["epoch"])
        if measured is None:
            return
        wait, seconds = measured
        stats["loop_wait_s"] = wait
        stats["loop_seconds"] = seconds
        stats["stall"] = min(1.0, wait / seconds) if seconds > 0 else 0.0
        stats["stall_source"] = "loop"


def watch(iterable: Iterable[T], clock: LoopClock, epoch_of: Callable[[], int]) -> Iterator[T]:
    """Yields what `iterable` yields, timing each wait for the next item, in
    the epoch `epoch_of()` gives once iteration started (a DataLoader may
    set it as it starts)."""
    t0 = time.monotonic()
    it = iter(iterable)
    epoch = epoch_of()
    clock.begin(epoch, t0)
    clock.waited(epoch, time.monotonic() - t0)
    while True:
        t0 = time.monotonic()
        try:
            item = next(it)
        except StopIteration:
            clock.end(epoch)
            return
        clock.waited(epoch, time.monotonic() - t0)
        yield item


_PERCENTILES = ("p50", "p90", "p99")


def summary(epoch: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """An epoch's figures as flat numbers (for a logger): throughput, stall,
    batch read and per-node latency percentiles, window, store counters."""
    if not epoch:
        return {}
    out: dict[str, float] = {}
    for key in (
        "samples",
        "bytes",
        "skipped",
        "seconds",
        "samples_per_s",
        "mb_per_s",
        "wait_s",
        "stall",
        "reads",
        "retries",
        "timeouts",
        "hedged",
        "hedges_won",
        "cache_hits",
        "cache_misses",
    ):
        out[key] = float(epoch[key])
    for p in _PERCENTILES:
        v = epoch["batch_read_ms"][p]
        if v is not None:
            out[f"batch_read_{p}_ms"] = float(v)
    for key in ("window", "in_flight"):
        out[f"{key}_mean"] = float(epoch[key]["mean"])
        out[f"{key}_max"] = float(epoch[key]["max"])
    for addr, node in epoch["nodes"].items():
        for p in _PERCENTILES:
            v = node["latency_ms"][p]
            if v is not None:
                out[f"node_{addr}_{p}_ms"] = float(v)
    return {prefix + k: v for k, v in out.items()}


class PrometheusExporter:
    """Serves the figures of running datasets to Prometheus:

        exporter = PrometheusExporter({"train": train_ds}, port=9100)
        ...
        exporter.close()

    Gauges of the epoch under way (or the last one, between epochs), labelled
    by ``dataset`` (and ``node``, ``quantile``): ``crs4_cassandra_samples_per_second``,
    ``..._stall_ratio``, ``..._window``, ``..._in_flight``,
    ``..._batch_read_seconds``, ``..._node_read_seconds``, and the epoch's
    counts (``..._epoch_samples``, ``..._epoch_reads``, ``..._epoch_retries``,
    ``..._epoch_hedges_won``, ``..._epoch_cache_hits``...). Needs
    ``prometheus-client``; ``port=0`` picks a free port (``exporter.port``).
    """

    def __init__(self, datasets: Mapping[str, Any], port: int = 0, addr: str = "") -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "PrometheusExporter needs prometheus-client: pip install prometheus-client"
            ) from e
        self.datasets = dict(datasets)
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self.datasets))
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        self.port: int = self._server.server_address[1]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Collector:
    def __init__(self, datasets: Mapping[str, Any]) -> None:
        self.datasets = datasets

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"crs4_cassandra_{name}", doc, labels=labels)

        rate = gauge("samples_per_second", "Samples delivered per second", ["dataset"])
        stall = gauge("stall_ratio", "Share of the epoch spent waiting for data", ["dataset"])
        epoch_g = gauge("epoch", "Epoch the figures are of", ["dataset"])
        window = gauge("window", "Batch reads allowed in flight (mean)", ["dataset"])
        in_flight = gauge("in_flight", "Batch reads in flight (mean)", ["dataset"])
        batch = gauge("batch_read_seconds", "Batch read time", ["dataset", "quantile"])
        node = gauge(
            "node_read_seconds", "Sample read time per node", ["dataset", "node", "quantile"]
        )
        counts = {
            k: gauge(f"epoch_{k}", f"{k} in the epoch", ["dataset"])
            for k in ("samples", "bytes", "reads", "retries", "timeouts", "hedged",
                      "hedges_won", "cache_hits", "cache_misses", "skipped")
        }  # fmt: skip
        for name, ds in self.datasets.items():
            s = ds.stats()
            e = s["current"] or s["last"]
            if not e:
                continue
            rate.add_metric([name], e["samples_per_s"])
            stall.add_metric([name], e["stall"])
            epoch_g.add_metric([name], e["epoch"])
            window.add_metric([name], e["window"]["mean"])
            in_flight.add_metric([name], e["in_flight"]["mean"])
            for p in _PERCENTILES:
                q = f"0.{p[1:]}"
                if e["batch_read_ms"][p] is not None:
                    batch.add_metric([name, q], e["batch_read_ms"][p] / 1000)
                for addr, n in e["nodes"].items():
                    if n["latency_ms"][p] is not None:
                        node.add_metric([name, addr, q], n["latency_ms"][p] / 1000)
            for k, g in counts.items():
                g.add_metric([name], e[k])
        yield from (rate, stall, epoch_g, window, in_flight, batch, node, *counts.values())
