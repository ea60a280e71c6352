from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from crs4_cassandra import errors

from .conftest import fill_table

pytestmark = pytest.mark.timeout(120)


def collect(ds: cc.ShardedDataset, num_workers: int = 0) -> list[cc.Batch]:
    return list(DataLoader(ds, batch_size=None, num_workers=num_workers))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(
    local_store: tuple[str, Path], all_uuids: np.ndarray, num_workers: int, drop_last: bool
) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=5, drop_last=drop_last)
    batches = collect(ds, num_workers)
    assert len(batches) == len(ds)
    assert [b.position for b in batches] == list(range(len(ds)))  # plan order
    idx = torch.cat([b.indices[~b.is_pad] for b in batches]).tolist()
    assert len(idx) == len(set(idx))
    n = len(all_uuids)
    if drop_last:
        assert len(idx) == (n // 8) * 8
        assert not any(b.is_pad.any() for b in batches)
    else:
        assert sorted(idx) == list(range(n))
        assert sum(int(b.is_pad.sum()) for b in batches) == len(ds) * 8 - n
    assert all(len(b) == 8 for b in batches)


def test_bytes_labels_and_ids_match_the_source(
    local_store: tuple[str, Path], image_folder: Path
) -> None:
    url, split = local_store
    st = cc.open_store(url)
    meta = {bytes(r[0]): r for r in st.scan_metadata("shapes_metadata")}
    sf = cc.SplitFile.load(split)
    ds = cc.ShardedDataset.from_split(url, sf, "val", 4, shuffle=False)
    seen = 0
    for b in ds:
        for i, (sample, uid) in enumerate(zip(b.samples(), b.ids, strict=True)):
            _, label, label_name, path, _ = meta[uid.bytes]
            assert sample.numpy().tobytes() == (image_folder / path).read_bytes()
            assert int(b.labels[i]) == label
            assert sf.classes[label] == label_name
            assert uid.bytes == sf.uuids("val")[int(b.indices[i])].tobytes()
            seen += 1
    assert seen >= len(sf.uuids("val"))


def test_batches_are_zero_copy_views(local_store: tuple[str, Path], all_uuids: np.ndarray) -> None:
    url, _ = local_store
    b = next(iter(cc.ShardedDataset(url, "shapes", all_uuids, 8)))
    base = b.data.untyped_storage().data_ptr()
    for s, start in zip(b.samples(), b.offsets.tolist(), strict=False):
        assert s.untyped_storage().data_ptr() == base
        assert s.data_ptr() == base + start


def test_same_seed_and_epoch_match_and_epochs_differ(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store

    def order(seed: int, epoch: int) -> list[int]:
        ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=seed)
        ds.set_epoch(epoch)
        return torch.cat([b.indices for b in ds]).tolist()

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert sorted(order(1, 1)[: len(all_uuids)]) == list(range(len(all_uuids)))


def test_ordered_false_serves_the_same_batches(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    ordered = {
        b.position: b.indices.tolist() for b in cc.ShardedDataset(url, "shapes", all_uuids, 4)
    }
    unordered = {
        b.position: b.indices.tolist()
        for b in cc.ShardedDataset(url, "shapes", all_uuids, 4, ordered=False)
    }
    assert ordered == unordered


def test_ranks_partition_the_epoch(local_store: tuple[str, Path], all_uuids: np.ndarray) -> None:
    url, _ = local_store
    seen: list[int] = []
    counts = set()
    for rank in range(3):
        ds = cc.ShardedDataset(url, "shapes", all_uuids, 4, rank=rank, world_size=3, seed=9)
        batches = collect(ds)
        counts.add(len(batches))
        seen += torch.cat([b.indices[~b.is_pad] for b in batches]).tolist()
    assert len(counts) == 1
    assert sorted(seen) == list(range(len(all_uuids)))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_yields_exactly_the_rest(
    local_store: tuple[str, Path], all_uuids: np.ndarray, num_workers: int
) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=3)
    ds.set_epoch(2)
    full = [b.indices.tolist() for b in collect(ds)]

    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=3)
    ds.set_epoch(2)
    taken = []
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers)
    for i, b in enumerate(loader):
        taken.append(b.indices.tolist())
        if i == 4:
            break
    # Without workers the dataset counted what it yielded; with workers the loop passes it.
    state = ds.state_dict() if num_workers == 0 else ds.state_dict(batches_consumed=len(taken))
    del loader

    fresh = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=3)
    fresh.load_state_dict(state)
    assert fresh.epoch == 2
    rest = [b.indices.tolist() for b in collect(fresh, num_workers)]
    assert len(fresh) == len(rest) == len(full) - 5
    assert taken + rest == full


