"""The DALI reader against ShardedDataset, both feeding the same CPU-only DALI
pipeline (no GPU: ``device_id=None``), from the local store and from an
Apache Cassandra node behind toxiproxy at 0, 10 and 100 ms of added latency.

Three ways of loading the same encoded samples, batch 128, shuffled every
epoch, timed over whole epochs after a warm-up epoch:

- ``ShardedDataset`` alone (a PyTorch loop taking its batches): the loader's
  own rate, for reference;
- ``ShardedDataset`` feeding ``fn.external_source`` the way a user writes it
  (a callback returning one numpy view per sample; DALI copies them in);
- ``crs4_cassandra.dali.reader`` (``fn.external_source`` fed zero-copy
  capsules over the batch arena, with DALI's reader metadata).

The pipeline is either a pass-through of the encoded bytes (``--pipeline
pass``: what the loading costs, DALI's executor included) or CPU decoding
and a resize to 224x224 (``--pipeline decode``: what a CPU-only job runs,
where decoding takes most of the 2 cores). CPU seconds per GB of encoded
bytes delivered, for this process and for the Cassandra node and toxiproxy.

    python -m bench.dali_cpu [--images 2000] [--kb 110] [--runs 3] [--pipeline pass]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import crs4_cassandra as cc
from crs4_cassandra import dali as cdali
from crs4_cassandra.ingest import ingest_folder

from .common import HERE, folder_stats, image_folder, log, machine, settle, write_json

sys.path.insert(0, str(HERE.parent))
from testbed import Cluster  # noqa: E402

BATCH = 128
THREADS = 2
DELAYS_MS = (0, 10, 100)


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def make_pipeline(source: Callable[[], Any] | None, reader_args: dict[str, Any], kind: str) -> Any:
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=BATCH, num_threads=THREADS, device_id=None, prefetch_queue_depth=2)
    def pipe() -> Any:
        if source is None:
            jpegs, labels = cdali.reader(name="Reader", shuffle_every_epoch=True, **reader_args)
        else:
            jpegs, labels = fn.external_source(
                source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT32]
            )
        if kind == "decode":
            images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
            return fn.resize(images, resize_x=224, resize_y=224), labels
        return jpegs, labels

    p = pipe()
    p.build()
    return p


def sharded_alone(ds: cc.ShardedDataset) -> Callable[[int], Iterator[tuple[int, int]]]:
    def epoch(e: int) -> Iterator[tuple[int, int]]:
        ds.set_epoch(e)
        for b in ds:
            yield len(b), int(b.data.numel())

    return epoch


def sharded_external(
    ds: cc.ShardedDataset, kind: str, steps: int
) -> Callable[[int], Iterator[tuple[int, int]]]:
    it: Iterator[Any] | None = None
    state = {"epoch": 0, "bytes": 0}

    def source() -> tuple[list[np.ndarray], np.ndarray]:
        nonlocal it
        while True:
            if it is None:
                ds.set_epoch(state["epoch"])
                it = iter(ds)
            try:
                b = next(it)
            except StopIteration:
                it = None
                state["epoch"] += 1
                continue
            data = b.data.numpy()
            o = b.offsets.tolist()
            state["bytes"] += o[-1]
            labels = b.labels.numpy().astype(np.int32).reshape(-1, 1)
            return [data[o[i] : o[i + 1]] for i in range(len(o) - 1)], labels

    pipe = make_pipeline(source, {}, kind)

    def epoch(e: int) -> Iterator[tuple[int, int]]:
        for _ in range(steps):
            before = state["bytes"]
            out = pipe.run()
            yield len(out[0]), state["bytes"] - before

    return epoch


def dali_reader(
    store: Any, split: Path, kind: str, mean_bytes: float
) -> Callable[[int], Iterator[tuple[int, int]]]:
    pipe = make_pipeline(None, {"store": store, "split_file": str(split), "split": "train"}, kind)
    steps = pipe.reader_meta("Reader")["epoch_size_padded"] // BATCH

    def epoch(e: int) -> Iterator[tuple[int, int]]:
        for _ in range(steps):
            out = pipe.run()
            # Encoded bytes: the split's mean sample size (counting them per
            # sample here would add Python work per sample to this loader only).
            yield len(out[0]), int(len(out[0]) * mean_bytes)

    return epoch


def timed(
    name: str,
    epoch: Callable[[int], Iterator[tuple[int, int]]],
    runs: int,
    min_seconds: float,
    cluster: Cluster | None,
) -> dict[str, Any]:
    """Medians over ``runs`` runs of whole epochs lasting ``min_seconds``,
    after one warm-up epoch."""
    e = 0
    for _ in epoch(e):
        pass
    e += 1
    rates, cpu, server, proxy = [], [], [], []
    for r in range(runs):
        c0, t0 = own_cpu(), time.perf_counter()
        s0 = cluster.cpu_seconds() if cluster else 0.0
        p0 = cluster.toxiproxy.cpu_seconds() if cluster else 0.0
        n = b = 0
        while time.perf_counter() - t0 < min_seconds:
            for ns, nb in epoch(e):
                n += ns
                b += nb
            e += 1
        dt = time.perf_counter() - t0
        gb = b / 1e9
        rates.append(n / dt)
        cpu.append((own_cpu() - c0) / gb)
        if cluster:
            server.append((cluster.cpu_seconds() - s0) / gb)
            proxy.append((cluster.toxiproxy.cpu_seconds() - p0) / gb)
        log(f"{name}: run {r + 1}/{runs}: {n / dt:,.0f} samples/s, {cpu[-1]:.2f} CPU s/GB")
    med = statistics.median
    return {
        "name": name,
        "samples_per_s": med(rates),
        "cpu_s_per_gb": med(cpu),
        "server_cpu_s_per_gb": med(server) if server else None,
        "toxiproxy_cpu_s_per_gb": med(proxy) if proxy else None,
        "runs": rates,
    }


def compare(
    store: Any,
    split: Path,
    kind: str,
    runs: int,
    seconds: float,
    mean_bytes: float,
    cluster: Cluster | None,
) -> list[dict[str, Any]]:
    rows = []
    ds = cc.ShardedDataset.from_split(store, split, "train", BATCH)
    rows.append(timed("ShardedDataset alone", sharded_alone(ds), runs, seconds, cluster))
    ds = cc.ShardedDataset.from_split(store, split, "train", BATCH)
    steps = len(ds)
    rows.append(
        timed(
            "ShardedDataset -> external_source",
            sharded_external(ds, kind, steps),
            runs,
            seconds,
            cluster,
        )
    )
    rows.append(
        timed("dali.reader", dali_reader(store, split, kind, mean_bytes), runs, seconds, cluster)
    )
    return rows


def run(
    images: int = 2000, kb: float = 110, runs: int = 3, seconds: float = 4.0, kind: str = "pass"
) -> dict[str, Any]:
    folder = image_folder(images, kb)
    n, mean = folder_stats(folder)
    out: dict[str, Any] = {
        "images": n,
        "mean_bytes": mean,
        "batch": BATCH,
        "pipeline": kind,
        "machine": machine(),
        "sections": {},
    }
    with_local = Path(HERE / "data" / f"dali-cpu-store-{images}-{int(kb)}kb")
    split = with_local.with_suffix(".split")
    if not split.exists():
        ingest_folder(folder, f"local:{with_local}", "bench", val_frac=0.0, split_file=split,
                      progress=False, overwrite=True)  # fmt: skip
    out["sections"]["local store"] = compare(
        f"local:{with_local}", split, kind, runs, seconds, mean, None
    )
    with Cluster(1, name="dalicpu", heap="1g") as cl:
        url = cl.url("dalicpu")
        csplit = HERE / "data" / "dali-cpu-cassandra.split"
        ingest_folder(folder, url, "bench", val_frac=0.0, split_file=csplit, progress=False,
                      overwrite=True)  # fmt: skip
        store = cc.open_store(url)
        log(f"waited {settle(cl):.0f} s for the node to finish flushing and compacting")
        for delay in DELAYS_MS:
            cl.proxies[0].clear()
            if delay:
                cl.proxies[0].latency(delay)
            out["sections"][f"Cassandra +{delay} ms"] = compare(
                store, csplit, kind, runs, seconds, mean, cl
            )
    return out


def report(r: dict[str, Any]) -> list[str]:
    lines = [
        f"## DALI reader against ShardedDataset, CPU-only DALI ({r['pipeline']} pipeline)",
        "",
        f"`python -m bench.dali_cpu --pipeline {r['pipeline']}`: {r['images']} JPEGs, mean "
        f"{r['mean_bytes'] / 1000:.0f} KB, batch {r['batch']}, DALI on {THREADS} CPU threads "
        "(no GPU); medians of the runs after a warm-up epoch; CPU seconds per GB of encoded "
        f"bytes delivered (this process; the Cassandra node + toxiproxy). {r['machine']}.",
        "",
        "| store | loader | samples/s | vs ShardedDataset -> DALI | CPU s/GB | server CPU s/GB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for section, rows in r["sections"].items():
        base = rows[1]["samples_per_s"]
        for row in rows:
            server = (
                f"{row['server_cpu_s_per_gb']:.1f} + {row['toxiproxy_cpu_s_per_gb']:.1f}"
                if row["server_cpu_s_per_gb"] is not None
                else ""
            )
            lines.append(
                f"| {section} | {row['name']} | {row['samples_per_s']:,.0f} | "
                f"{row['samples_per_s'] / base:.2f}x | {row['cpu_s_per_gb']:.2f} | {server} |"
            )
    lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--kb", type=float, default=110)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--pipeline", choices=("pass", "decode"), default="pass")
    args = ap.parse_args()
    r = run(args.images, args.kb, args.runs, args.seconds, args.pipeline)
    path = write_json(f"dali_cpu_{args.pipeline}", r)
    log(f"wrote {path}")
    print("\n".join(report(r)))


if __name__ == "__main__":
    main()
