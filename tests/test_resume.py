"""Mid-epoch resumption: a state taken in one process and loaded in another
(with DataLoader workers, with ordered=False), torchdata's StatefulDataLoader,
and elastic resumption on a different number of ranks. The union of the runs
is the epoch, every sample exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

import crs4_cassandra as cc
from crs4_cassandra import errors

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent


def real(batches: list[cc.Batch]) -> list[int]:
    return [i for b in batches for i in b.indices[~b.is_pad].tolist()]


def assert_exactly_once(idx: list[int], n: int) -> None:
    dupes = sorted(i for i, c in Counter(idx).items() if c > 1)
    assert not dupes, f"served twice: {dupes[:10]}"
    assert sorted(idx) == list(range(n)), f"missing: {sorted(set(range(n)) - set(idx))[:10]}"


RUN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from torch.utils.data import DataLoader
    import crs4_cassandra as cc

    url, uuids_path, state_path, out_path, ordered, stop = sys.argv[1:7]
    ordered, stop = ordered == "1", int(stop)
    uuids = np.load(uuids_path)
    ds = cc.ShardedDataset(url, "shapes", uuids, 4, seed=7, ordered=ordered)
    resuming = stop < 0
    if resuming:
        ds.load_state_dict(json.load(open(state_path)))
    got, positions = [], []
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    for b in loader:
        got += b.indices[~b.is_pad].tolist()
        positions.append(b.position)
        if len(positions) == stop:
            break
    if not resuming:
        state = (ds.state_dict(batches_consumed=len(positions)) if ordered
                 else ds.state_dict(consumed_positions=positions))
        json.dump(state, open(state_path, "w"))
    json.dump({"got": got, "positions": positions, "len": len(ds)}, open(out_path, "w"))
    """
)


@pytest.mark.parametrize("ordered", [True, False])
def test_state_resumes_in_a_new_process_with_workers(
    local_store: tuple[str, Path], all_uuids: np.ndarray, tmp_path: Path, ordered: bool
) -> None:
    url, _ = local_store
    np.save(tmp_path / "uuids.npy", all_uuids)
    script = tmp_path / "run.py"
    script.write_text(RUN)
    state, out1, out2 = tmp_path / "state.json", tmp_path / "a.json", tmp_path / "b.json"

    def run(out: Path, stop: int) -> dict:
        args = [url, tmp_path / "uuids.npy", state, out, "1" if ordered else "0", str(stop)]
        subprocess.run(
            [sys.executable, str(script), *map(str, args)], check=True, timeout=60, cwd=REPO
        )
        return json.loads(out.read_text())

    first = run(out1, 9)
    saved = json.loads(state.read_text())
    assert saved["version"] == 2 and isinstance(saved["consumed_positions"], list)
    second = run(out2, -1)
    assert_exactly_once(first["got"] + second["got"], len(all_uuids))
    assert len(first["positions"]) + len(second["positions"]) == first["len"]
    assert second["len"] == len(second["positions"])


def test_ordered_false_state_names_the_positions_beyond_the_prefix(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=1, ordered=False)
    # Deliver out of order by construction: consume positions 0, 1, 3, 4 and 6.
    state = ds.state_dict(consumed_positions=[0, 1, 3, 4, 6])
    json.dumps(state)
    prefix = 2 * 4  # positions 0 and 1 of a single rank
    assert state["consumed_samples"] == prefix
    assert state["consumed_positions"] == [1, 2, 4]  # 3, 4, 6 counted from the prefix
    fresh = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=1, ordered=False)
    fresh.load_state_dict(state)
    assert len(fresh) == len(ds) - 5
    full = {b.position: b.indices.tolist() for b in ds}
    rest = [b.indices.tolist() for b in fresh]
    taken = [full[p] for p in (0, 1, 3, 4, 6)]
    assert sorted(rest + taken) == sorted(full.values())
    # A state with out-of-order positions belongs to its rank and world size.
    other = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=1, rank=0, world_size=2)
    with pytest.raises(errors.StateDictError, match="rank 0 of 1"):
        other.load_state_dict(state)


