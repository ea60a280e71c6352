"""Writes a small stand-in for ADE20k (ADEChallengeData2016) with its layout:
``DEST/images/{training,validation}/ADE_*.jpg`` and the masks,
``DEST/annotations/{training,validation}/ADE_*.png`` (one class index a pixel,
0 the background), plus ``DEST/classes.txt`` (the name of each index). Each
image shows one shape; its mask holds the shape's pixels, valued by shape.

    python make_standin.py /tmp/ade20k-standin --train 400 --val 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from crs4_cassandra.testing import SHAPES, shapes_scene


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dest")
    ap.add_argument("--classes", type=int, default=3, help="shape classes (besides background)")
    ap.add_argument("--train", type=int, default=400, help="training images")
    ap.add_argument("--val", type=int, default=100, help="validation images")
    ap.add_argument("--size", type=int, default=48, help="image side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    root = Path(args.dest)
    shapes = SHAPES[: args.classes]
    for split, prefix, n in (("training", "train", args.train), ("validation", "val", args.val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            k = int(rng.integers(len(shapes)))
            img, mask = shapes_scene(
                rng, [shapes[k]], (args.size, args.size), noise=12.0, mask_values=[k + 1]
            )
            name = f"ADE_{prefix}_{i + 1:08d}"
            img.save(root / "images" / split / f"{name}.jpg", quality=90)
            assert mask is not None
            Image.fromarray(mask).save(root / "annotations" / split / f"{name}.png")
    (root / "classes.txt").write_text("\n".join(["background", *shapes]) + "\n")
    print(f"wrote {root} ({len(shapes)} shape classes + background)")


if __name__ == "__main__":
    main()
