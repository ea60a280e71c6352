"""The Rust CPU decoder (ShardedDataset(decode="rgb")) and the torchvision path
(crs4_cassandra.decode.decode_jpeg), checked against Pillow on the same bytes."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from crs4_cassandra import _native
from crs4_cassandra.decode import decode_jpeg
from crs4_cassandra.errors import CorruptSampleError, InvalidArgumentError
from crs4_cassandra.testing import SHAPES, shape_image


def colour(i: int) -> tuple[int, int, int]:
    return ((i * 37) % 200 + 20, (i * 91) % 200 + 20, (i * 13) % 200 + 20)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def pillow_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def write_table(url: str, table: str, blobs: list[bytes]) -> np.ndarray:
    """Writes samples with label = position; returns the uuids."""
    st = _native.open_store(url, create=True)
    st.create_tables(table, f"{table}_metadata", "int", overwrite=True)
    ids = [uuid.uuid4().bytes for _ in blobs]
    st.put_samples(table, b"".join(ids), list(range(len(blobs))), blobs)
    return np.frombuffer(b"".join(ids), dtype=np.uint8).reshape(-1, 16)


@pytest.fixture(scope="module")
def mixed_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, list[bytes]]:
    """JPEGs of assorted sizes and PNGs of each colour mode, label = position."""
    rng = np.random.default_rng(7)
    blobs = []
    for i in range(24):
        size = (int(rng.integers(24, 90)), int(rng.integers(24, 90)))
        blobs.append(encode(shape_image(rng, SHAPES[i % 10], size, noise=10.0), "JPEG"))
    base = shape_image(rng, "star", (40, 30), noise=20.0)
    blobs.append(encode(base, "PNG"))
    blobs.append(encode(base.convert("L"), "PNG"))
    blobs.append(encode(base.convert("RGBA"), "PNG"))
    blobs.append(encode(base.convert("LA"), "PNG"))
    blobs.append(encode(base.convert("P"), "PNG"))
    blobs.append(encode(base.convert("L"), "JPEG"))
    url = f"local:{tmp_path_factory.mktemp('decode') / 'store'}"
    return url, write_table(url, "mixed", blobs), blobs


@pytest.fixture(scope="module")
def solid(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray, list[bytes], int]:
    """Solid-colour JPEGs whose colour encodes the label, and one corrupt sample."""
    blobs = [
        encode(Image.new("RGB", (20 + i % 7, 16 + i % 5), colour(i)), "JPEG") for i in range(40)
    ]
    bad = 17
    blobs[bad] = blobs[bad][: len(blobs[bad]) // 3]
    url = f"local:{tmp_path_factory.mktemp('solid') / 'store'}"
    return url, write_table(url, "solid", blobs), blobs, bad


@pytest.mark.timeout(60)
def test_native_size_matches_pillow(mixed_images: tuple[str, np.ndarray, list[bytes]]) -> None:
    url, ids, blobs = mixed_images
    ds = cc.ShardedDataset(url, "mixed", ids, 8, shuffle=False, decode="rgb")
    seen = 0
    for b in ds:
        assert isinstance(b.images, list) and b.labels is not None
        for img, label in zip(b.images, b.labels.tolist(), strict=True):
            ref = pillow_rgb(blobs[label])
            assert img.dtype == torch.uint8 and tuple(img.shape) == ref.shape
            diff = np.abs(img.numpy().astype(int) - ref.astype(int))
            if blobs[label].startswith(b"\x89PNG"):
                assert diff.max() == 0, f"PNG #{label} differs from Pillow"
            else:
                assert diff.mean() < 1.0, f"JPEG #{label}: mean abs diff {diff.mean():.2f}"
            seen += 1
    assert seen == 32  # 30 samples and 2 pads


@pytest.mark.timeout(60)
def test_resized_batch_is_one_nhwc_tensor(
    mixed_images: tuple[str, np.ndarray, list[bytes]],
) -> None:
    url, ids, blobs = mixed_images
    ds = cc.ShardedDataset(url, "mixed", ids, 10, shuffle=False, decode="rgb", size=(32, 48))
    for b in ds:
        assert isinstance(b.images, torch.Tensor)
        assert b.images.shape == (len(b), 32, 48, 3) and b.images.is_contiguous()
        assert b.labels is not None
        for img, label in zip(b.images, b.labels.tolist(), strict=True):
            ref = np.asarray(
                Image.fromarray(pillow_rgb(blobs[label])).resize((48, 32), Image.BILINEAR)
            )
            diff = np.abs(img.numpy().astype(int) - ref.astype(int)).mean()
            assert diff < 6.0, f"sample #{label}: mean abs diff {diff:.2f} after resize"


@pytest.mark.timeout(60)
def test_corrupt_image_names_uuid_and_table(
    solid: tuple[str, np.ndarray, list[bytes], int],
) -> None:
    url, ids, _, bad = solid
    ds = cc.ShardedDataset(url, "solid", ids, 8, decode="rgb", size=(8, 8))
    with pytest.raises(CorruptSampleError) as info:
        for _ in ds:
            pass
    culprit = str(uuid.UUID(bytes=ids[bad].tobytes()))
    assert info.value.uuid == culprit and info.value.table == "solid"  # type: ignore[attr-defined]
    assert culprit in str(info.value) and "solid" in str(info.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_reports_and_keeps_samples_aligned(
    solid: tuple[str, np.ndarray, list[bytes], int], num_workers: int
) -> None:
    url, ids, blobs, bad = solid
    ds = cc.ShardedDataset(url, "solid", ids, 6, decode="rgb", size=(4, 4), on_error="skip", seed=3)
    served: list[int] = []
    skipped: list[int] = []
    skipped_ids = []
    for b in DataLoader(ds, batch_size=None, num_workers=num_workers):
        assert b.labels is not None and isinstance(b.images, torch.Tensor)
        assert b.images.shape[0] == len(b) == b.labels.shape[0] == b.indices.shape[0]
        real = ~b.is_pad
        served += b.indices[real].tolist()
        skipped += b.skipped.tolist()
        skipped_ids += b.skipped_ids
        # Each image still sits beside its own label (its colour encodes it).
        for img, label in zip(b.images, b.labels.tolist(), strict=True):
            mean = img.float().mean(dim=(0, 1)).numpy()
            assert np.abs(mean - np.array(colour(label))).max() < 4, label
    assert skipped == [bad]
    assert skipped_ids == [uuid.UUID(bytes=ids[bad].tobytes())]
    assert sorted(served + skipped) == list(range(len(blobs)))
    if num_workers == 0:
        assert ds.skipped == [bad]


@pytest.mark.timeout(30)
def test_decode_arguments_are_checked(solid: tuple[str, np.ndarray, list[bytes], int]) -> None:
    url, ids, _, _ = solid
    with pytest.raises(InvalidArgumentError):
        cc.ShardedDataset(url, "solid", ids, 4, decode="bgr")
    with pytest.raises(InvalidArgumentError):
        cc.ShardedDataset(url, "solid", ids, 4, size=(4, 4))
    with pytest.raises(InvalidArgumentError):
        cc.ShardedDataset(url, "solid", ids, 4, decode="rgb", on_error="ignore")
    with pytest.raises(InvalidArgumentError):
        cc.ShardedDataset(url, "solid", ids, 4, decode="rgb", size=(0, 4))


@pytest.mark.timeout(60)
def test_torchvision_decode_matches_pillow(
    mixed_images: tuple[str, np.ndarray, list[bytes]],
) -> None:
    url, ids, blobs = mixed_images
    jpegs = np.array([i for i, b in enumerate(blobs) if b.startswith(b"\xff\xd8")])
    ds = cc.ShardedDataset(url, "mixed", ids[jpegs], 8, shuffle=False)
    n = 0
    for b in ds:
        out = decode_jpeg(b, device="cpu")
        assert b.labels is not None and len(out) == len(b)
        for img, label in zip(out, b.labels.tolist(), strict=True):
            ref = pillow_rgb(blobs[label])
            assert tuple(img.shape) == (3, *ref.shape[:2])
            assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).mean() < 1.0
            n += 1
    assert n == 32  # 25 samples and 7 pads


@pytest.mark.timeout(60)
def test_torchvision_decode_names_the_corrupt_sample(
    solid: tuple[str, np.ndarray, list[bytes], int],
) -> None:
    url, ids, _, bad = solid
    ds = cc.ShardedDataset(url, "solid", ids, 40, shuffle=False)
    batch = next(iter(ds))
    with pytest.raises(CorruptSampleError) as info:
        decode_jpeg(batch, device="cpu", table="solid")
    assert str(uuid.UUID(bytes=ids[bad].tobytes())) in str(info.value)


def truncations() -> tuple[list[bytes], list[tuple[str, bytes]]]:
    """Whole images (JPEG baseline, progressive, with restart markers, grayscale,
    CMYK; PNG RGB and palette) and each cut at 10%, 50%, 90% and just before its
    end marker (JPEG EOI, PNG IEND chunk), with a name for each cut."""
    rng = np.random.default_rng(5)
    base = shape_image(rng, "star", (64, 48), noise=20.0)
    options: list[tuple[str, Image.Image, str, dict[str, object]]] = [
        ("baseline", base, "JPEG", {"quality": 90}),
        ("progressive", base, "JPEG", {"quality": 90, "progressive": True}),
        ("restart", base, "JPEG", {"quality": 90, "restart_marker_blocks": 1}),
        ("gray", base.convert("L"), "JPEG", {}),
        ("cmyk", base.convert("CMYK"), "JPEG", {}),
        ("png", base, "PNG", {}),
        ("palette", base.convert("P"), "PNG", {}),
    ]
    whole, cut = [], []
    for name, img, fmt, kw in options:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        data = buf.getvalue()
        whole.append(data)
        end = 2 if fmt == "JPEG" else 12
        for at in (len(data) // 10, len(data) // 2, len(data) * 9 // 10, len(data) - end):
            cut.append((f"{name}[:{at}]", data[:at]))
    return whole, cut


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [None, (16, 16)])
def test_truncated_images_raise_naming_the_uuid(
    tmp_path: Path, size: tuple[int, int] | None
) -> None:
    whole, cut = truncations()
    for data in whole:  # valid images, as Pillow reads them
        pillow_rgb(data)
    url = f"local:{tmp_path / 'store'}"
    ids = write_table(url, "cut", whole + [data for _, data in cut])
    good = ids[: len(whole)]
    for i, (name, _) in enumerate(cut):
        bad = ids[len(whole) + i]
        ds = cc.ShardedDataset(
            url, "cut", np.stack([good[0], bad, good[1]]), 3, decode="rgb", size=size
        )
        with pytest.raises(CorruptSampleError) as info:
            list(ds)
        culprit = str(uuid.UUID(bytes=bad.tobytes()))
        assert info.value.uuid == culprit, name  # type: ignore[attr-defined]
        assert culprit in str(info.value) and "cut" in str(info.value), name


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [None, (16, 16)])
def test_truncated_images_are_skipped_and_reported(
    tmp_path: Path, size: tuple[int, int] | None
) -> None:
    whole, cut = truncations()
    url = f"local:{tmp_path / 'store'}"
    blobs = whole + [data for _, data in cut]
    ids = write_table(url, "cut", blobs)
    ds = cc.ShardedDataset(url, "cut", ids, 5, decode="rgb", size=size, on_error="skip", seed=1)
    served: list[int] = []
    skipped: list[int] = []
    for b in ds:
        assert b.labels is not None
        served += b.indices[~b.is_pad].tolist()
        skipped += b.skipped.tolist()
        images = list(b.images) if isinstance(b.images, torch.Tensor) else b.images
        assert images is not None
        for img, label in zip(images, b.labels.tolist(), strict=True):
            assert label < len(whole), f"{cut[label - len(whole)][0]} was served"
            if size is None:
                ref = pillow_rgb(blobs[label])
                assert np.abs(img.numpy().astype(int) - ref.astype(int)).mean() < 2.0, label
    assert sorted(skipped) == list(range(len(whole), len(blobs)))
    assert sorted(ds.skipped) == sorted(skipped)
    assert sorted(set(served)) == list(range(len(whole)))
