"""End-to-end demo on the embedded local store: make (or take) an image
folder, ingest it, read an epoch of raw batches, then train a small CNN for an
epoch and evaluate it.

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
from .synthetic import make_image_folder


def decode(batch_samples: list[torch.Tensor], size: int) -> torch.Tensor:
    """JPEG bytes -> float NCHW at size x size, with torchvision's CPU decoder."""
    from torchvision.io import ImageReadMode, decode_image

    imgs = [decode_image(s, mode=ImageReadMode.RGB) for s in batch_samples]
    x = torch.stack(
        [F.interpolate(i[None].float(), size=(size, size), mode="bilinear")[0] for i in imgs]
    )
    return x / 255.0


def small_cnn(classes: int) -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, classes),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workdir", default="demo-data", help="where the images and the store go")
    ap.add_argument("--src", help="an image folder to use instead of a generated one")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=4, help="training epochs")
    ap.add_argument("--size", type=int, default=64, help="training resolution")
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

    # 2. Training: decode on the CPU, a small CNN.
    torch.manual_seed(0)
    model = small_cnn(len(sf.classes))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        model.train()
        t0, seen = time.perf_counter(), 0
        bar = tqdm(DataLoader(train, batch_size=None), desc=f"train epoch {epoch}", unit="batch")
        for b in bar:
            x = decode(b.samples(), args.size)
            assert b.labels is not None
            loss = F.cross_entropy(model(x), b.labels)
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            seen += len(b)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        dt = time.perf_counter() - t0
        print(f"epoch {epoch}: {seen / dt:,.0f} images/s (decode + train)")

    if "val" in sf.names():
        val = ShardedDataset.from_split(store, sf, "val", args.batch_size, shuffle=False)
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for b in DataLoader(val, batch_size=None):
                keep = ~b.is_pad
                assert b.labels is not None
                pred = model(decode(b.samples(), args.size)).argmax(1)
                correct += int((pred[keep] == b.labels[keep]).sum())
                total += int(keep.sum())
        print(f"val accuracy: {correct / total:.3f} on {total} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
