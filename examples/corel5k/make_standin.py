"""Writes a small stand-in for Corel-5k with the layout of its common
distribution (Kaggle's parhamsalar/corel5k): ``DEST/images/<n>.jpeg`` and the
label lists ``DEST/train.json`` and ``DEST/test.json``, each
``{"labels": [...], "samples": [{"image_name": ..., "image_labels": [...]}]}``.
Each image shows one to three shapes; its labels are the shapes present.

    python make_standin.py /tmp/corel5k-standin --train 600 --test 150
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from crs4_cassandra.testing import SHAPES, shapes_scene


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dest")
    ap.add_argument("--classes", type=int, default=5, help="shape classes")
    ap.add_argument("--train", type=int, default=600, help="training images")
    ap.add_argument("--test", type=int, default=150, help="test images")
    ap.add_argument("--max-labels", type=int, default=3, help="most shapes in one image")
    ap.add_argument("--size", type=int, default=64, help="image side")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    root = Path(args.dest)
    (root / "images").mkdir(parents=True, exist_ok=True)
    shapes = list(SHAPES[: args.classes])
    serial = 1000
    for split, n in (("train", args.train), ("test", args.test)):
        samples = []
        for _ in range(n):
            k = int(rng.integers(1, args.max_labels + 1))
            present = [shapes[j] for j in sorted(rng.choice(len(shapes), size=k, replace=False))]
            img, _ = shapes_scene(rng, present, (args.size, args.size), noise=12.0)
            name = f"{serial}.jpeg"
            serial += 1
            img.save(root / "images" / name, quality=90)
            samples.append({"image_name": name, "image_labels": present})
        doc = {"labels": shapes, "samples": samples}
        (root / f"{split}.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {root} ({len(shapes)} labels)")


if __name__ == "__main__":
    main()
