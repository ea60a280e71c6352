"""Peak memory of a full epoch, at two dataset sizes: the loader's own memory
(anonymous RSS above the process's baseline) must stay under its memory budget
plus a fixed overhead, whatever the dataset size. File-backed pages of the local
store's memory map are the page cache, shared and reclaimable, and are reported
apart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .common import HERE, log

CHILD = r"""
import json, sys, threading, time
import numpy as np
import crs4_cassandra as cc

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out

url, table, split, tile, budget, batch = sys.argv[1:7]
sf = cc.SplitFile.load(split)
uuids = np.tile(sf.uuids("train"), (int(tile), 1))
ds = cc.ShardedDataset(
    url, table, uuids, int(batch), memory_budget=int(budget), allow_repeats=True
)
base = status()
peak = dict(base)
stop = False
def sample():
    while not stop:
        s = status()
        for k in s:
            peak[k] = max(peak[k], s[k])
        time.sleep(0.005)
t = threading.Thread(target=sample, daemon=True)
t.start()
n = 0
for b in ds:
    n += len(b)
stop = True
t.join()
print(json.dumps({"samples": n, "anon_growth": peak["RssAnon"] - base["RssAnon"],
                  "file_peak": peak["RssFile"]}))
"""


def measure(
    url: str, table: str, split: Path, tile: int, budget: int, batch: int
) -> dict[str, int]:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, url, table, str(split), str(tile), str(budget), str(batch)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(folder: Path, budget: int = 64 << 20, batch: int = 128) -> dict[str, object]:
    from crs4_cassandra.ingest import ingest_folder

    from .local_read import build_store

    sys.path.insert(0, str(HERE.parent))
    from testbed import Cluster

    rows = []
    url, split = build_store(folder)
    for tile in (2, 20):
        m = measure(url, "bench", split, tile, budget, batch)
        rows.append({"store": "local", "tile": tile, **m})
        log(f"local, x{tile}: {m}")
    with Cluster(1, name="memory", heap="1g") as cl:
        curl = cl.direct_url("mem")
        cache = HERE / "data" / "mem.split"
        ingest_folder(folder, curl, "data", val_frac=0.0, split_file=cache, progress=False)
        for tile in (2, 20):
            m = measure(curl, "data", cache, tile, budget, batch)
            rows.append({"store": "cassandra", "tile": tile, **m})
            log(f"cassandra, x{tile}: {m}")
    return {"budget": budget, "batch_size": batch, "rows": rows}
