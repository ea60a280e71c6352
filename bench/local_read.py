"""Raw delivery rate from the local store against torchvision's ImageFolder
reading the same files as raw bytes through DataLoader(num_workers=2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import crs4_cassandra as cc
from crs4_cassandra.ingest import ingest_folder

from . import streaming_read
from .common import DATA, Measure, log, measure


def build_store(folder: Path) -> tuple[str, Path]:
    url = f"local:{DATA / ('store-' + folder.name)}"
    split = DATA / f"{folder.name}.split"
    if not split.exists():
        log(f"ingesting {folder} into {url}")
        ingest_folder(folder, url, "bench", val_frac=0.0, split_file=split, overwrite=True)
    return url, split


def ours_epoch(url: str, split: Path, batch_size: int) -> Iterator[tuple[int, int]]:
    ds = cc.ShardedDataset.from_split(url, split, "train", batch_size, seed=0)
    for b in DataLoader(ds, batch_size=None, num_workers=0):
        yield len(b), b.data.numel()


_MAPPED: dict[str, Any] = {}


def _mapped(path: Path) -> Any:
    """The store's data file mapped once and touched through (as the store's
    own long-lived map is), so that a copy pays no page faults."""
    import mmap

    import numpy as np

    key = str(path)
    if key not in _MAPPED:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        src = np.frombuffer(mm, dtype=np.uint8)
        int(src[::4096].sum())  # fault every page in
        _MAPPED[key] = (mm, src)
    return _MAPPED[key][1]


def memcpy_epoch(url: str, folder: Path, batch_size: int) -> Iterator[tuple[int, int]]:
    """The physical limit of the local store's read: the same bytes (the
    samples' sizes, in a shuffled order, from pseudo-random places of the
    store's page-cached LMDB file, mapped once) copied by ``numpy.copyto``
    into one batch buffer after another, on one core. The store does this
    copy plus its lookups (B-tree, uuid keys) and the batch's bookkeeping."""
    import numpy as np

    sizes = np.array([f.stat().st_size for f in sorted(folder.rglob("*.jpg"))])
    src = _mapped(Path(url.removeprefix("local:")) / "data.mdb")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sizes))
    starts = rng.integers(0, len(src) - int(sizes.max()), size=len(sizes))
    arena = np.empty(int(sizes.max()) * batch_size, dtype=np.uint8)
    for b0 in range(0, len(order), batch_size):
        at = total = 0
        for i in order[b0 : b0 + batch_size]:
            n, o = int(sizes[i]), int(starts[i])
            np.copyto(arena[at : at + n], src[o : o + n])
            at += n
            total += n
        yield min(batch_size, len(order) - b0), total


def _raw(path: str) -> torch.Tensor:
    with open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)


def _keep_list(items: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    return [x for x, _ in items], torch.tensor([y for _, y in items])


def imagefolder_epoch(folder: Path, batch_size: int, workers: int) -> Iterator[tuple[int, int]]:
    ds = ImageFolder(str(folder), loader=_raw)
    dl = DataLoader(
        ds, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=_keep_list
    )
    for xs, _ in dl:
        yield len(xs), sum(x.numel() for x in xs)


def webdataset_shards(folder: Path, per_shard: int = 500) -> list[str]:
    """The same files as WebDataset tar shards (cached under bench/data)."""
    import io
    import tarfile

    out = DATA / f"wds-{folder.name}"
    marker = out / ".complete"
    files = sorted(folder.rglob("*.jpg"))
    if not marker.exists():
        out.mkdir(parents=True, exist_ok=True)
        classes = sorted({f.parent.name for f in files})
        for i in range(0, len(files), per_shard):
            with tarfile.open(out / f"shard-{i // per_shard:05d}.tar", "w") as tar:
                for j, f in enumerate(files[i : i + per_shard]):
                    key = f"{i + j:08d}"
                    for ext, payload in (
                        ("jpg", f.read_bytes()),
                        ("cls", str(classes.index(f.parent.name)).encode()),
                    ):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        marker.write_text("ok")
    return [str(p) for p in sorted(out.glob("shard-*.tar"))]


def _to_tensors(samples: list[tuple[bytes, bytes]]) -> list[torch.Tensor]:
    return [torch.frombuffer(bytearray(jpg), dtype=torch.uint8) for jpg, _ in samples]


def webdataset_epoch(shards: list[str], batch_size: int, workers: int) -> Iterator[tuple[int, int]]:
    import webdataset as wds

    ds = (
        wds.WebDataset(shards, shardshuffle=False, empty_check=False)
        .to_tuple("jpg", "cls")
        .batched(batch_size, collation_fn=_to_tensors, partial=True)
    )
    for xs in DataLoader(ds, batch_size=None, num_workers=workers):
        yield len(xs), sum(x.numel() for x in xs)


def dali_epoch(folder: Path, batch_size: int, threads: int) -> Iterator[tuple[int, int]]:
    import numpy as np
    from nvidia.dali import fn, pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None)
    def files() -> object:
        jpegs, labels = fn.readers.file(
            file_root=str(folder), random_shuffle=True, name="Reader", pad_last_batch=False
        )
        return jpegs, labels

    pipe = files()
    pipe.build()
    total = pipe.epoch_size("Reader")
    seen = 0
    while seen < total:
        jpegs, _ = pipe.run()
        n = min(len(jpegs), total - seen)
        xs = [torch.from_numpy(np.asarray(jpegs[i])) for i in range(n)]
        seen += n
        yield n, sum(x.numel() for x in xs)


def run(folder: Path, runs: int, batch_size: int = 128) -> list[Measure]:
    url, split = build_store(folder)
    shards = webdataset_shards(folder)
    return [
        measure("crs4_cassandra local store", lambda: ours_epoch(url, split, batch_size), runs),
        measure(
            "memcpy of the same bytes from page cache (numpy.copyto, one core)",
            lambda: memcpy_epoch(url, folder, batch_size),
            runs,
        ),
        measure(
            "torchvision ImageFolder (raw bytes, 2 workers)",
            lambda: imagefolder_epoch(folder, batch_size, 2),
            runs,
        ),
        measure(
            "WebDataset tar shards (2 workers)",
            lambda: webdataset_epoch(shards, batch_size, 2),
            runs,
        ),
        measure(
            "DALI fn.readers.file (CPU, 2 threads)", lambda: dali_epoch(folder, batch_size, 2), runs
        ),
        streaming_read.run(folder, runs, batch_size),
    ]