def test_ordered_false_without_workers_records_what_was_yielded(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=2, ordered=False, window=6)
    it = iter(ds)
    taken = [next(it) for _ in range(8)]
    state = ds.state_dict()
    del it
    fresh = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=2, ordered=False)
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert_exactly_once(real(taken) + real(list(fresh)), len(all_uuids))
    # Resuming twice: the second state still accounts for the first run.
    again = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=2, ordered=False)
    again.load_state_dict(state)
    it = iter(again)
    more = [next(it) for _ in range(3)]
    state2 = again.state_dict()
    del it
    last = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=2, ordered=False)
    last.load_state_dict(state2)
    assert_exactly_once(real(taken) + real(more) + real(list(last)), len(all_uuids))


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("ordered", [True, False])
def test_stateful_dataloader_resumes_exactly(
    local_store: tuple[str, Path], all_uuids: np.ndarray, num_workers: int, ordered: bool
) -> None:
    url, _ = local_store

    def loader() -> StatefulDataLoader:
        ds = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=5, ordered=ordered)
        return StatefulDataLoader(ds, batch_size=None, num_workers=num_workers)

    first = loader()
    got = []
    for b in first:
        got.append(b)
        if len(got) == 7:
            break
    state = first.state_dict()
    del first
    second = loader()
    second.load_state_dict(state)
    rest = list(second)
    assert_exactly_once(real(got) + real(rest), len(all_uuids))
    # The next epoch after a resumed one is whole again.
    second.dataset.set_epoch(1)  # type: ignore[attr-defined]
    assert_exactly_once(real(list(second)), len(all_uuids))


@pytest.mark.parametrize(("old", "new"), [(4, 2), (2, 3)])
def test_elastic_resume_on_another_world_size(
    local_store: tuple[str, Path], all_uuids: np.ndarray, old: int, new: int
) -> None:
    url, _ = local_store
    n = len(all_uuids)

    def ds(rank: int, world: int) -> cc.ShardedDataset:
        return cc.ShardedDataset(url, "shapes", all_uuids, 3, seed=9, rank=rank, world_size=world)

    before = [ds(r, old) for r in range(old)]
    taken: list[int] = []
    states = []
    for d in before:  # every rank consumes the same number of batches (DDP lockstep)
        it = iter(d)
        taken += real([next(it) for _ in range(4)])
        states.append(d.state_dict())
        del it
    assert all(s == {**states[0], "rank": s["rank"]} for s in states)
    after = [ds(r, new) for r in range(new)]
    for d in after:
        d.load_state_dict(json.loads(json.dumps(states[0])))
    counts = {len(d) for d in after}
    assert len(counts) == 1, f"unequal batch counts over the new ranks: {counts}"
    batches = [list(d) for d in after]
    assert {len(b) for b in batches} == counts
    assert_exactly_once(taken + [i for b in batches for i in real(b)], n)


def test_state_from_another_seed_split_or_batch_size_is_rejected(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=1)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    del it
    for kw, key in (
        ({"seed": 2}, "seed"),
        ({"batch_size": 5}, "batch_size"),
        ({"uuids": all_uuids[:-1]}, "num_samples"),
        ({"uuids": all_uuids[::-1].copy()}, "uuids_fingerprint"),
        ({"shuffle": False}, "shuffle"),
    ):
        args = {"uuids": all_uuids, "batch_size": 4, "seed": 1, **kw}
        other = cc.ShardedDataset(url, "shapes", **args)
        with pytest.raises(errors.StateDictError, match=key):
            other.load_state_dict(state)
    with pytest.raises(errors.StateDictError, match="version"):
        ds.load_state_dict({**state, "version": 99})
    with pytest.raises(errors.StateDictError, match="out of range"):
        ds.load_state_dict({**state, "consumed_positions": [10_000]})
    # Version 1 states (no consumed_positions) still load.
    v1 = {k: v for k, v in state.items() if k not in ("consumed_positions", "rank")}
    ds.load_state_dict({**v1, "version": 1})
    assert len(ds) == len(cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=1)) - 1


def test_plain_dataloader_state_with_workers_in_process(
    local_store: tuple[str, Path], all_uuids: np.ndarray
) -> None:
    url, _ = local_store
    ds = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=3, ordered=False)
    got = []
    for b in DataLoader(ds, batch_size=None, num_workers=2):
        got.append(b)
        if len(got) == 6:
            break
    state = ds.state_dict(consumed_positions=[b.position for b in got])
    fresh = cc.ShardedDataset(url, "shapes", all_uuids, 4, seed=3, ordered=False)
    fresh.load_state_dict(state)
    rest = list(DataLoader(fresh, batch_size=None, num_workers=2))
    assert_exactly_once(real(got) + real(rest), len(all_uuids))
