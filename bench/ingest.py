"""Ingest throughput: the single-process ingest against the same ingest on a
local Ray cluster, into the local store and into Apache Cassandra, with and
without ``--resize-shorter 256``.

    python -m bench.ingest [--images 2000] [--kb 110] [--runs 1] [--warmup 1] [--ray-cpus 2]
                           [--only local,cassandra] [--transforms none,resize256]

Images/s and MB/s (of source files) per run, and per core: images per second
of CPU the ingest itself used (every process of the machine, less the
Cassandra node's own CPU), the figure to multiply by the cores of more
machines. Writes bench/results/ingest.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crs4_cassandra.ingest import Transform, ingest_folder

from .common import HERE, folder_stats, image_folder, log, machine, write_json

sys.path.insert(0, str(HERE.parent))
from testbed import Cluster  # noqa: E402

TRANSFORMS: dict[str, Transform | None] = {
    "none": None,
    "resize256": Transform(resize_shorter=256),
}


def busy_cpu_seconds() -> float:
    """CPU seconds every process of the machine has used since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    ticks = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def timed(
    run: Callable[[], int], images_bytes: int, server_cpu: Callable[[], float]
) -> dict[str, float]:
    c0, s0, t0 = busy_cpu_seconds(), server_cpu(), time.perf_counter()
    n = run()
    dt = time.perf_counter() - t0
    cpu = (busy_cpu_seconds() - c0) - (server_cpu() - s0)
    return {
        "seconds": dt,
        "images_per_s": n / dt,
        "mb_per_s": images_bytes / dt / 1e6,
        "cores_used": cpu / dt,
        "images_per_core_s": n / cpu if cpu > 0 else float("nan"),
    }


def run(
    folder: Path,
    targets: list[str],
    transforms: list[str],
    runs: int,
    ray_cpus: int,
    warmup: int = 1,
) -> list[dict[str, Any]]:
    import ray

    from crs4_cassandra import ray as cray

    n, mean = folder_stats(folder)
    total = int(n * mean)
    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows: list[dict[str, Any]] = []
    try:
        for target in targets:
            cluster = Cluster(1, name="bench-ingest", heap="1g") if target == "cassandra" else None
            try:
                if cluster is not None:
                    cluster.__enter__()
                for tname in transforms:
                    t = TRANSFORMS[tname]
                    for engine in ("single", "ray"):
                        url = (
                            cluster.direct_url("ingest")
                            if cluster is not None
                            else f"local:{HERE / 'data' / f'ingest-{engine}-{tname}'}"
                        )
                        server = cluster.cpu_seconds if cluster is not None else (lambda: 0.0)

                        def once(engine: str = engine, url: str = url, t: Any = t) -> int:
                            if engine == "single":
                                r = ingest_folder(
                                    folder, url, "bench", val_frac=0.0, overwrite=True,
                                    progress=False, transform=t,
                                )  # fmt: skip
                            else:
                                r = cray.ingest_folder(
                                    folder, url, "bench", val_frac=0.0, overwrite=True,
                                    progress=False, transform=t,
                                )  # fmt: skip
                            return r.written

                        for _ in range(warmup):  # Ray's workers started, imports done
                            once()
                        got = [timed(once, total, server) for _ in range(runs)]
                        med = {k: statistics.median(g[k] for g in got) for k in got[0]}
                        row = {"target": target, "transform": tname, "engine": engine, **med}
                        log(
                            f"{target} {tname} {engine}: {med['images_per_s']:,.0f} images/s, "
                            f"{med['mb_per_s']:.1f} MB/s, {med['cores_used']:.2f} cores, "
                            f"{med['images_per_core_s']:,.0f} images/core-s"
                        )
                        rows.append(row)
            finally:
                if cluster is not None:
                    cluster.__exit__(None, None, None)
    finally:
        ray.shutdown()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| target | transform | engine | images/s | MB/s | cores used | images/core-s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['target']} | {r['transform']} | {r['engine']} | {r['images_per_s']:,.0f} | "
            f"{r['mb_per_s']:.1f} | {r['cores_used']:.2f} | {r['images_per_core_s']:,.0f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--kb", type=float, default=110.0)
    ap.add_argument("--runs", type=int, default=1, help="timed runs (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before them")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--only", default="local,cassandra")
    ap.add_argument("--transforms", default="none,resize256")
    a = ap.parse_args()
    targets = a.only.split(",")
    transforms = a.transforms.split(",")
    for name in transforms:
        if name not in TRANSFORMS:
            raise SystemExit(f"unknown transform {name!r}; known: {list(TRANSFORMS)}")
    folder = image_folder(a.images, a.kb)
    rows = run(folder, targets, transforms, a.runs, a.ray_cpus, a.warmup)
    n, mean = folder_stats(folder)
    write_json(
        "ingest",
        {"machine": machine(), "images": n, "mean_kb": mean / 1e3, "rows": rows},
    )
    print(f"\n{n} images of {mean / 1e3:.0f} KB on {machine()}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
