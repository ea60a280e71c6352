"""The local sample cache in front of Cassandra: it never changes what is
served (every sample once per epoch, same bytes, labels, order and errors),
it serves later epochs from the local disk, its plan-aware eviction beats
LRU on reshuffled epochs, and its bad cases (another table's samples, a
directory that cannot be written, a cache too small for a sample, a damaged
file) fall back to the store."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import crs4_cassandra as cc
from crs4_cassandra import errors

from .conftest import fill_table

pytestmark = pytest.mark.timeout(180)

N = 120
BATCH = 8


class Table:
    def __init__(
        self, url: str, name: str, seed: int = 0, sizes: tuple[int, int] = (100, 400)
    ) -> None:
        self.url, self.name = url, name
        self.uuids, data, labels = fill_table(url, name, "int", N, seed=seed, sizes=sizes)
        self.data = {bytes(u): d for u, d in zip(self.uuids, data, strict=True)}
        self.labels = {bytes(u): int(lab) for u, lab in zip(self.uuids, labels, strict=True)}
        # What the cache holds of a sample: its label (4 bytes), a 4-byte header, the data.
        self.bytes = sum(8 + len(d) for d in data)


@pytest.fixture
def table(keyspace_url: str) -> Table:
    return Table(keyspace_url, "t")


def cached(url: str, path: Path, size: int | str = 10**9, **more: object) -> cc.Store:
    return cc.open_store(url, cache=f"local:{path}", cache_size=size, **more)  # type: ignore[arg-type]


def read_epoch(ds: cc.ShardedDataset, epoch: int, num_workers: int = 0) -> list[cc.Batch]:
    ds.set_epoch(epoch)
    if num_workers == 0:
        return list(ds)
    loader = DataLoader(
        ds, batch_size=None, num_workers=num_workers, multiprocessing_context="fork"
    )
    return list(loader)


def check(t: Table, batches: list[cc.Batch]) -> list[list[int]]:
    """Asserts every sample once, with its bytes and label; the order served."""
    idx = torch.cat([b.indices[~b.is_pad] for b in batches]).tolist()
    assert sorted(idx) == list(range(N))
    for b in batches:
        for s, uid, label in zip(b.samples(), b.ids, b.labels.tolist(), strict=True):
            assert s.numpy().tobytes() == t.data[uid.bytes], uid
            assert label == t.labels[uid.bytes], uid
    return [b.indices.tolist() for b in batches]


def hits(st: cc.Store) -> tuple[int, int]:
    s = st.read_stats()
    return s["cache_hits"], s["cache_misses"]


def test_same_batches_and_all_hits_once_the_cache_holds_the_table(
    table: Table, tmp_path: Path
) -> None:
    plain = cc.ShardedDataset(table.url, "t", table.uuids, BATCH, seed=5)
    st = cached(table.url, tmp_path / "cache")
    ds = cc.ShardedDataset(st, "t", table.uuids, BATCH, seed=5)
    assert hits(st) == (0, 0)
    for epoch in range(3):
        assert check(table, read_epoch(ds, epoch)) == check(table, read_epoch(plain, epoch))
        if epoch == 0:
            assert hits(st) == (0, N)
    h, m = hits(st)
    assert m == N and h >= 2 * N, (h, m)
    # A store without the cache counts nothing.
    assert hits(cc.open_store(table.url)) == (0, 0)


def test_dataloader_workers_share_one_cache(table: Table, tmp_path: Path) -> None:
    path = tmp_path / "cache"
    st = cached(table.url, path)
    ds = cc.ShardedDataset(st, "t", table.uuids, BATCH, seed=1)
    for epoch in range(2):
        check(table, read_epoch(ds, epoch, num_workers=2))
    # The workers filled it: this process finds every sample there.
    again = cached(table.url, path)
    check(table, read_epoch(cc.ShardedDataset(again, "t", table.uuids, BATCH, seed=1), 2))
    assert hits(again) == (N, 0)


def test_ranks_share_one_cache(table: Table, tmp_path: Path) -> None:
    # Two ranks of one host (here, two stores of one process): each serves
    # its share, and in the next epoch finds the samples the other one read.
    path = tmp_path / "cache"
    stores = [cached(table.url, path) for _ in range(2)]
    ranks = [
        cc.ShardedDataset(st, "t", table.uuids, BATCH, seed=4, rank=r, world_size=2)
        for r, st in enumerate(stores)
    ]
    for epoch in range(2):
        check(table, [b for ds in ranks for b in read_epoch(ds, epoch)])
    h = sum(hits(st)[0] for st in stores)
    m = sum(hits(st)[1] for st in stores)
    # Only epoch 0 missed (later hits include epochs read ahead).
    assert m == N and h >= N, (h, m)


def hit_rate(t: Table, path: Path, policy: str) -> float:
    st = cached(t.url, path, size=t.bytes // 2, cache_policy=policy)
    ds = cc.ShardedDataset(st, "t", t.uuids, BATCH, seed=3, window=2)
    check(t, read_epoch(ds, 0))
    first = hits(st)
    for epoch in range(1, 5):
        check(t, read_epoch(ds, epoch))
    h, m = hits(st)
    h, m = h - first[0], m - first[1]
    return h / (h + m)


def test_plan_aware_eviction_beats_lru_on_reshuffled_epochs(table: Table, tmp_path: Path) -> None:
    # A sample is read once an epoch, so a hit needs it held across the
    # epoch's start: half the table at most. Belady's policy gets near that;
    # LRU keeps the samples read last, due on average an epoch later.
    plan = hit_rate(table, tmp_path / "plan", "plan")
    lru = hit_rate(table, tmp_path / "lru", "lru")
    assert plan > 0.35 and plan > lru + 0.15, (plan, lru)


def test_another_tables_samples_are_never_served(keyspace_url: str, tmp_path: Path) -> None:
    a = Table(keyspace_url, "a", seed=1)
    # Table "b" holds other bytes under the same uuids.
    rng = np.random.default_rng(9)
    raw = _native_store(keyspace_url)
    raw.create_tables("b", "b_metadata", "int", overwrite=True)
    other = [rng.bytes(50) for _ in range(N)]
    raw.put_samples("b", a.uuids.tobytes(), [7] * N, other)
    other_by_id = {bytes(u): d for u, d in zip(a.uuids, other, strict=True)}
    path = tmp_path / "cache"
    st = cached(keyspace_url, path)
    check(a, read_epoch(cc.ShardedDataset(st, "a", a.uuids, BATCH), 0))
    b = cc.ShardedDataset(cached(keyspace_url, path), "b", a.uuids, BATCH)
    for batch in read_epoch(b, 0):
        for s, uid, label in zip(batch.samples(), batch.ids, batch.labels.tolist(), strict=True):
            assert s.numpy().tobytes() == other_by_id[uid.bytes]
            assert label == 7
    assert hits(b.store) == (0, N)
    # The same table read without its labels is another namespace too.
    st3 = cached(keyspace_url, path)
    nolabel = cc.ShardedDataset(st3, "a", a.uuids, BATCH, label_type="none")
    read_epoch(nolabel, 0)
    assert hits(st3) == (0, N)


def _native_store(url: str) -> cc._native.Store:
    return cc._native.open_store(url, create=True)


def test_a_directory_that_cannot_be_written_turns_the_cache_off(
    table: Table, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")
    with pytest.warns(errors.CacheWarning, match=r"a-file/cache is off.*read from the store"):
        st = cached(table.url, blocker / "cache")
    ds = cc.ShardedDataset(st, "t", table.uuids, BATCH)
    for epoch in range(2):
        check(table, read_epoch(ds, epoch))
    assert hits(st) == (0, 0)


def test_a_cache_too_small_for_one_sample_serves_from_the_store(
    table: Table, tmp_path: Path
) -> None:
    st = cached(table.url, tmp_path / "cache", size=50)
    ds = cc.ShardedDataset(st, "t", table.uuids, BATCH)
    for epoch in range(2):
        check(table, read_epoch(ds, epoch))
    # (The next epoch's first reads, read ahead, may count too.)
    h, m = hits(st)
    assert h == 0 and m >= 2 * N, (h, m)
    assert (tmp_path / "cache" / "data.mdb").stat().st_size < 200_000


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 160 KiB tmpfs: a disk that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_stops_the_cache_taking_samples_not_the_reads(
    keyspace_url: str, small_disk: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    t = Table(keyspace_url, "big", sizes=(2000, 4000))  # about 360 KB: more than the disk
    st = cached(t.url, small_disk / "cache", size="1GB")
    ds = cc.ShardedDataset(st, "big", t.uuids, BATCH)
    for epoch in range(3):
        check(t, read_epoch(ds, epoch))
    assert "takes no more samples" in capfd.readouterr().err
    h, m = hits(st)
    assert 0 < h < 2 * N and m > N, (h, m)


FILL = textwrap.dedent(
    """
    import sys, numpy as np
    import crs4_cassandra as cc
    url, path = sys.argv[1], sys.argv[2]
    uuids = np.load(sys.argv[3])
    st = cc.open_store(url, cache="local:" + path, cache_size="1GB")
    n = sum(len(b) for b in cc.ShardedDataset(st, "t", uuids, 8))
    print(n, st.read_stats()["cache_misses"])
    """
)


def fill_in_another_process(t: Table, path: Path, tmp_path: Path) -> None:
    """One epoch read by a process of its own, which then ends."""
    np.save(tmp_path / "uuids.npy", t.uuids)
    out = subprocess.run(
        [sys.executable, "-c", FILL, t.url, str(path), str(tmp_path / "uuids.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(N), str(N)]


def test_a_process_that_ends_leaves_its_last_epoch_cached(table: Table, tmp_path: Path) -> None:
    # A reader alone does not wait for the cache's writer at an epoch's end;
    # the process does before it exits, so nothing it read is lost.
    path = tmp_path / "cache"
    fill_in_another_process(table, path, tmp_path)
    st = cached(table.url, path)
    check(table, read_epoch(cc.ShardedDataset(st, "t", table.uuids, BATCH), 0))
    assert hits(st) == (N, 0)


def test_a_cache_cut_short_by_a_crash_is_rebuilt(table: Table, tmp_path: Path) -> None:
    path = tmp_path / "cache"
    # Filled by another process, which then ends: nothing here maps the file.
    fill_in_another_process(table, path, tmp_path)
    data = path / "data.mdb"
    size = data.stat().st_size
    with data.open("r+b") as f:
        f.truncate(size // 2)
    with pytest.warns(errors.CacheWarning, match="damaged.*cut short.*rebuilt empty"):
        st = cached(table.url, path)
    ds = cc.ShardedDataset(st, "t", table.uuids, BATCH)
    for epoch in range(2):
        check(table, read_epoch(ds, epoch))
    h, m = hits(st)
    assert m == N and h >= N, (h, m)


def test_a_missing_sample_fails_or_is_skipped_as_without_the_cache(
    table: Table, tmp_path: Path
) -> None:
    ghost = uuid.uuid4()
    uuids = np.concatenate([table.uuids, np.frombuffer(ghost.bytes, np.uint8)[None]])
    st = cached(table.url, tmp_path / "cache")
    for epoch in range(2):
        ds = cc.ShardedDataset(st, "t", uuids, BATCH)
        ds.set_epoch(epoch)
        with pytest.raises(errors.SampleNotFoundError, match=str(ghost)):
            list(ds)
    skip = cc.ShardedDataset(st, "t", uuids, BATCH, on_error="skip")
    for epoch in range(3):
        batches = read_epoch(skip, epoch)
        assert skip.skipped == [N]
        served = torch.cat([b.indices[~b.is_pad] for b in batches]).tolist()
        assert sorted(served) == list(range(N))
        for b in batches:
            for s, uid in zip(b.samples(), b.ids, strict=True):
                assert s.numpy().tobytes() == table.data[uid.bytes]


def test_cache_options_are_checked(local_store: tuple[str, Path], tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidArgumentError, match="already local"):
        cc.open_store(local_store[0], cache=f"local:{tmp_path}", cache_size="1GB")
    url = "cassandra://127.0.0.1:1/ks"
    with pytest.raises(errors.InvalidArgumentError, match="needs cache_size"):
        cc.open_store(url, cache=f"local:{tmp_path}")
    with pytest.raises(errors.InvalidArgumentError, match="cache_size"):
        cc.open_store(url, cache=f"local:{tmp_path}", cache_size="lots")
    with pytest.raises(errors.InvalidArgumentError, match="cache_policy"):
        cc.open_store(url, cache=f"local:{tmp_path}", cache_size=10**6, cache_policy="mru")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgumentError, match="local:PATH"):
        cc.open_store(url, cache=str(tmp_path), cache_size="512MiB")


def test_epoch_statistics_count_the_cache(table: Table, tmp_path: Path) -> None:
    st = cached(table.url, tmp_path / "cache")
    ds = cc.ShardedDataset(st, table.name, table.uuids, BATCH, seed=3)
    read_epoch(ds, 0)
    first = ds.stats()["last"]
    assert first["cache_hits"] == 0 and first["cache_misses"] >= N, first
    read_epoch(ds, 1)
    second = ds.stats()["last"]
    # The whole table fits: every sample of the second epoch is a hit, and
    # the node is not asked for any of them.
    assert second["cache_hits"] >= N and second["cache_misses"] == 0, second
    assert sum(n["reads"] for n in second["nodes"].values()) == second["reads"] == 0, second
