"""Writes the test images of tests/complete.rs with Pillow, and Pillow's own
decoding of each (`NAME.rgb`: raw RGB, HWC) to compare against.

    python rust/decode/tests/data/make_fixtures.py
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent


def picture(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(11)
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h) + 64], -1)
    rgb = rgb + rng.integers(-20, 20, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def main() -> None:
    img = picture(61, 47)  # not a multiple of the 8x8 / 16x16 blocks
    jpegs = {
        "baseline": (img, {"quality": 90}),
        "baseline444": (img, {"quality": 95, "subsampling": 0}),
        "progressive": (img, {"quality": 90, "progressive": True}),
        "restart": (img, {"quality": 90, "restart_marker_blocks": 1}),
        "gray": (img.convert("L"), {"quality": 90}),
        "cmyk": (img.convert("CMYK"), {"quality": 90}),
    }
    for name, (im, options) in jpegs.items():
        buf = io.BytesIO()
        im.save(buf, "JPEG", **options)
        (HERE / f"{name}.jpg").write_bytes(buf.getvalue())
    pngs = {
        "rgb": img,
        "rgba": img.convert("RGBA"),
        "gray": img.convert("L"),
        "palette": img.convert("P"),
    }
    for name, im in pngs.items():
        buf = io.BytesIO()
        im.save(buf, "PNG")
        (HERE / f"{name}.png").write_bytes(buf.getvalue())
    for path in sorted(HERE.glob("*.jpg")) + sorted(HERE.glob("*.png")):
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        path.with_suffix(path.suffix + ".rgb").write_bytes(rgb.tobytes())


if __name__ == "__main__":
    main()
