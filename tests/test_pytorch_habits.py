"""What PyTorch users do without reading the docs: DataLoader's defaults,
transforms, channels-first images, indexing a batch, moving it to a device,
pinned memory, looking at one sample, and what a dataset says it is."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from crs4_cassandra import errors

pytestmark = pytest.mark.timeout(120)


def dataset(url: str, uuids: np.ndarray, **kw: object) -> cc.ShardedDataset:
    return cc.ShardedDataset(url, "shapes", uuids, 8, seed=3, **kw)  # type: ignore[arg-type]


def indices(batches: list[cc.Batch]) -> list[list[int]]:
    return [b.indices.tolist() for b in batches]


def test_dataloader_defaults_pass_whole_batches_on(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    want = indices(list(DataLoader(dataset(url, all_uuids), batch_size=None)))
    for workers in (0, 2):
        got = list(DataLoader(dataset(url, all_uuids), num_workers=workers))
        assert all(isinstance(b, cc.Batch) for b in got)
        assert indices(got) == want


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_batch_size_is_refused_with_the_fix(
    local_store: tuple[str, Path], all_uuids: np.ndarray, workers: int
) -> None:
    url, _ = local_store
    loader = DataLoader(dataset(url, all_uuids), batch_size=4, num_workers=workers)
    with pytest.raises(errors.InvalidArgumentError, match=r"batch_size=None"):
        next(iter(loader))


def scale(b: cc.Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
    assert b.images is not None and b.labels is not None
    return b.images.float() / 255, b.labels, b.position


def test_transform_runs_in_the_worker_and_state_still_counts_batches(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    kw = dict(decode="rgb", size=(16, 12), layout="NCHW")
    plain = list(dataset(url, all_uuids, **kw))
    ds = dataset(url, all_uuids, transform=scale, **kw)
    got = list(DataLoader(ds, batch_size=None, num_workers=2))
    assert len(got) == len(plain) == len(ds)
    for (x, y, _), b in zip(sorted(got, key=lambda t: t[2]), plain, strict=True):
        assert b.images is not None
        assert x.shape == (len(b), 3, 16, 12) and x.dtype == torch.float32
        assert torch.equal(x, b.images.float() / 255) and torch.equal(y, b.labels)
    # Without workers the dataset records what it yielded, transformed or not.
    it = iter(ds)
    next(it), next(it)
    assert ds.state_dict()["consumed_samples"] == 16
    with pytest.raises(errors.InvalidArgumentError, match="transform"):
        dataset(url, all_uuids, transform="not a function")


def test_nchw_is_a_view_of_the_nhwc_pixels(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    nhwc = next(iter(dataset(url, all_uuids, decode="rgb", size=(16, 12))))
    nchw = next(iter(dataset(url, all_uuids, decode="rgb", size=(16, 12), layout="NCHW")))
    assert isinstance(nhwc.images, torch.Tensor) and isinstance(nchw.images, torch.Tensor)
    assert nhwc.images.shape == (8, 16, 12, 3) and nchw.images.shape == (8, 3, 16, 12)
    assert torch.equal(nchw.images, nhwc.images.permute(0, 3, 1, 2))
    assert nchw.images.is_contiguous(memory_format=torch.channels_last)
    # Without a size: one (3, H, W) tensor per image.
    ragged = next(iter(dataset(url, all_uuids, decode="rgb", layout="NCHW")))
    assert isinstance(ragged.images, list) and all(t.shape[0] == 3 for t in ragged.images)
    with pytest.raises(ValueError, match="layout"):
        dataset(url, all_uuids, layout="NCHW")
    with pytest.raises(ValueError, match="layout"):
        dataset(url, all_uuids, decode="rgb", layout="CHW")


def test_a_batch_indexes_moves_and_pins(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    b = next(iter(dataset(url, all_uuids, decode="rgb", size=(16, 12))))
    assert len(b) == 8
    s = b[3]
    assert bytes(s.data.numpy()) == bytes(b.samples()[3].numpy())
    assert s.label == int(b.labels[3]) and s.id == b.ids[3] and s.list_index == int(b.indices[3])
    assert s.image is not None and torch.equal(s.image, b.images[3])  # type: ignore[index]
    assert b[-1].id == b.ids[-1]
    with pytest.raises(IndexError):
        b[8]
    moved = b.to("cpu", non_blocking=True)
    assert torch.equal(moved.data, b.data) and moved.position == b.position
    if torch.cuda.is_available():
        pinned = b.pin_memory()
        assert pinned.data.is_pinned() and torch.equal(pinned.data, b.data)
        on_gpu = pinned.to("cuda", non_blocking=True)
        assert on_gpu.data.is_cuda and torch.equal(on_gpu.data.cpu(), b.data)
        batch = next(iter(DataLoader(dataset(url, all_uuids), batch_size=None, pin_memory=True)))
        assert batch.data.is_pinned()


def test_store_get_reads_one_sample(local_store: tuple[str, Path], all_uuids: np.ndarray) -> None:
    url, _ = local_store
    b = next(iter(dataset(url, all_uuids)))
    st = cc.open_store(url)
    for key in (b.ids[0], str(b.ids[0]), b.ids[0].bytes):
        label, data = st.get("shapes", key)
        assert label == int(b.labels[0]) and data == bytes(b.samples()[0].numpy())
    ghost = uuid.uuid4()
    with pytest.raises(errors.SampleNotFoundError, match=str(ghost)):
        st.get("shapes", ghost)
    with pytest.raises(ValueError, match="not a valid uuid"):
        st.get("shapes", "zzz")


def test_repr_says_what_the_dataset_is(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, rank=1, world_size=2)
    text = repr(ds)
    for part in (url.split(":", 1)[1], "'shapes'", f"samples={len(all_uuids)}", "batch_size=8"):
        assert part in text, text
    assert "rank=1" in text and "world_size=2" in text and f"batches={len(ds)}" in text
