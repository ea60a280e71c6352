"""The local sample cache: plan-aware eviction against LRU and against no
cache, from an Apache Cassandra node behind toxiproxy's latency toxic.

Each configuration runs in a new Python process with an empty cache
directory: it opens the store (``cache=``, ``cache_size=``,
``cache_policy=``), reads epochs one after the other with ``set_epoch`` (as a
training loop does) and reports, per epoch, the seconds, the samples and the
cache's hits and misses (``store.read_stats()``). Cache sizes are shares of
the bytes the cache would hold for the whole table (labels, data and a
4-byte header a sample). From the third epoch on the dataset reads the next
epoch ahead, so an epoch's counts include the first reads of the next one.

    python -m bench.cache [--samples 3000] [--kb 16] [--delay-ms 100] [--epochs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from .common import DATA, HERE, log, machine, settle, write_json

SHARES = (0.25, 0.5, 0.9)
POLICIES = ("plan", "lru")
BATCH = 64


def child(url: str, uuids_file: str, policy: str, size: int, path: str, epochs: int) -> None:
    """One configuration, in this (fresh) process: prints a JSON line."""
    import crs4_cassandra as cc

    uuids = np.load(uuids_file)
    options: dict[str, Any] = {}
    if policy != "none":
        options = {"cache": f"local:{path}", "cache_size": size, "cache_policy": policy}
    store = cc.open_store(url, **options)
    ds = cc.ShardedDataset(store, "data", uuids, BATCH, seed=1)
    rows = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        before = store.read_stats()
        c0, t0 = os.times(), time.perf_counter()
        n = sum(len(b) for b in ds)
        t1, c1 = time.perf_counter(), os.times()
        after = store.read_stats()
        rows.append(
            {
                "seconds": t1 - t0,
                "samples": n,
                "cpu": c1.user + c1.system - c0.user - c0.system,
                "hits": after["cache_hits"] - before["cache_hits"],
                "misses": after["cache_misses"] - before["cache_misses"],
            }
        )
    ds.close()
    print(json.dumps({"epochs": rows}))


def run_child(
    url: str, uuids_file: Path, policy: str, size: int, path: Path, epochs: int
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.cache", "--child", url, str(uuids_file), policy,
        str(size), str(path), str(epochs),
    ]  # fmt: skip
    out = subprocess.run(
        cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(samples: int, kb: int, delay_ms: int, epochs: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    from crs4_cassandra import _native
    from testbed import Cluster

    rng = np.random.default_rng(0)
    sizes = rng.integers(kb * 512, kb * 1536, samples)
    table_bytes = int(sum(8 + int(s) for s in sizes))
    out: dict[str, Any] = {
        "machine": machine(), "samples": samples, "kb": kb, "delay_ms": delay_ms,
        "epochs": epochs, "batch_size": BATCH, "table_bytes": table_bytes,
        "load_before": os.getloadavg(), "rows": [],
    }  # fmt: skip
    root = DATA / "cache-bench"
    with Cluster(1, name="cache", heap="1g") as cl:
        url = cl.url("cache")
        st = _native.open_store(url, create=True)
        st.create_tables("data", "data_metadata", "int", overwrite=True)
        ids = [uuid.uuid4().bytes for _ in range(samples)]
        for i in range(0, samples, 500):
            chunk = range(i, min(i + 500, samples))
            st.put_samples(
                "data",
                b"".join(ids[j] for j in chunk),
                [j % 10 for j in chunk],
                [rng.bytes(int(sizes[j])) for j in chunk],
            )
        uuids_file = DATA / "cache-uuids.npy"
        uuids_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(uuids_file, np.frombuffer(b"".join(ids), np.uint8).reshape(-1, 16))
        log(f"waited {settle(cl):.0f} s for the node to finish flushing and compacting")
        # The node's own caches warm for every configuration alike.
        run_child(url, uuids_file, "none", 0, root, 1)
        cl.proxies[0].latency(delay_ms)
        configs = [("no cache", "none", 0.0)] + [
            (f"{policy} {share:.0%}", policy, share) for share in SHARES for policy in POLICIES
        ]
        for name, policy, share in configs:
            path = root / name.replace(" ", "-").replace("%", "")
            shutil.rmtree(path, ignore_errors=True)
            s0, p0, w0 = cl.cpu_seconds(), cl.toxiproxy.cpu_seconds(), time.perf_counter()
            r = run_child(url, uuids_file, policy, int(table_bytes * share), path, epochs)
            wall = time.perf_counter() - w0
            row = {
                "name": name,
                "policy": policy,
                "share": share,
                "epochs": r["epochs"],
                "wall_s": wall,
                "node_cores": (cl.cpu_seconds() - s0) / wall,
                "proxy_cores": (cl.toxiproxy.cpu_seconds() - p0) / wall,
                "loader_cores": sum(e["cpu"] for e in r["epochs"])
                / sum(e["seconds"] for e in r["epochs"]),
            }
            out["rows"].append(row)
            rates = [e["samples"] / e["seconds"] for e in r["epochs"]]
            hit = [e["hits"] / max(e["hits"] + e["misses"], 1) for e in r["epochs"]]
            log(
                f"{name:<9} samples/s " + " ".join(f"{x:,.0f}" for x in rates)
                + " | hit rate " + " ".join(f"{x:.0%}" for x in hit)
            )  # fmt: skip
            shutil.rmtree(path, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    return out


def report(r: dict[str, Any]) -> list[str]:
    epochs = r["epochs"]
    lb, la = r["load_before"], r["load_after"]
    lines = [
        "## Sample cache (Apache Cassandra behind toxiproxy)",
        "",
        f"`python -m bench.cache`: {r['samples']:,} samples of {r['kb'] / 2:.0f}-"
        f"{r['kb'] * 1.5:.0f} KB ({r['table_bytes'] / 1e6:.0f} MB in the cache's terms), "
        f"batch {r['batch_size']}, one node (1 GiB heap) behind a {r['delay_ms']} ms latency "
        f"toxic; each configuration a new process with an empty cache reading {epochs} "
        "shuffled epochs with set_epoch; cache sizes are shares of the whole table. Hit "
        "rate: hits / (hits + misses) of each epoch (`store.read_stats()`; from the third "
        "epoch on, the next epoch's first reads count in the epoch before). Steady: median "
        "samples/s of epochs 1 and later; first epoch: samples/s of epoch 0, connecting "
        "included, and its ratio to no cache's (the cost of filling the cache). "
        f"{r['machine']}; load average {lb[0]:.2f}, {lb[1]:.2f}, {lb[2]:.2f} when it started "
        f"and {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} when it ended; cores used by the loader, "
        "the node and toxiproxy over each process's lifetime (the loader's over its epochs).",
        "",
        "| cache | hit rate, epochs 0.." + str(epochs - 1) + " | first epoch samples/s "
        "| vs no cache | steady samples/s | vs no cache | cores: loader + node + toxiproxy |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    base = r["rows"][0]
    base_first = base["epochs"][0]["samples"] / base["epochs"][0]["seconds"]

    def steady(row: dict[str, Any]) -> float:
        return float(statistics.median(e["samples"] / e["seconds"] for e in row["epochs"][1:]))

    for row in r["rows"]:
        ep = row["epochs"]
        first = ep[0]["samples"] / ep[0]["seconds"]
        hits = (
            " ".join(f"{e['hits'] / max(e['hits'] + e['misses'], 1):.0%}" for e in ep)
            if row["policy"] != "none"
            else "-"
        )
        lines.append(
            f"| {row['name']} | {hits} | {first:,.0f} | {first / base_first:.2f} "
            f"| {steady(row):,.0f} | {steady(row) / steady(base):.2f} "
            f"| {row['loader_cores']:.2f} + {row['node_cores']:.2f} + {row['proxy_cores']:.2f} |"
        )
    lines.append("")
    return lines


def write_section(lines: list[str]) -> Path:
    """Puts the section into bench/results.md in place of an earlier one,
    keeping the preamble and the other sections."""
    out = HERE / "results.md"
    old = out.read_text().splitlines() if out.exists() else ["# Benchmark results", ""]
    title = lines[0]
    kept: list[str] = []
    skipping = False
    for line in old:
        if line.startswith("## "):
            skipping = line == title
        if not skipping:
            kept.append(line)
    while kept and kept[-1] == "":
        kept.pop()
    out.write_text("\n".join([*kept, "", *lines]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", nargs=6, metavar=("URL", "UUIDS", "POLICY", "SIZE", "PATH", "N"))
    ap.add_argument("--samples", type=int, default=3000)
    ap.add_argument("--kb", type=int, default=16, help="mean sample size in KB")
    ap.add_argument("--delay-ms", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    if args.child:
        url, uuids, policy, size, path, epochs = args.child
        child(url, uuids, policy, int(size), path, int(epochs))
        return
    t0 = time.perf_counter()
    r = run(args.samples, args.kb, args.delay_ms, args.epochs)
    r["minutes"] = (time.perf_counter() - t0) / 60
    write_json("cache", r)
    lines = report(r)
    log(f"wrote {write_section(lines)}")
    print("\n".join(lines))
    log(f"took {r['minutes']:.1f} min")


if __name__ == "__main__":
    main()
