"""The self-tuning window against fixed windows, each in a fresh process, from
an Apache Cassandra node behind toxiproxy's latency toxic.

Every configuration runs in a new Python process that opens the store,
connects and reads a few epochs one after the other with
``set_epoch`` (as a training loop does), so the first epoch pays what a
fresh job pays (connecting, the first round trips, the window's start) and
is reported on its own; the later ones show the steady state (the
second epoch's reader starts with nothing read ahead and reads the next
epochs ahead while it runs). Per epoch:
samples/s; over the steady epochs: the process's CPU seconds per GB
delivered and the node's and toxiproxy's over the whole process.

Two parts:

- **windows**: the default (auto) against fixed windows of 4, 16 and 64
  batch reads, batch 128, at 0-200 ms, on epochs of 5,000 samples (40
  batches; each configuration once in each of 5 rounds, medians) and of
  20,000 (one round); the configurations' order is rotated from round to
  round and from delay to delay, so that none is always the first after a
  change of delay; besides the ratio of medians, auto against the best
  fixed window of the same round, round by round (configurations of one
  round run minutes apart, so the machine's drift from round to round
  cancels out of these);
- **small epochs**: 800-sample epochs, batch 8 to 512, auto only, at 0 and
  100 ms, each batch size once in each of 3 rounds (medians): the steady
  epochs' rate at 100 ms against 0 ms, and the first epoch's time against
  the time its bytes take at the 0 ms rate.

    python -m bench.tuner [--images 2000] [--kb 110] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    DATA,
    HERE,
    NODE_WARM_UP_S,
    folder_stats,
    image_folder,
    log,
    machine,
    settle,
    warm_up_node,
    write_json,
)

DELAYS_MS = (0, 10, 50, 100, 200)
FIXED = (4, 16, 64)
# (samples per epoch, batch size, delays, epochs per process, rounds)
SHAPES = ((5000, 128, DELAYS_MS, 5, 5), (20000, 128, (0, 100, 200), 4, 1))
SMALL_EPOCH = 800
SMALL_BATCHES = (8, 32, 128, 512)
SMALL_DELAYS_MS = (0, 100)
SMALL_EPOCHS = 10
# Epochs of 2-100 batches in a fresh process swing by tens of percent: each
# batch size runs in this many rounds (in rotated order) and the table shows
# medians.
SMALL_ROUNDS = 3
# Whole epochs after which the steady rate is taken. From the second epoch
# on, the dataset reads the next epochs ahead while the current one runs; the
# second's reader itself starts with nothing read ahead. So the reads of every
# steady epoch fall inside the steady time. Taken from the third, a window
# wider than an epoch got the third epoch read during the (excluded) second
# one: fixed 64 on 5,000-sample epochs read its second epoch at 1,000-1,700
# samples/s and delivered its third at 3,900-54,000.
STEADY_FROM = 1


def child(url: str, uuids_file: str, batch: int, window: int | None, epochs: int) -> None:
    """One configuration, in this (fresh) process: prints a JSON line."""
    import crs4_cassandra as cc

    uuids = np.load(uuids_file)
    t_open = time.perf_counter()
    ds = cc.ShardedDataset(url, "data", uuids, batch, window=window, allow_repeats=True)
    rows = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        n = nbytes = 0
        for b in ds:
            n += len(b)
            nbytes += int(b.data.numel())
        t1 = time.perf_counter()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime
        rows.append(
            {
                "seconds": t1 - t0,
                "samples": n,
                "bytes": nbytes,
                "cpu": cpu,
                "window": ds.current_window,
            }  # fmt: skip
        )
    ds.close()
    print(json.dumps({"epochs": rows, "opened_s": t0 - t_open}))


def run_child(url: str, uuids_file: Path, batch: int, window: int | None, epochs: int) -> Any:
    cmd = [
        sys.executable, "-m", "bench.tuner", "--child", url, str(uuids_file), str(batch),
        str(window or 0), str(epochs),
    ]  # fmt: skip
    out = subprocess.run(
        cmd, cwd=HERE.parent, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(r: Any) -> dict[str, Any]:
    ep = r["epochs"]
    steady = ep[STEADY_FROM:]
    rates = [e["samples"] / e["seconds"] for e in ep]
    gb = sum(e["bytes"] for e in steady) / 1e9
    return {
        "first": rates[0],
        "first_s": ep[0]["seconds"],
        "first_bytes": ep[0]["bytes"],
        # Over all the steady epochs together: an epoch read ahead entirely
        # is delivered in no time, so per-epoch rates of short epochs swing.
        "steady": sum(e["samples"] for e in steady) / sum(e["seconds"] for e in steady),
        "rates": rates,
        "cpu_s_per_gb": sum(e["cpu"] for e in steady) / gb if gb else None,
        "window": ep[-1]["window"],
    }


def measure(cl: Any, url: str, uuids_file: Path, batch: int, window: int | None,
            epochs: int) -> dict[str, Any]:  # fmt: skip
    s0, p0 = cl.cpu_seconds(), cl.toxiproxy.cpu_seconds()
    r = run_child(url, uuids_file, batch, window, epochs)
    out = summarize(r)
    gb = sum(e["bytes"] for e in r["epochs"]) / 1e9
    out["server_cpu_s_per_gb"] = (cl.cpu_seconds() - s0) / gb
    out["proxy_cpu_s_per_gb"] = (cl.toxiproxy.cpu_seconds() - p0) / gb
    return out


def rotated(xs: Any, k: int) -> list[Any]:
    """``xs`` starting at its ``k``-th item (mod its length), wrapping round."""
    k %= len(xs)
    return [*xs[k:], *xs[:k]]


def steady_each_round(m: dict[str, Any]) -> str:
    return " ".join(fmt(x["steady"]) for x in m["runs"] if "steady" in x)


def window_name(window: int | None) -> str:
    return "auto (default)" if window is None else f"fixed {window}"


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A configuration's figures: medians over its rounds that did not fail."""
    ok = [m for m in runs if "steady" in m]
    if not ok:
        return {"failed": runs[-1]["failed"], "runs": runs}
    out: dict[str, Any] = {"runs": runs, "failed_rounds": len(runs) - len(ok)}
    for k in ("first", "first_s", "first_bytes", "steady", "cpu_s_per_gb",
              "server_cpu_s_per_gb", "proxy_cpu_s_per_gb"):  # fmt: skip
        xs = [m[k] for m in ok if m[k] is not None]
        out[k] = statistics.median(xs) if xs else None
    out["window"] = ", ".join(str(m["window"]) for m in ok)
    return out


