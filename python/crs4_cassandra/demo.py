"""End-to-end demo on the embedded local store: make (or take) an image
folder, ingest it, read an epoch of raw batches, then train a small CNN on CPU
(Rust-decoded 32x32 images) and evaluate it on the held-out images.

What it prints: the ingest summary; "raw read", the rate at which one epoch of
encoded samples reached Python from the local store (page cache warm); per
training epoch, images/s of decoding plus the training step; and the held-out
accuracy, with chance for comparison (on the generated set of 10 shapes it
reaches about 0.9).

    python -m crs4_cassandra.demo --workdir demo-data [--src /path/to/imagenette2-320]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from . import ShardedDataset, SplitFile, open_store
from .ingest import ingest_folder
from .testing import make_image_folder


def as_input(images: object) -> torch.Tensor:
    """The Rust decoder's uint8 NHWC batch -> float NCHW in [0, 1]."""
    assert isinstance(images, torch.Tensor)
    return images.permute(0, 3, 1, 2).float() / 255.0


def small_cnn(classes: int) -> torch.nn.Module:
    def block(cin: int, cout: int) -> list[torch.nn.Module]:
        return [
            torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(cout),
            torch.nn.ReLU(),
        ]

    return torch.nn.Sequential(
        *block(3, 32),
        torch.nn.MaxPool2d(2),
        *block(32, 64),
        torch.nn.MaxPool2d(2),
        *block(64, 128),
        # Averaged, not maxed: a max over a noisy photo's map picks the noise.
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(128, classes),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="demo-data", help="where the images and the store go")
    ap.add_argument("--src", help="an image folder to use instead of a generated one")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=20, help="training epochs")
    ap.add_argument("--size", type=int, default=32, help="training resolution")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)

    if args.src:
        src = Path(args.src)
    else:
        src = work / "images"
        if not src.exists():
            print(f"generating an image folder in {src} ...", file=sys.stderr)
            make_image_folder(src, classes=10, per_class=60, target_kb=110, seed=0)
    url = f"local:{work / 'store'}"
    split_path = work / "demo.split"
    report = ingest_folder(src, url, "demo", split_file=split_path, overwrite=True)
    print(report.summary())

    store = open_store(url)
    sf = SplitFile.load(split_path)
    train = ShardedDataset.from_split(store, sf, "train", args.batch_size, seed=0)
    # Decoded in Rust (JPEG -> RGB, resized), overlapping the reads.
    size = (args.size, args.size)
    train_rgb = ShardedDataset.from_split(
        store, sf, "train", args.batch_size, seed=0, decode="rgb", size=size
    )

    # 1. Raw delivery: encoded bytes handed to Python, nothing else.
    t0, nbytes, nsamples = time.perf_counter(), 0, 0
    for b in tqdm(DataLoader(train, batch_size=None), desc="read epoch", unit="batch"):
        nbytes += b.data.numel()
        nsamples += len(b)
    dt = time.perf_counter() - t0
    print(
        f"raw read: {nsamples / dt:,.0f} samples/s, {nbytes / dt / 1e6:,.0f} MB/s "
        f"({nsamples} samples, {nbytes / 1e6:.1f} MB in {dt:.2f} s)"
    )

    # 2. Training: a small CNN on CPU.
    torch.manual_seed(0)
    model = small_cnn(len(sf.classes))
    # One-cycle AdamW, as the examples train: learns in a few hundred steps.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1e-2, total_steps=args.epochs * len(train_rgb)
    )
    for epoch in range(args.epochs):
        train_rgb.set_epoch(epoch)
        model.train()
        t0, seen = time.perf_counter(), 0
        loader = DataLoader(train_rgb, batch_size=None)
        # watch() times the loop's waits for batches: the data stall.
        bar = tqdm(train_rgb.watch(loader), total=len(loader), desc=f"train epoch {epoch}")
        for b in bar:
            x = as_input(b.images)
            assert b.labels is not None
            loss = F.cross_entropy(model(x), b.labels)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            seen += len(b)
            if bar.n % 10 == 0:
                now = train_rgb.stats()["current"]
                stall = f", data stall {now['stall']:.0%}" if now else ""
                bar.set_postfix_str(f"loss {loss.item():.3f}{stall}")
        dt = time.perf_counter() - t0
        last = train_rgb.stats()["last"]
        print(
            f"epoch {epoch}: {seen / dt:,.0f} images/s (Rust decode + CPU training step), "
            f"last loss {loss.item():.3f}, data stall {last['stall']:.0%}"
        )

    if "val" in sf.names():
        val = ShardedDataset.from_split(
            store, sf, "val", args.batch_size, shuffle=False, decode="rgb", size=size
        )
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for b in DataLoader(val, batch_size=None):
                keep = ~b.is_pad
                assert b.labels is not None
                pred = model(as_input(b.images)).argmax(1)
                correct += int((pred[keep] == b.labels[keep]).sum())
                total += int(keep.sum())
        print(
            f"val accuracy: {correct / total:.3f} on {total} held-out images "
            f"({len(sf.classes)} classes: chance is {1 / len(sf.classes):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
