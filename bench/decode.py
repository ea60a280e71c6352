"""CPU decoding to 224x224 RGB: the Rust decoder of ShardedDataset(decode="rgb")
against torchvision's decode_jpeg in DataLoader workers, libjpeg-turbo's scaled
decoding (through simplejpeg) in DataLoader workers and DALI's CPU decoder, on
the same JPEGs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import crs4_cassandra as cc

from .common import Measure, measure
from .local_read import build_store

SIZE = (224, 224)


def ours_epoch(url: str, split: Path, batch_size: int, size: Any) -> Iterator[tuple[int, int]]:
    ds = cc.ShardedDataset.from_split(url, split, "train", batch_size, decode="rgb", size=size)
    for b in ds:
        n = b.images.numel() if isinstance(b.images, torch.Tensor) else b.data.numel()
        yield len(b), n


def _tv_load(path: str) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms.v2.functional import resize

    img = decode_jpeg(read_file(path), mode=ImageReadMode.RGB)
    return resize(img, list(SIZE), antialias=True)


def _scaled_load(path: str) -> torch.Tensor:
    """libjpeg-turbo decoding at the smallest of its scales (M/8) that keeps
    both sides at or above the target, then the same resize."""
    import simplejpeg
    from torchvision.transforms.v2.functional import resize

    with open(path, "rb") as f:
        rgb = simplejpeg.decode_jpeg(
            f.read(), colorspace="RGB", min_height=SIZE[0], min_width=SIZE[1], min_factor=1
        )
    return resize(torch.from_numpy(rgb).permute(2, 0, 1), list(SIZE), antialias=True)


def _stack(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def torchvision_epoch(
    folder: Path, batch_size: int, workers: int, loader: Callable[[str], torch.Tensor] = _tv_load
) -> Iterator[tuple[int, int]]:
    ds = ImageFolder(str(folder), loader=loader)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=_stack)
    for x, _ in dl:
        yield x.shape[0], x.numel()


def dali_pipeline(folder: Path, batch_size: int, threads: int) -> Any:
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=None)
    def pipe() -> Any:
        jpegs, labels = fn.readers.file(
            file_root=str(folder), random_shuffle=True, name="Reader", pad_last_batch=True
        )
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        return fn.resize(images, resize_x=SIZE[1], resize_y=SIZE[0]), labels

    p = pipe()
    p.build()
    return p


def dali_epoch(it: Any) -> Iterator[tuple[int, int]]:
    for (b,) in it:
        x = b["images"]
        yield x.shape[0], x.numel()
    it.reset()


def run(folder: Path, runs: int, batch_size: int = 128) -> list[Measure]:
    """Each loader gets a warm-up run, then the loaders take turns run after
    run, so that a change in the machine's load affects them alike."""
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    url, split = build_store(folder)
    it = DALIGenericIterator(
        dali_pipeline(folder, batch_size, 2),
        ["images", "labels"],
        reader_name="Reader",
        last_batch_policy=LastBatchPolicy.PARTIAL,
    )
    loaders: list[tuple[str, Callable[[], Iterator[tuple[int, int]]]]] = [
        (
            "crs4_cassandra Rust decoder (224x224)",
            lambda: ours_epoch(url, split, batch_size, SIZE),
        ),
        (
            "torchvision decode_jpeg + resize, DataLoader 2 workers",
            lambda: torchvision_epoch(folder, batch_size, 2),
        ),
        (
            "libjpeg-turbo scaled decode (simplejpeg) + resize, DataLoader 2 workers",
            lambda: torchvision_epoch(folder, batch_size, 2, _scaled_load),
        ),
        ("DALI CPU decoder + resize, 2 threads", lambda: dali_epoch(it)),
        (
            "crs4_cassandra Rust decoder (native size, no resize)",
            lambda: ours_epoch(url, split, batch_size, None),
        ),
    ]
    out = [Measure(name) for name, _ in loaders]
    for r in range(runs):
        for m, (name, epoch) in zip(out, loaders, strict=True):
            one = measure(name, epoch, 1, warmup=1 if r == 0 else 0)
            m.samples += one.samples
            m.gbps += one.gbps
            m.cpu_s_per_gb += one.cpu_s_per_gb
    return out