def run(folder: Path, quick: bool) -> dict[str, Any]:
    sys.path.insert(0, str(HERE.parent))
    from crs4_cassandra.ingest import ingest_folder
    from testbed import Cluster

    n_images, mean = folder_stats(folder)
    shapes = [(n, b, (0, 100), 3, 1) for n, b, _, _, _ in SHAPES[:1]] if quick else SHAPES
    out: dict[str, Any] = {
        "machine": machine(), "images": n_images, "mean_bytes": mean,
        "windows": {}, "small": {}, "rounds": {str(sh[0]): sh[4] for sh in shapes},
    }  # fmt: skip
    with Cluster(1, name="tuner", heap="1g") as cl:
        url = cl.url("tuner")
        report = ingest_folder(folder, url, "data", val_frac=0.0, progress=False)
        assert report.split_file is not None
        base = np.asarray(report.split_file.uuids("train"))
        log(f"waited {settle(cl):.0f} s for the node to finish flushing and compacting")
        # Warm the node (its JIT, its caches) the same for every configuration.
        warm_up_node(url, base, 128)
        files: dict[int, Path] = {}
        for n in {s[0] for s in shapes} | {SMALL_EPOCH}:
            reps = -(-n // len(base))
            files[n] = DATA / f"tuner-{n}.npy"
            np.save(files[n], np.tile(base, (reps, 1))[:n])
        for di, delay in enumerate(sorted({d for s in shapes for d in s[2]})):
            cl.proxies[0].clear()
            if delay:
                cl.proxies[0].latency(delay)
            for n, batch, at, epochs, rounds in shapes:
                if delay not in at:
                    continue
                configs: list[int | None] = [None, *FIXED]
                runs: dict[str, list[dict[str, Any]]] = {}
                for rnd in range(rounds):
                    for window in rotated(configs, rnd + di):
                        name = window_name(window)
                        try:
                            m = measure(cl, url, files[n], batch, window, epochs)
                        except RuntimeError as e:
                            log(f"{n}/{batch} {delay} ms {name}: FAILED {e}")
                            m = {"failed": str(e)[-300:]}
                        runs.setdefault(name, []).append(m)
                        if "steady" in m:
                            log(
                                f"{n}/{batch} {delay:>3} ms {name:<15} round {rnd + 1} "
                                f"first {m['first']:>7,.0f} steady {m['steady']:>7,.0f} "
                                f"window {m['window']} cpu {m['cpu_s_per_gb']:.2f} s/GB"
                            )
                for window in configs:
                    name = window_name(window)
                    out["windows"].setdefault(f"{n}", {}).setdefault(name, {})[delay] = median_of(
                        runs[name]
                    )
            if delay in SMALL_DELAYS_MS:
                small: dict[int, list[dict[str, Any]]] = {}
                for rnd in range(1 if quick else SMALL_ROUNDS):
                    for batch in rotated(SMALL_BATCHES, rnd):
                        m = measure(cl, url, files[SMALL_EPOCH], batch, None, SMALL_EPOCHS)
                        small.setdefault(batch, []).append(m)
                        log(f"{SMALL_EPOCH}/{batch} {delay:>3} ms round {rnd + 1} rates "
                            + " ".join(f"{r:,.0f}" for r in m["rates"]))  # fmt: skip
                for batch in SMALL_BATCHES:
                    out["small"].setdefault(str(batch), {})[delay] = median_of(small[batch])
    return out


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def paired(configs: dict[str, Any], d: int, key: str) -> str:
    """Auto over the best fixed window of the same round, for each round."""
    auto = configs["auto (default)"][d]["runs"]
    fixed = [c[d]["runs"] for k, c in configs.items() if k != "auto (default)"]
    out = []
    for i, a in enumerate(auto):
        best = [f[i][key] for f in fixed if i < len(f) and key in f[i]]
        out.append(f"{a[key] / max(best):.2f}" if key in a and best else "-")
    return " ".join(out)


def with_int_delays(r: dict[str, Any]) -> dict[str, Any]:
    """``r`` with its delays as ints (JSON keeps them as strings)."""

    def conv(by_delay: dict[Any, Any]) -> dict[int, Any]:
        return {int(d): m for d, m in by_delay.items()}

    return {
        **r,
        "windows": {n: {k: conv(c) for k, c in cs.items()} for n, cs in r["windows"].items()},
        "small": {b: conv(c) for b, c in r["small"].items()},
    }


def report(r: dict[str, Any]) -> list[str]:
    r = with_int_delays(r)
    lines = [
        "## Window tuning, fresh processes (Apache Cassandra behind toxiproxy)",
        "",
        f"`python -m bench.tuner`: {r['images']} JPEGs of mean {r['mean_bytes'] / 1000:.0f} KB "
        "repeated into epochs; each configuration in a new process reading epochs one after "
        "the other with set_epoch (5 of 5,000 samples, 4 of 20,000, 10 of 800); samples/s of "
        "the first epoch (connecting included) and over the epochs from the second on "
        f"(steady); the node read for {NODE_WARM_UP_S:.0f} s before timing; the windows' "
        "order rotated from round to round and from delay to delay; one node (1 GiB heap) "
        "and toxiproxy share the 2 cores with the loader. "
        f"{r['machine']}.",
        "",
    ]
    for n, configs in r["windows"].items():
        delays = sorted({d for c in configs.values() for d in c})
        rounds = r.get("rounds", {}).get(n, 1)
        of = f", medians of {rounds} rounds" if rounds > 1 else ", one round"
        lines += [
            f"Epochs of {int(n):,} samples, batch 128: first epoch / steady epochs, samples/s{of}.",
            "",
            "| window | " + " | ".join(f"{d} ms" for d in delays) + " |",
            "|---|" + "---:|" * len(delays),
        ]
        for name, by_delay in configs.items():
            cells = []
            for d in delays:
                m = by_delay.get(d, {})
                cell = "failed" if "failed" in m else f"{fmt(m['first'])} / {fmt(m['steady'])}"
                if m.get("failed_rounds"):
                    cell += f" ({m['failed_rounds']} failed)"
                cells.append(cell)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        ratio, first_ratio, win, cpu, srv, each, first_each = [], [], [], [], [], [], []
        for d in delays:
            auto = configs["auto (default)"].get(d, {})
            fixed = [c[d] for k, c in configs.items() if k != "auto (default)" and "steady" in c[d]]
            if "steady" not in auto or not fixed:
                for row in (ratio, first_ratio, win, cpu, srv, each, first_each):
                    row.append("-")
                continue
            ratio.append(f"{auto['steady'] / max(f['steady'] for f in fixed):.2f}")
            first_ratio.append(f"{auto['first'] / max(f['first'] for f in fixed):.2f}")
            each.append(paired(configs, d, "steady"))
            first_each.append(paired(configs, d, "first"))
            win.append(str(auto["window"]))
            cpu.append(fmt(auto["cpu_s_per_gb"], 2))
            srv.append(
                f"{fmt(auto['server_cpu_s_per_gb'], 1)} + {fmt(auto['proxy_cpu_s_per_gb'], 1)}"
            )
        lines += [
            "| auto / best fixed, steady | " + " | ".join(ratio) + " |",
            "| auto / best fixed, first epoch | " + " | ".join(first_ratio) + " |",
        ]
        if rounds > 1:
            lines += [
                "| auto / best fixed of its round, steady (each round) | "
                + " | ".join(each)
                + " |",
                "| auto / best fixed of its round, first epoch (each round) | "
                + " | ".join(first_each)
                + " |",
            ]
        lines += [
            "| window auto ended with (each round) | " + " | ".join(win) + " |",
            "| auto: loader CPU s/GB (steady) | " + " | ".join(cpu) + " |",
            "| auto: node + toxiproxy CPU s/GB | " + " | ".join(srv) + " |",
            "",
        ]
    if r["small"]:
        lines += [
            f"Epochs of {SMALL_EPOCH} samples, auto, each batch size in a fresh process per "
            "round: samples/s over the epochs from the second on (steady) in each round; "
            "'100 vs 0 ms' is the median steady rate at 100 ms over that at 0 ms; "
            "'first epoch, extra round trips' is the median first epoch's time at 100 ms "
            "minus the time its bytes take at the median steady 0 ms rate, in 100 ms round "
            "trips.",
            "",
            "| batch | 0 ms, steady (each round) | 100 ms, steady (each round) | 100 vs 0 ms "
            "| first epoch, extra round trips |",
            "|---:|---|---|---:|---:|",
        ]
        for batch, by_delay in r["small"].items():
            z, h = by_delay.get(0), by_delay.get(100)
            if z is None or h is None or "steady" not in z or "steady" not in h:
                continue
            extra = (
                h["first_s"] - h["first_bytes"] / (z["steady"] * z["first_bytes"] / SMALL_EPOCH)
            ) / 0.1
            lines.append(
                f"| {batch} | {steady_each_round(z)} | {steady_each_round(h)} | "
                f"{h['steady'] / z['steady']:.0%} | {extra:.1f} |"
            )
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--child", nargs=5, metavar=("URL", "UUIDS", "BATCH", "WINDOW", "EPOCHS"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--kb", type=float, default=110.0)
    ap.add_argument("--quick", action="store_true", help="0 and 100 ms, 5,000-sample epochs only")
    ap.add_argument("--report", type=Path, help="print the report of a saved result and exit")
    args = ap.parse_args()
    if args.report:
        print("\n".join(report(json.loads(args.report.read_text()))))
        return
    if args.child:
        url, uuids, batch, window, epochs = args.child
        child(url, uuids, int(batch), int(window) or None, int(epochs))
        return
    t0 = time.perf_counter()
    r = run(image_folder(args.images, args.kb), args.quick)
    r["minutes"] = (time.perf_counter() - t0) / 60
    write_json("tuner", r)
    print("\n".join(report(r)))
    log(f"took {r['minutes']:.1f} min")


if __name__ == "__main__":
    main()