def test_state_from_another_run_is_rejected(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    state = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=3).state_dict()
    for other in (
        cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=4),
        cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=3),
        cc.ShardedDataset(url, "shapes", all_uuids[:-1], 8, seed=3),
    ):
        with pytest.raises(errors.StateDictError, match="belongs to another run"):
            other.load_state_dict(state)


def test_missing_uuid_names_it(local_store: tuple[str, Path], all_uuids: np.ndarray) -> None:
    url, _ = local_store
    ghost = uuid.uuid4()
    uuids = np.concatenate([all_uuids[:10], np.frombuffer(ghost.bytes, np.uint8)[None]])
    ds = cc.ShardedDataset(url, "shapes", uuids, 4, shuffle=False)
    with pytest.raises(errors.SampleNotFoundError) as info:
        for _ in DataLoader(ds, batch_size=None, num_workers=2):
            pass
    assert str(ghost) in str(info.value)
    with pytest.raises(KeyError):  # also a KeyError, as a Python user expects
        list(ds)


def test_bad_arguments_fail_at_construction(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    with pytest.raises(errors.TableNotFoundError, match='"nope".*shapes'):
        cc.ShardedDataset(url, "nope", all_uuids, 8)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="batch_size"):
            cc.ShardedDataset(url, "shapes", all_uuids, bad)
    with pytest.raises(errors.SchemaError, match="label type"):
        cc.ShardedDataset(url, "shapes", all_uuids, 8, label_type="blob")
    with pytest.raises(ValueError, match="label_type"):
        cc.ShardedDataset(url, "shapes", all_uuids, 8, label_type="float")
    with pytest.raises(ValueError, match="not a valid uuid"):
        cc.ShardedDataset(url, "shapes", ["zzz"], 8)
    with pytest.raises(errors.StoreNotFoundError, match="does not exist"):
        cc.open_store("local:/nonexistent/store")
    with pytest.raises(ValueError, match="unsupported store URL"):
        cc.open_store("mongodb://x")


def test_blob_and_none_labels(tmp_path: Path) -> None:
    url = f"local:{tmp_path / 's'}"
    uuids, data, labels = fill_table(url, "masks", "blob", 37)
    ds = cc.ShardedDataset(url, "masks", uuids, 5, label_type="blob", shuffle=False)
    got = 0
    for b in ds:
        assert b.labels is not None and b.labels.dtype == torch.uint8
        for i, (s, lab) in enumerate(zip(b.samples(), b.label_samples(), strict=True)):
            j = int(b.indices[i])
            assert s.numpy().tobytes() == data[j]
            assert lab.numpy().tobytes() == labels[j]
            got += not bool(b.is_pad[i])
    assert got == 37

    uuids, data, _ = fill_table(url, "plain", "none", 11)
    batches = list(cc.ShardedDataset(url, "plain", uuids, 4, label_type="none"))
    assert all(b.labels is None for b in batches)
    # A labelled table can be read without its labels.
    assert all(
        b.labels is None
        for b in cc.ShardedDataset(url, "masks", uuids[:0].copy(), 4, label_type="none")
    )


def test_empty_uuid_list_yields_nothing(local_store: tuple[str, Path]) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", np.zeros((0, 16), np.uint8), 4)
    assert len(ds) == 0 and list(ds) == []


def test_a_local_store_counts_no_hedged_reads(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    store = cc.open_store(local_store[0])
    assert len(list(cc.ShardedDataset(store, "shapes", all_uuids, 8))) > 0
    assert set(store.read_stats()) == {
        "reads", "hedged", "hedges_won", "retries", "timeouts", "slow_nodes",
        "cache_hits", "cache_misses",
    }  # fmt: skip
    assert not any(store.read_stats().values())


def test_breaking_out_early_stops_background_work(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    import os

    url, _ = local_store

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    def abandon(times: int) -> None:
        for _ in range(times):
            it = iter(cc.ShardedDataset(url, "shapes", all_uuids, 2, window=2))
            next(it)
            del it

    abandon(5)  # warm up the shared runtime and its blocking pool
    before = threads()
    abandon(30)
    # Runtime threads are shared; nothing may accumulate per abandoned iterator.
    assert threads() <= before + 4
