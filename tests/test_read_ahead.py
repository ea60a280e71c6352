"""Reading across the epoch boundary: once a dataset has seen two iterations,
it guesses the next epoch (e+1 after e-1 and e, e again after e and e) and
starts reading it while the current one ends. A right guess must give the
same batches as a fresh reader; a wrong one must be dropped without a trace."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from testbed import Proxy

from .conftest import fill_table

pytestmark = pytest.mark.timeout(120)


def epoch_of(ds: cc.ShardedDataset) -> list[tuple[int, list[int]]]:
    return [(b.position, b.indices.tolist()) for b in ds]


def fresh(url: str, uuids: np.ndarray, epoch: int, **kw: object) -> list[tuple[int, list[int]]]:
    ds = cc.ShardedDataset(url, "shapes", uuids, 8, seed=4, **kw)  # type: ignore[arg-type]
    ds.set_epoch(epoch)
    return epoch_of(ds)


@pytest.mark.parametrize("ordered", [True, False])
def test_epochs_read_ahead_are_the_epochs_a_fresh_reader_reads(
    local_store: tuple[str, Path], all_uuids: np.ndarray, ordered: bool
) -> None:
    url = local_store[0]
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=4, ordered=ordered)
    # set_epoch in a loop, then the same epoch again and again.
    for epoch in [0, 1, 2, 3, 3, 3, 4]:
        ds.set_epoch(epoch)
        got = epoch_of(ds)
        want = fresh(url, all_uuids, epoch, ordered=ordered)
        if not ordered:
            got.sort()
            want.sort()
        assert got == want, f"epoch {epoch}"


def test_a_wrong_guess_is_dropped(local_store: tuple[str, Path], all_uuids: np.ndarray) -> None:
    url = local_store[0]
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=4)
    ds.set_epoch(0)
    epoch_of(ds)
    ds.set_epoch(1)
    epoch_of(ds)  # now reading epoch 2 ahead
    ds.set_epoch(7)
    assert epoch_of(ds) == fresh(url, all_uuids, 7)
    # A resume point within the guessed epoch: the guess read it from its start.
    state = ds.state_dict(batches_consumed=5)
    state["epoch"] = 8
    ds.load_state_dict(state)
    resumed = [indices for _, indices in epoch_of(ds)]
    assert resumed == [indices for _, indices in fresh(url, all_uuids, 8)[5:]]
    # Other arguments: a different batch size.
    ds.set_epoch(9)
    epoch_of(ds)
    ds.batch_size = 16
    ds.set_epoch(10)
    got = [(b.position, b.indices.tolist()) for b in ds]
    ds16 = cc.ShardedDataset(url, "shapes", all_uuids, 16, seed=4)
    ds16.set_epoch(10)
    assert got == epoch_of(ds16)


def test_a_broken_off_epoch_keeps_nothing_for_the_next(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url = local_store[0]
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=4)
    for epoch in range(2):
        ds.set_epoch(epoch)
        epoch_of(ds)
    ds.set_epoch(2)
    for i, _ in enumerate(ds):
        if i == 3:
            break
    ds.set_epoch(3)
    assert epoch_of(ds) == fresh(url, all_uuids, 3)


def test_close_stops_the_reads_ahead(local_store: tuple[str, Path], all_uuids: np.ndarray) -> None:
    url = local_store[0]
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=4)
    for epoch in range(2):
        ds.set_epoch(epoch)
        epoch_of(ds)
    assert ds._ahead is not None
    ds.close()
    assert ds._ahead is None
    ds.set_epoch(2)
    assert epoch_of(ds) == fresh(url, all_uuids, 2)


def test_persistent_workers_read_their_next_epoch_ahead(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url = local_store[0]
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 8, seed=4)
    loader = DataLoader(
        ds, batch_size=None, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    want = sorted(fresh(url, all_uuids, 0))
    for _ in range(4):
        assert sorted((b.position, b.indices.tolist()) for b in loader) == want


@pytest.mark.slow
def test_the_next_epoch_is_under_way_before_it_is_asked_for(
    keyspace_url: str, proxy: Proxy
) -> None:
    # With a 300 ms round trip, a first batch within 150 ms can only come from
    # reads issued before the epoch began.
    url = keyspace_url
    uuids, _, _ = fill_table(url, "t", "int", 96)
    proxy.latency(300)
    ds = cc.ShardedDataset(url, "t", uuids, 8, seed=1)

    def first_batch_after(epoch: int) -> float:
        ds.set_epoch(epoch)
        it = iter(ds)
        t0 = time.perf_counter()
        next(it)
        elapsed = time.perf_counter() - t0
        assert 1 + sum(1 for _ in it) == len(ds)
        return elapsed

    assert first_batch_after(0) >= 0.3  # nothing to guess from yet
    first_batch_after(1)
    time.sleep(1.0)  # a validation loop, say
    assert first_batch_after(2) < 0.15
    ds.set_epoch(5)  # a wrong guess: back to a full round trip
    assert first_batch_after(5) >= 0.3


@pytest.mark.slow
def test_epochs_shorter_than_the_window_are_read_several_ahead(
    keyspace_url: str, proxy: Proxy
) -> None:
    # Epochs of 2 batches behind a 300 ms round trip: once the dataset has
    # guessed the pattern, the reads of several epochs are under way at once,
    # so four epochs in a row take about one round trip; reading only the
    # next epoch ahead would cost a round trip per epoch (0.9 s or more for
    # epochs 3 to 5). The bound sits between the two: on 2 shared cores one
    # round trip's worth has come to just over 0.3 s.
    uuids, _, _ = fill_table(keyspace_url, "short", "int", 16)
    proxy.latency(300)
    # A fixed window of 16 batch reads (8 epochs): the tuner may be probing
    # the round trip with a window of 4 just then, which reaches 2 epochs.
    ds = cc.ShardedDataset(keyspace_url, "short", uuids, 8, seed=1, window=16)
    want = {e: fresh_batches(keyspace_url, "short", uuids, e) for e in range(6)}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        assert epoch_of(ds) == want[epoch]
    time.sleep(1.0)
    t0 = time.perf_counter()
    for epoch in (2, 3, 4, 5):
        ds.set_epoch(epoch)
        assert epoch_of(ds) == want[epoch], f"epoch {epoch}"
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.6, f"{elapsed:.2f} s for four epochs"


def fresh_batches(
    url: str, table: str, uuids: np.ndarray, epoch: int
) -> list[tuple[int, list[int]]]:
    ds = cc.ShardedDataset(url, table, uuids, 8, seed=1)
    ds.set_epoch(epoch)
    return epoch_of(ds)
