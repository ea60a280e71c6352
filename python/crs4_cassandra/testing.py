"""Stand-in data for demos, tests, benchmarks and the examples: generated
image datasets, where real ones cannot be downloaded. Not needed to load data.

Images show one coloured shape on a noisy background: the class is the shape,
so a small network learns it. Image sizes follow an ImageNet-like distribution
(around 500x375); the background noise sets the JPEG size (``target_kb``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "diamond",
    "bar",
    "star",
    "halfmoon",
    "frame",
)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":
        pts = []
        for k in range(10):
            a = np.pi / 2 + k * np.pi / 5
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy - rr * np.sin(a)))
        return pts
    raise ValueError(shape)


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, ...]
) -> None:
    """Draws ``shape`` centred at (cx, cy) with radius r."""
    box = (cx - r, cy - r, cx + r, cy + r)
    w = max(2, int(r / 3))
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape in ("triangle", "diamond", "star"):
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)
    elif shape == "cross":
        draw.rectangle((cx - r, cy - w / 2, cx + r, cy + w / 2), fill=fill)
        draw.rectangle((cx - w / 2, cy - r, cx + w / 2, cy + r), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=w)
    elif shape == "bar":
        draw.rectangle((cx - r, cy - r / 4, cx + r, cy + r / 4), fill=fill)
    elif shape == "halfmoon":
        draw.pieslice(box, 0, 180, fill=fill)
    elif shape == "frame":
        draw.rectangle(box, outline=fill, width=w)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def imagenet_like_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) drawn around ImageNet's typical 500x375/375x500."""
    long_side = int(np.clip(rng.normal(500, 60), 300, 800))
    aspect = rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4], p=[0.55, 0.15, 0.1, 0.2])
    if aspect >= 1:
        return long_side, int(long_side / aspect)
    return int(long_side * aspect), long_side


def noise_for_kb(target_kb: float) -> float:
    """Background noise amplitude giving JPEGs of about ``target_kb`` at quality 90
    for ImageNet-like sizes (calibrated on this generator)."""
    # Measured over the ten shapes: about 71 KB + 1.32 KB per unit of noise.
    return float(np.clip((target_kb - 71.0) / 1.32, 1.0, 120.0))


def shape_image(
    rng: np.random.Generator,
    shape: str,
    size: tuple[int, int],
    noise: float,
) -> Image.Image:
    w, h = size
    base = rng.integers(40, 216, size=3)
    grad = np.linspace(-30, 30, w, dtype=np.float32)[None, :, None]
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = base + grad
    img += rng.normal(0.0, noise, size=(h, w, 3)).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    r = rng.uniform(0.18, 0.32) * min(w, h)
    cx = rng.uniform(r, w - r)
    cy = rng.uniform(r, h - r)
    colour = tuple(int(c) for c in (255 - base + rng.integers(-20, 20, size=3)) % 256)
    draw_shape(ImageDraw.Draw(pil), shape, cx, cy, r, colour)
    return pil


def make_image_folder(
    dest: str | os.PathLike[str],
    *,
    classes: int = 10,
    per_class: int = 50,
    target_kb: float = 110.0,
    small: bool = False,
    seed: int = 0,
) -> Path:
    """Writes an ImageFolder layout (``dest/<class>/<n>.jpg``) of shape images.

    ``small`` makes 64x64 images (fast tests); otherwise sizes are ImageNet-like
    and the mean file size is about ``target_kb``.
    """
    if not 1 <= classes <= len(SHAPES):
        raise ValueError(f"classes must be in 1..{len(SHAPES)}")
    root = Path(dest)
    rng = np.random.default_rng(seed)
    noise = 12.0 if small else noise_for_kb(target_kb)
    for shape in SHAPES[:classes]:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = (64, 64) if small else imagenet_like_size(rng)
            img = shape_image(rng, shape, size, noise)
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=90)
            (root / shape / f"{shape}_{i:05d}.jpg").write_bytes(buf.getvalue())
    return root


def shapes_scene(
    rng: np.random.Generator,
    shapes: list[str] | tuple[str, ...],
    size: tuple[int, int],
    noise: float,
    mask_values: list[int] | tuple[int, ...] | None = None,
) -> tuple[Image.Image, np.ndarray | None]:
    """An image with each of ``shapes`` in its own cell of a grid (so shapes do
    not overlap), and, if ``mask_values`` is given, a uint8 (H, W) mask where a
    shape's pixels hold its value and the background 0: the stand-in for
    segmentation (one class a shape) and multilabel (the set of shapes) data."""
    w, h = size
    base = rng.integers(40, 216, size=3)
    grad = np.linspace(-30, 30, w, dtype=np.float32)[None, :, None]
    img = np.empty((h, w, 3), dtype=np.float32)
    img[:] = base + grad
    img += rng.normal(0.0, noise, size=(h, w, 3)).astype(np.float32)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    mask = Image.new("L", (w, h), 0) if mask_values is not None else None
    n = len(shapes)
    cols = int(np.ceil(np.sqrt(n))) if n else 1
    rows = int(np.ceil(n / cols)) if n else 1
    cells = rng.permutation(rows * cols)[:n]
    cw, ch = w / cols, h / rows
    draw = ImageDraw.Draw(pil)
    for k, (shape, cell) in enumerate(zip(shapes, cells, strict=True)):
        r = rng.uniform(0.28, 0.42) * min(cw, ch)
        x0, y0 = (cell % cols) * cw, (cell // cols) * ch
        cx = x0 + rng.uniform(r, max(r, cw - r))
        cy = y0 + rng.uniform(r, max(r, ch - r))
        colour = tuple(int(c) for c in (255 - base + rng.integers(-20, 20, size=3)) % 256)
        draw_shape(draw, shape, cx, cy, r, colour)
        if mask is not None and mask_values is not None:
            draw_shape(ImageDraw.Draw(mask), shape, cx, cy, r, (int(mask_values[k]),))
    return pil, None if mask is None else np.asarray(mask, dtype=np.uint8)
