"""Random patches from chunked arrays: crs4_cassandra.arrays (the local store,
and Apache Cassandra behind toxiproxy at 0 and 50 ms of added latency)
against zarr-python (v3, local directory store) and tensorstore (zarr3 driver
over a local file kvstore), on the same data, in the same run.

Two arrays: a 2-D RGB image (N, N, 3) uint8 in chunks of 512x512x3, read as
random 256x256 patches, and a volume S^3 uint8 in chunks of 128^3, read as
random 64^3 patches; every system stores the same chunks, compressed with zstd
level 3. The content is a smooth gradient plus noise, different in every
chunk, so that zstd compresses it, but not trivially (to about 75-80%: zstd
does no prediction across pixels). Each system writes it once, a chunk row at
a time.

Two ways of reading:

- one patch at a time, one call after another (``arr[y:y+256, x:x+256]``,
  ``ts[...].read().result()``): what a user writes first;
- concurrent, in batches of 32: ``PatchDataset`` for crs4_cassandra (the
  loader users train with: its reads are prefetched by the fetch engine), a
  pool of 8 threads for zarr, tensorstore's asynchronous ``.read()`` futures
  (the reads of the next batch are issued before the current one is waited
  for, in both; the 32 patches are stacked into one batch array, as the
  PatchDataset delivers them). The PatchDataset reads and decodes a chunk
  once for all the patches of a batch that need it, tensorstore once for the
  concurrent reads that need it, zarr once per patch: where an array has few
  chunks (the 512^3 volume has 64) this sharing weighs much.

Patch positions are PatchDataset's (uniform, seeded, drawn from (seed, epoch,
slot) and read back with ``locate``); every reader reads the same ones, run
``r`` reading epoch ``r`` (a reader that runs out of time reads a prefix; the
PatchDataset reads the epoch's slots in its shuffled order). A run is one
epoch of ``--patches`` patches, stopped after ``--seconds``; figures are
medians over ``--runs`` runs after a warm-up run. Patches read are checked
against the generated content (the first ones of the warm-up run and the last
ones of every run), for every reader.

    python -m bench.arrays [--side 20000] [--volume-side 512] [--runs 3]
                           [--seconds 4] [--patches 2048] [--no-cassandra]
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crs4_cassandra import arrays, open_store
from crs4_cassandra.patches import PatchDataset

from .common import DATA, HERE, cpu_seconds, log, machine, settle, write_json

sys.path.insert(0, str(HERE.parent))
from testbed import Cluster  # noqa: E402

BATCH = 32
ZARR_THREADS = 8
ZSTD_LEVEL = 3
NOISE = 24  # noise values 0..23 on a smooth wave: zstd level 3 keeps about 75-80%
DELAYS_MS = (0, 50)
SEED = 0
# Patches checked against the generated content: the first ones of the
# warm-up run, then the last ones of each run (outside the timing).
CHECK_FIRST = 64
CHECK_LAST = 4

# An epoch's reader yields (patches, origins): a (B, *patch) array or tensor
# and a function giving the B origins (computed only when checked).
Origins = Callable[[], list[tuple[int, ...]]]
Epoch = Callable[[int], Iterator[tuple[Any, Origins]]]


@dataclass(frozen=True)
class Case:
    """One array of the benchmark and its patches."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    patch: tuple[int, ...]  # the leading dimensions; the others are whole

    @property
    def spatial(self) -> int:
        return len(self.patch)

    @property
    def patch_bytes(self) -> int:
        return int(np.prod(self.patch + self.shape[self.spatial :]))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def slices(self, origin: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(o, o + p) for o, p in zip(origin, self.patch, strict=True))


def image_case(side: int) -> Case:
    return Case("img", (side, side, 3), (512, 512, 3), (256, 256))


def volume_case(side: int) -> Case:
    return Case("vol", (side, side, side), (128, 128, 128), (64, 64, 64))


