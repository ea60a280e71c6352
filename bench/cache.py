"""The local sample cache: plan-aware eviction against LRU and against no
cache, from an Apache Cassandra node behind toxiproxy's latency toxic.

Each configuration runs in a new Python process with an empty cache
directory: it opens the store (``cache=``, ``cache_size=``,
``cache_policy=``) and reads shuffled epochs one after the other, each
through a new dataset on that store (so that no epoch is read ahead during
the one before: each epoch's time and counts are its own), and reports, per
epoch, the seconds, the samples and the cache's hits and misses
(``store.read_stats()``). Cache sizes are shares of the bytes the cache
would hold for the whole table (data, 4-byte labels and a 4-byte header a sample).

    python -m bench.cache [--samples 4000] [--kb 16] [--delay-ms 100] [--epochs 5]
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

from .common import DATA, HERE, NODE_WARM_UP_S, log, machine, settle, warm_up_node, write_json

SHARES = (0.25, 0.5, 0.9)
POLICIES = ("plan", "lru")
BATCH = 64
# Every configuration runs once per round, in an order rotated each round,
# so that the node's warming up (and the machine's other load) falls on all
# of them alike; figures are medians over the rounds.
ROUNDS = 3


def child(url: str, uuids_file: str, policy: str, size: int, path: str, epochs: int) -> None:
    """One configuration, in this (fresh) process: prints a JSON line."""
    import crs4_cassandra as cc

    uuids = np.load(uuids_file)
    options: dict[str, Any] = {}
    if policy != "none":
        options = {"cache": f"local:{path}", "cache_size": size, "cache_policy": policy}
    store = cc.open_store(url, **options)
    rows = []
    for epoch in range(epochs):
        # A dataset per epoch (one store, one connection, one cache): none
        # reads the next epoch ahead, so each epoch's time and counts are its own.
        ds = cc.ShardedDataset(store, "data", uuids, BATCH, seed=1)
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
    # The clone's root first (bench, testbed), then the caller's path.
    path = os.pathsep.join(p for p in (str(HERE.parent), os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": path},
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
        warm_up_node(url, np.load(uuids_file), BATCH)
        cl.proxies[0].latency(delay_ms)
        configs = [("no cache", "none", 0.0)] + [
            (f"{policy} {share:.0%}", policy, share) for share in SHARES for policy in POLICIES
        ]
        runs = [
            (rnd, configs[(i + rnd * 3) % len(configs)])
            for rnd in range(ROUNDS)
            for i in range(len(configs))
        ]
        out["rounds"] = ROUNDS
        for rnd, (name, policy, share) in runs:
            path = root / name.replace(" ", "-").replace("%", "")
            shutil.rmtree(path, ignore_errors=True)
            s0, p0, w0 = cl.cpu_seconds(), cl.toxiproxy.cpu_seconds(), time.perf_counter()
            r = run_child(url, uuids_file, policy, int(table_bytes * share), path, epochs)
            wall = time.perf_counter() - w0
            row = {
                "round": rnd,
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
                f"round {rnd + 1} {name:<9} samples/s " + " ".join(f"{x:,.0f}" for x in rates)
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
        f"toxic, read for {NODE_WARM_UP_S:.0f} s before timing; each configuration a new "
        f"process with an empty cache reading {epochs} shuffled epochs, each through a new "
        "dataset on the one store (no epoch read ahead during the one before), once in each "
        f"of {r['rounds']} rounds (order rotated), medians over the rounds; cache sizes are "
        "shares of the whole table. Hit rate: hits / (hits + misses) of each epoch "
        "(`store.read_stats()`). Steady: samples/s, the median of epochs 1 and later; first "
        "epoch: samples/s of epoch 0, connecting included, and its ratio to no cache's (the "
        "cost of filling the cache). "
        f"{r['machine']}; load average {lb[0]:.2f}, {lb[1]:.2f}, {lb[2]:.2f} when it started "
        f"and {la[0]:.2f}, {la[1]:.2f}, {la[2]:.2f} when it ended; cores used by the loader, "
        "the node and toxiproxy over each process's lifetime (the loader's over its epochs).",
        "",
        "| cache | hit rate, epochs 0.." + str(epochs - 1) + " | first epoch samples/s "
        "| vs no cache | steady samples/s | vs no cache | cores: loader + node + toxiproxy |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    by: dict[str, list[dict[str, Any]]] = {}
    for row in r["rows"]:
        by.setdefault(row["name"], []).append(row)

    def med(runs: list[dict[str, Any]], f: Any) -> float:
        return float(statistics.median(f(x) for x in runs))

    def first(x: dict[str, Any]) -> float:
        return x["epochs"][0]["samples"] / x["epochs"][0]["seconds"]

    def steady(x: dict[str, Any]) -> float:
        return float(statistics.median(e["samples"] / e["seconds"] for e in x["epochs"][1:]))

    def rate(e: dict[str, Any]) -> float:
        return e["hits"] / max(e["hits"] + e["misses"], 1)

    base = by["no cache"]
    for name, runs in by.items():
        hits = " ".join(
            f"{med(runs, lambda x, i=i: rate(x['epochs'][i])):.0%}" for i in range(epochs)
        )
        f, st = med(runs, first), med(runs, steady)
        lines.append(
            f"| {name} | {'-' if name == 'no cache' else hits} | {f:,.0f} "
            f"| {f / med(base, first):.2f} | {st:,.0f} | {st / med(base, steady):.2f} "
            f"| {med(runs, lambda x: x['loader_cores']):.2f} + "
            f"{med(runs, lambda x: x['node_cores']):.2f} + "
            f"{med(runs, lambda x: x['proxy_cores']):.2f} |"
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
    ap.add_argument("--samples", type=int, default=4000)
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
