"""Raw delivery rate from the local store against torchvision's ImageFolder
reading the same files as raw bytes through DataLoader(num_workers=2)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import crs4_cassandra as cc
from crs4_cassandra.ingest import ingest_folder

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


def run(folder: Path, runs: int, batch_size: int = 128) -> list[Measure]:
    url, split = build_store(folder)
    return [
        measure("crs4_cassandra local store", lambda: ours_epoch(url, split, batch_size), runs),
        measure(
            "torchvision ImageFolder (raw bytes, 2 workers)",
            lambda: imagefolder_epoch(folder, batch_size, 2),
            runs,
        ),
    ]