class Content:
    """The array's values, chunk by chunk, from a seed: along each patch
    dimension a smooth wave (its period a few chunks, a phase per channel),
    summed, plus a block of noise picked per chunk from a small pool (every
    chunk is compressed alone, so a repeat across chunks gains zstd nothing).
    Any region can be rebuilt to check what a reader returns."""

    def __init__(self, case: Case, seed: int = SEED) -> None:
        self.case = case
        k = case.spatial
        trailing = case.shape[k:]
        if case.chunks[k:] != trailing:
            raise ValueError("chunks must cover the trailing dimensions whole")
        rng = np.random.default_rng(seed)
        amp = (255 - (NOISE - 1)) // k
        self.grads: list[np.ndarray] = []
        for d in range(k):
            n = case.shape[d]
            period = case.chunks[d] * rng.uniform(3, 10)
            phase = rng.uniform(0, 2 * np.pi, size=trailing)
            i = np.arange(n, dtype=np.float64).reshape((n,) + (1,) * len(trailing))
            wave = amp / 2 * (1 + np.sin(2 * np.pi * i / period + phase))
            self.grads.append(np.clip(wave, 0, amp).astype(np.uint8))
        self.noise = [rng.integers(0, NOISE, size=case.chunks, dtype=np.uint8) for _ in range(7)]

    def block(self, idx: Sequence[int]) -> np.ndarray:
        """The chunk at grid position ``idx`` (of the patch dimensions),
        cropped at the array's edges."""
        c = self.case
        k = c.spatial
        sl = [
            slice(i * ch, min((i + 1) * ch, n))
            for i, ch, n in zip(idx, c.chunks[:k], c.shape[:k], strict=True)
        ]
        pick = sum(i * p for i, p in zip(idx, (1, 3, 5), strict=False)) % len(self.noise)
        out = self.noise[pick][tuple(slice(0, s.stop - s.start) for s in sl)].copy()
        trailing = c.shape[k:]
        for d in range(k):
            g = self.grads[d][sl[d]]
            out += g.reshape((1,) * d + (g.shape[0],) + (1,) * (k - d - 1) + trailing)
        return out

    def region(self, lo: Sequence[int], hi: Sequence[int]) -> np.ndarray:
        """Values of [lo, hi) along the patch dimensions (the others whole)."""
        c = self.case
        k = c.spatial
        out = np.empty(
            [h - low for low, h in zip(lo, hi, strict=True)] + list(c.shape[k:]), np.uint8
        )
        ranges = [
            range(low // ch, (h - 1) // ch + 1)
            for low, h, ch in zip(lo, hi, c.chunks[:k], strict=True)
        ]
        for idx in itertools.product(*ranges):
            b = self.block(idx)
            dst, src = [], []
            for i, low, h, ch in zip(idx, lo, hi, c.chunks[:k], strict=True):
                g0, g1 = max(low, i * ch), min(h, (i + 1) * ch)
                dst.append(slice(g0 - low, g1 - low))
                src.append(slice(g0 - i * ch, g1 - i * ch))
            out[tuple(dst)] = b[tuple(src)]
        return out

    def patch(self, origin: Sequence[int]) -> np.ndarray:
        return self.region(origin, [o + p for o, p in zip(origin, self.case.patch, strict=True)])

    def slabs(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(start, stop, values) of each row of chunks along the first dimension."""
        c = self.case
        k = c.spatial
        for y0 in range(0, c.shape[0], c.chunks[0]):
            y1 = min(y0 + c.chunks[0], c.shape[0])
            yield y0, y1, self.region((y0,) + (0,) * (k - 1), (y1,) + c.shape[1:k])


# Writers: (start, stop, values of that row of chunks) -> None.
Writer = Callable[[int, int, np.ndarray], None]


def write_all(
    content: Content, writers: dict[str, Writer], cl: Cluster | None = None
) -> dict[str, Any]:
    """Writes the array into every system, a row of chunks at a time (the
    values made once per row), timing each system's writes alone."""
    wall = dict.fromkeys(writers, 0.0)
    cpu = dict.fromkeys(writers, 0.0)
    server = dict.fromkeys(writers, 0.0)
    for y0, y1, slab in content.slabs():
        for name, write in writers.items():
            c0, s0, t0 = cpu_seconds(), cl.cpu_seconds() if cl else 0.0, time.perf_counter()
            write(y0, y1, slab)
            wall[name] += time.perf_counter() - t0
            cpu[name] += cpu_seconds() - c0
            server[name] += (cl.cpu_seconds() if cl else 0.0) - s0
    gb = content.case.nbytes / 1e9
    out = {}
    for name in writers:
        out[name] = {
            "seconds": wall[name],
            "mb_per_s": gb * 1e3 / wall[name],
            "cpu_s_per_gb": cpu[name] / gb,
            "server_cpu_s_per_gb": server[name] / gb if cl else None,
        }
        log(
            f"{content.case.name}: wrote {gb:.2f} GB into {name} in {wall[name]:.1f} s "
            f"({gb * 1e3 / wall[name]:.0f} MB/s)"
        )
    return out


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path``."""
    if path.is_file():
        return path.stat().st_blocks * 512
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


# ---- the systems -----------------------------------------------------------


def zarr_create(root: Path, case: Case) -> Any:
    import zarr
    from zarr.codecs import ZstdCodec

    return zarr.create_array(
        store=str(root / f"{case.name}.zarr"),
        shape=case.shape,
        chunks=case.chunks,
        dtype="uint8",
        compressors=ZstdCodec(level=ZSTD_LEVEL),
        fill_value=0,
        zarr_format=3,
        overwrite=True,
    )


def ts_spec(root: Path, case: Case) -> dict[str, Any]:
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(root / f"{case.name}.ts")},
    }


def ts_create(root: Path, case: Case) -> Any:
    import tensorstore as ts

    spec = ts_spec(root, case)
    spec["metadata"] = {
        "shape": list(case.shape),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(case.chunks)}},
        "chunk_key_encoding": {"name": "default"},
        "data_type": "uint8",
        "fill_value": 0,
        "codecs": [
            {"name": "bytes"},
            {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}},
        ],
    }
    spec["create"] = True
    spec["delete_existing"] = True
    return ts.open(spec).result()


def crs4_create(store: Any, case: Case) -> arrays.Array:
    return arrays.create(
        store,
        case.name,
        shape=case.shape,
        dtype="uint8",
        chunks=case.chunks,
        compression="zstd",
        level=ZSTD_LEVEL,
        overwrite=True,
    )


# ---- readers -----------------------------------------------------------------


def given(origins: list[tuple[int, ...]]) -> Origins:
    return lambda: origins


def located(ds: PatchDataset, b: Any) -> Origins:
    """The origins of a PatchDataset batch's patches (from its slots)."""
    return lambda: [tuple(ds.locate(b.epoch, i)[1]) for i in b.indices.tolist()]


def ts_read(t: Any) -> Callable[[tuple[slice, ...]], Any]:
    return lambda s: t[s].read().result()


def ts_future(t: Any) -> Callable[[tuple[slice, ...]], Any]:
    return lambda s: t[s].read()


def pool_read(pool: ThreadPoolExecutor, z: Any) -> Callable[[tuple[slice, ...]], Any]:
    return lambda s: pool.submit(z.__getitem__, s)


def sequential(
    read_one: Callable[[tuple[slice, ...]], Any],
    case: Case,
    positions: list[list[tuple[int, ...]]],
) -> Epoch:
    """One patch at a time, one call after another."""

    def epoch(e: int) -> Iterator[tuple[Any, Origins]]:
        for o in positions[e]:
            yield read_one(case.slices(o))[None], given([o])

    return epoch


def pipelined(
    submit: Callable[[tuple[slice, ...]], Any], case: Case, positions: list[list[tuple[int, ...]]]
) -> Epoch:
    """Batches of BATCH patches read concurrently: ``submit`` starts a read and
    returns a future; the next batch's reads are issued before the current
    batch is waited for; a batch is stacked into one array."""

    def epoch(e: int) -> Iterator[tuple[Any, Origins]]:
        pos = positions[e]
        starts = iter(range(0, len(pos), BATCH))
        pending: deque[tuple[list[tuple[int, ...]], list[Any]]] = deque()

        def issue() -> None:
            s = next(starts, None)
            if s is not None:
                origins = pos[s : s + BATCH]
                pending.append((origins, [submit(case.slices(o)) for o in origins]))

        issue()
        try:
            while pending:
                origins, futures = pending.popleft()
                issue()
                yield np.stack([f.result() for f in futures]), given(origins)
        finally:  # stopped early: cancel what was issued, wait for what runs
            for _, futures in pending:
                for f in futures:
                    f.cancel()
            for _, futures in pending:
                for f in futures:
                    try:
                        f.result()
                    except BaseException:  # noqa: B036 (cancelled: any kind)
                        pass

    return epoch


def patch_dataset(store: Any, case: Case, per_epoch: int) -> Epoch:
    """crs4_cassandra's PatchDataset, a fresh one each run (so that no run
    finds the next epoch read ahead by the one before)."""

    def epoch(e: int) -> Iterator[tuple[Any, Origins]]:
        ds = PatchDataset(store, [case.name], case.patch, per_epoch=per_epoch, batch_size=BATCH)
        ds.set_epoch(e)
        it = iter(ds)
        try:
            for b in it:
                yield b.images, located(ds, b)
        finally:
            it.close()  # type: ignore[attr-defined]
            ds.close()

    return epoch


def positions_of(
    store: Any, case: Case, per_epoch: int, epochs: int
) -> list[list[tuple[int, ...]]]:
    """PatchDataset's patch positions of each epoch, slot by slot."""
    ds = PatchDataset(store, [case.name], case.patch, per_epoch=per_epoch, batch_size=BATCH)
    out = [[tuple(ds.locate(e, i)[1]) for i in range(per_epoch)] for e in range(epochs)]
    ds.close()
    return out


def check(label: str, content: Content, data: Any, origins: Origins, limit: int) -> int:
    """Compares up to ``limit`` patches with the generated values; returns how many."""
    arr = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
    n = 0
    for k, o in enumerate(origins()[:limit]):
        want = content.patch(o)
        if arr[k].shape != want.shape or not np.array_equal(arr[k], want):
            bad = int((arr[k] != want).sum()) if arr[k].shape == want.shape else -1
            raise AssertionError(
                f"{label}: the patch at {o} differs from what was written "
                f"({bad} of {want.size} values; shape {arr[k].shape} vs {want.shape})"
            )
        n += 1
    return n


def timed(
    label: str,
    epoch: Epoch,
    content: Content,
    runs: int,
    seconds: float,
    cl: Cluster | None = None,
) -> dict[str, Any]:
    """Runs ``epoch(r)`` for r = 0 (warm-up) .. runs, each until its end or
    ``seconds``; rates and CPU per GB of patches delivered (the loader's, and
    Cassandra's and toxiproxy's with ``cl``)."""
    case = content.case
    per_run: dict[str, list[float]] = {
        k: [] for k in ("patches_per_s", "mb_per_s", "cpu_s_per_gb", "patches", "seconds")
    }
    if cl is not None:
        per_run["server_cpu_s_per_gb"] = []
        per_run["toxiproxy_cpu_s_per_gb"] = []
    checked = 0
    for r in range(runs + 1):
        it = epoch(r)
        n = 0
        last = None
        c0, t0 = cpu_seconds(), time.perf_counter()
        s0, x0 = (cl.cpu_seconds(), cl.toxiproxy.cpu_seconds()) if cl is not None else (0.0, 0.0)
        try:
            for data, origins in it:
                n += len(data)
                last = (data, origins)
                if r == 0 and checked < CHECK_FIRST:
                    checked += check(label, content, data, origins, CHECK_FIRST - checked)
                dt = time.perf_counter() - t0
                if dt >= seconds:
                    break
            dt = time.perf_counter() - t0
            cpu = cpu_seconds() - c0
            s1, x1 = (
                (cl.cpu_seconds(), cl.toxiproxy.cpu_seconds()) if cl is not None else (0.0, 0.0)
            )
        finally:
            it.close()  # type: ignore[attr-defined]
        if last is None:
            raise AssertionError(f"{label}: epoch {r} delivered no patch")
        checked += check(label, content, last[0], last[1], CHECK_LAST)
        gb = n * case.patch_bytes / 1e9
        log(
            f"{case.name} {label}: run {r}/{runs}{' (warm-up)' if r == 0 else ''}: "
            f"{n} patches in {dt:.2f} s, {n / dt:,.0f} patches/s, {gb * 1e3 / dt:,.0f} MB/s, "
            f"CPU {cpu / gb:.1f} s/GB"
            + (
                f", Cassandra {(s1 - s0) / gb:.1f} s/GB, toxiproxy {(x1 - x0) / gb:.1f} s/GB"
                if cl
                else ""
            )
        )
        if r == 0:
            continue
        per_run["patches_per_s"].append(n / dt)
        per_run["mb_per_s"].append(gb * 1e3 / dt)
        per_run["cpu_s_per_gb"].append(cpu / gb)
        per_run["patches"].append(n)
        per_run["seconds"].append(dt)
        if cl is not None:
            per_run["server_cpu_s_per_gb"].append((s1 - s0) / gb)
            per_run["toxiproxy_cpu_s_per_gb"].append((x1 - x0) / gb)
    row: dict[str, Any] = {"reader": label, "checked_patches": checked, "runs": per_run}
    for k, v in per_run.items():
        row[k] = statistics.median(v)
    return row


# ---- the benchmark -----------------------------------------------------------


def run(
    side: int = 20000,
    volume_side: int = 512,
    runs: int = 3,
    seconds: float = 4.0,
    patches: int = 2048,
    cassandra: bool = True,
) -> dict[str, Any]:
    import tensorstore as ts
    import zarr

    cases = [image_case(side), volume_case(volume_side)]
    contents = {c.name: Content(c) for c in cases}
    result: dict[str, Any] = {
        "machine": machine(),
        "batch_size": BATCH,
        "zarr_threads": ZARR_THREADS,
        "zstd_level": ZSTD_LEVEL,
        "runs": runs,
        "seconds": seconds,
        "patches_per_epoch": patches,
        "delays_ms": list(DELAYS_MS) if cassandra else [],
        "cases": {
            c.name: {
                "shape": list(c.shape),
                "chunks": list(c.chunks),
                "patch": list(c.patch) + list(c.shape[c.spatial :]),
                "patch_bytes": c.patch_bytes,
                "bytes": c.nbytes,
                "write": {},
                "stored_bytes": {},
                "rows": [],
            }
            for c in cases
        },
    }
    positions: dict[str, list[list[tuple[int, ...]]]] = {}
    DATA.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="arrays-", dir=DATA))
    started = time.perf_counter()
    try:
        local = open_store(f"local:{root / 'crs4'}", create=True)
        with ThreadPoolExecutor(ZARR_THREADS) as pool:
            for case in cases:
                content = contents[case.name]
                out = result["cases"][case.name]
                za, ta, ca = (
                    zarr_create(root, case),
                    ts_create(root, case),
                    crs4_create(local, case),
                )
                before = disk_bytes(root / "crs4")

                def ts_write(y0: int, y1: int, v: np.ndarray, ta: Any = ta) -> None:
                    ta[y0:y1].write(v).result()

                out["write"].update(
                    write_all(
                        content,
                        {"zarr": np_write(za), "tensorstore": ts_write, "crs4 local": np_write(ca)},
                    )
                )
                out["stored_bytes"] = {
                    "zarr": disk_bytes(root / f"{case.name}.zarr"),
                    "tensorstore": disk_bytes(root / f"{case.name}.ts"),
                    "crs4 local": disk_bytes(root / "crs4") - before,
                }
                del za, ta
                # Read through handles opened afresh (tensorstore without a cache pool:
                # its default), as a reading job would.
                zr = zarr.open_array(str(root / f"{case.name}.zarr"), mode="r")
                tr = ts.open(ts_spec(root, case), read=True).result()
                cr = arrays.open(local, case.name)
                positions[case.name] = pos = positions_of(local, case, patches, runs + 1)
                result["cases"][case.name]["positions_sample"] = pos[0][:4]
                readers: list[tuple[str, str, Epoch]] = [
                    ("one at a time", "zarr", sequential(zr.__getitem__, case, pos)),
                    (
                        "one at a time",
                        "tensorstore",
                        sequential(ts_read(tr), case, pos),
                    ),
                    (
                        "one at a time",
                        "crs4_cassandra local",
                        sequential(cr.__getitem__, case, pos),
                    ),
                    (
                        "concurrent",
                        f"zarr, {ZARR_THREADS} threads",
                        pipelined(pool_read(pool, zr), case, pos),
                    ),
                    (
                        "concurrent",
                        "tensorstore async",
                        pipelined(ts_future(tr), case, pos),
                    ),
                    (
                        "concurrent",
                        "crs4_cassandra PatchDataset local",
                        patch_dataset(local, case, patches),
                    ),
                ]
                for mode, label, epoch in readers:
                    row = timed(label, epoch, content, runs, seconds)
                    row["mode"] = mode
                    out["rows"].append(row)
        del local
        if cassandra:
            with Cluster(1, name="arrays", heap="1g") as cl:
                store = open_store(cl.url("arrays"))
                for case in cases:
                    ca = crs4_create(store, case)
                    result["cases"][case.name]["write"].update(
                        write_all(contents[case.name], {"crs4 Cassandra": np_write(ca)}, cl)
                    )
                waited = settle(cl)
                log(f"Cassandra settled after {waited:.0f} s")
                result["cassandra_settle_s"] = waited
                for case in cases:
                    got = positions_of(store, case, patches, runs + 1)
                    if got != positions[case.name]:
                        raise AssertionError(f"{case.name}: PatchDataset positions differ by store")
                for delay in DELAYS_MS:
                    cl.proxies[0].clear()
                    if delay:
                        cl.proxies[0].latency(delay)
                    for case in cases:
                        cr = arrays.open(store, case.name)
                        pos = positions[case.name]
                        for mode, label, epoch in [
                            (
                                "one at a time",
                                f"crs4_cassandra Cassandra +{delay} ms",
                                sequential(cr.__getitem__, case, pos),
                            ),
                            (
                                "concurrent",
                                f"crs4_cassandra PatchDataset Cassandra +{delay} ms",
                                patch_dataset(store, case, patches),
                            ),
                        ]:
                            row = timed(label, epoch, contents[case.name], runs, seconds, cl)
                            row["mode"] = mode
                            row["delay_ms"] = delay
                            result["cases"][case.name]["rows"].append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["total_s"] = time.perf_counter() - started
    for c in cases:
        rows = result["cases"][c.name]["rows"]
        rows.sort(key=lambda r: (r["mode"] != "one at a time", r.get("delay_ms", -1)))
    return result


