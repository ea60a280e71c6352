"""Writes a small stand-in for imagenette2 with its layout,
``DEST/{train,val}/<wnid>/<wnid>_<n>.JPEG``: each class is a shape (coloured,
on a noisy background) so a small network learns it in seconds.

    python make_standin.py /tmp/imagenette-standin --train-per-class 60 --val-per-class 20
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from crs4_cassandra.testing import SHAPES, shape_image

# Imagenette's classes, in its own order.
WNIDS = (
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888605",
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dest")
    ap.add_argument("--classes", type=int, default=10, help="1..10")
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--val-per-class", type=int, default=40)
    ap.add_argument("--min-size", type=int, default=48, help="smallest image side")
    ap.add_argument("--max-size", type=int, default=80, help="largest image side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    root = Path(args.dest)
    for split, n in (("train", args.train_per_class), ("val", args.val_per_class)):
        for wnid, shape in zip(WNIDS[: args.classes], SHAPES, strict=False):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = rng.integers(args.min_size, args.max_size + 1, size=2)
                img = shape_image(rng, shape, (int(w), int(h)), noise=12.0)
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=90)
                (folder / f"{wnid}_{i:05d}.JPEG").write_bytes(buf.getvalue())
    print(f"wrote {root} ({args.classes} classes)")


if __name__ == "__main__":
    main()
