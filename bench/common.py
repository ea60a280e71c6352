"""Shared pieces of the benchmarks: data sets, timing, result tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crs4_cassandra.testing import make_image_folder

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
# A fresh node's JIT and first flushes make its first seconds of reads slower
# than any later ones: the Cassandra benchmarks read for a while before timing.
NODE_WARM_UP_S = 20.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def image_folder(n_images: int, target_kb: float, classes: int = 10) -> Path:
    """A generated ImageFolder of ImageNet-like JPEGs, cached under bench/data."""
    root = DATA / f"jpeg-{n_images}-{int(target_kb)}kb"
    marker = root / ".complete"
    if not marker.exists():
        log(f"generating {n_images} JPEGs of ~{target_kb:.0f} KB in {root}")
        make_image_folder(
            root, classes=classes, per_class=n_images // classes, target_kb=target_kb, seed=0
        )
        marker.write_text("ok")
    return root


def folder_stats(root: Path) -> tuple[int, float]:
    sizes = [p.stat().st_size for p in root.rglob("*.jpg")]
    return len(sizes), statistics.mean(sizes)


@dataclass
class Measure:
    """Medians over runs of one loader."""

    name: str
    samples: list[float] = field(default_factory=list)  # samples/s per run
    gbps: list[float] = field(default_factory=list)  # GB/s per run
    cpu_s_per_gb: list[float] = field(default_factory=list)

    @property
    def samples_median(self) -> float:
        return statistics.median(self.samples)

    @property
    def gbps_median(self) -> float:
        return statistics.median(self.gbps)

    @property
    def cpu_ms_per_sample_median(self) -> float:
        """CPU milliseconds per sample (the process's and its reaped children's)."""
        return statistics.median(
            c * g / s * 1e3
            for c, g, s in zip(self.cpu_s_per_gb, self.gbps, self.samples, strict=True)
        )


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def measure(
    name: str,
    epoch: Callable[[], Iterable[tuple[int, int]]],
    runs: int,
    warmup: int = 1,
    min_seconds: float = 2.0,
) -> Measure:
    """Times ``epoch()`` (an iterable of (samples, bytes) per batch) ``runs`` times;
    a run repeats whole epochs until it has lasted ``min_seconds``."""
    m = Measure(name)
    for r in range(warmup + runs):
        c0, t0 = cpu_seconds(), time.perf_counter()
        n = b = 0
        while True:
            for ns, nb in epoch():
                n += ns
                b += nb
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        cpu = cpu_seconds() - c0
        if r >= warmup:
            m.samples.append(n / dt)
            m.gbps.append(b / dt / 1e9)
            m.cpu_s_per_gb.append(cpu / (b / 1e9) if b else float("nan"))
        log(
            f"{name}: run {r + 1}/{warmup + runs}{' (warm-up)' if r < warmup else ''}: "
            f"{n / dt:,.0f} samples/s, {b / dt / 1e9:.2f} GB/s"
        )
    return m


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_json(name: str, payload: object) -> Path:
    out = HERE / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    return out


def settle(cl: Any, idle_cores: float = 0.15, timeout: float = 120.0) -> float:
    """Waits until Cassandra is about idle (flushes and compactions of the
    writes done), at most ``timeout`` seconds; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        c0 = cl.cpu_seconds()
        time.sleep(2.0)
        if (cl.cpu_seconds() - c0) / 2.0 < idle_cores:
            break
    return time.perf_counter() - t0


def warm_up_node(url: str, uuids: Any, batch_size: int) -> None:
    """Reads epochs of ``uuids`` from ``url`` for ``NODE_WARM_UP_S`` seconds."""
    import crs4_cassandra as cc

    warm = cc.ShardedDataset(url, "data", uuids, batch_size)
    t0, epoch = time.perf_counter(), 0
    while time.perf_counter() - t0 < NODE_WARM_UP_S:
        warm.set_epoch(epoch)
        list(warm)
        epoch += 1
    warm.close()
    log(f"node warmed up over {epoch} epochs")