def np_write(a: Any) -> Writer:
    def w(y0: int, y1: int, v: np.ndarray) -> None:
        a[y0:y1] = v

    return w


def report(r: dict[str, Any]) -> list[str]:
    """The results as a markdown section."""
    lines = [
        "## Random patches from chunked arrays",
        "",
        f"Patches at uniformly random positions (the same for every reader), read back and "
        f"checked; one epoch of {r['patches_per_epoch']:,} patches a run, stopped after "
        f"{r['seconds']:g} s; medians of {r['runs']} runs after a warm-up run. zstd level "
        f"{r['zstd_level']} everywhere; the local files are in the page cache (just written). "
        f"Concurrent: PatchDataset (batch {r['batch_size']}, auto window) for crs4_cassandra, "
        f"{r['zarr_threads']} threads for zarr, async reads for tensorstore, batches of "
        f"{r['batch_size']} with the next one's reads issued before waiting. CPU per GB of "
        "patches delivered; Cassandra and toxiproxy run on the same cores.",
        "",
    ]
    for c in r["cases"].values():
        shape = "x".join(map(str, c["shape"]))
        chunks = "x".join(map(str, c["chunks"]))
        patch = "x".join(map(str, c["patch"]))
        lines += [
            f"### {shape} uint8 ({c['bytes'] / 1e9:.2f} GB), chunks {chunks}, patches {patch} "
            f"({c['patch_bytes'] / 1e3:.0f} KB)",
            "",
            "| mode | reader | patches/s | MB/s | loader CPU s/GB "
            "| Cassandra + toxiproxy CPU s/GB |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in c["rows"]:
            server = (
                f"{row['server_cpu_s_per_gb']:.1f} + {row['toxiproxy_cpu_s_per_gb']:.1f}"
                if "server_cpu_s_per_gb" in row
                else ""
            )
            lines.append(
                f"| {row['mode']} | {row['reader']} | {row['patches_per_s']:,.0f} "
                f"| {row['mb_per_s']:,.0f} | {row['cpu_s_per_gb']:.1f} | {server} |"
            )
        lines += [
            "",
            "| writer | MB/s | CPU s/GB | stored / raw |",
            "|---|---:|---:|---:|",
        ]
        for w, v in c["write"].items():
            stored = c["stored_bytes"].get(w)
            ratio = f"{stored / c['bytes']:.0%}" if stored else ""
            cpu = f"{v['cpu_s_per_gb']:.1f}"
            if v.get("server_cpu_s_per_gb") is not None:
                cpu += f" + Cassandra {v['server_cpu_s_per_gb']:.1f}"
            lines.append(f"| {w} | {v['mb_per_s']:,.0f} | {cpu} | {ratio} |")
        lines.append("")
    lines.append(f"Machine: {r['machine']}; the whole run took {r['total_s'] / 60:.1f} min.")
    lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--side", type=int, default=20000, help="the image is SIDE x SIDE x 3")
    ap.add_argument("--volume-side", type=int, default=512, help="the volume is SIDE^3")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per reader (median)")
    ap.add_argument("--seconds", type=float, default=4.0, help="a run stops after this long")
    ap.add_argument("--patches", type=int, default=2048, help="patches per epoch (a run)")
    ap.add_argument("--no-cassandra", action="store_true", help="the local systems only")
    args = ap.parse_args()
    r = run(
        args.side, args.volume_side, args.runs, args.seconds, args.patches, not args.no_cassandra
    )
    out = write_json("arrays", r)
    log(f"wrote {out}")
    print("\n".join(report(r)))


if __name__ == "__main__":
    main()
