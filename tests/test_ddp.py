"""DDP over gloo with 3 processes, each with 2 DataLoader workers."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

import crs4_cassandra as cc

WORLD = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_rank(rank: int, url: str, split: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ds = cc.ShardedDataset.from_split(url, split, "train", 4, seed=11)
        assert (ds.rank, ds.world_size) == (rank, WORLD)
        result = {}
        for tag, epoch in (("e0", 0), ("e0_again", 0), ("e1", 1)):
            ds.set_epoch(epoch)
            batches = 0
            indices: list[int] = []
            for b in DataLoader(ds, batch_size=None, num_workers=2):
                batches += 1
                indices += b.indices[~b.is_pad].tolist()
                # A collective per step, as DDP does: an uneven batch count would hang here.
                t = torch.ones(1)
                dist.all_reduce(t)
            result[tag] = {"batches": batches, "len": len(ds), "indices": indices}
        gathered: list[object] = [None] * WORLD
        dist.all_gather_object(gathered, result)
        if rank == 0:
            Path(out).write_text(json.dumps(gathered))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("store", ["local_store", "cassandra_store"])
def test_ddp_three_ranks_two_workers(
    store: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url, split = request.getfixturevalue(store)
    out = tmp_path / "ddp.json"
    mp.start_processes(
        run_rank,
        args=(url, str(split), free_port(), str(out)),
        nprocs=WORLD,
        join=True,
        start_method="spawn",
    )
    ranks = json.loads(out.read_text())
    n = len(cc.SplitFile.load(split).uuids("train"))
    for tag in ("e0", "e0_again", "e1"):
        counts = {r[tag]["batches"] for r in ranks}
        assert counts == {ranks[0][tag]["len"]}, counts
        union = [i for r in ranks for i in r[tag]["indices"]]
        assert sorted(union) == list(range(n)), tag
    assert [r["e0"]["indices"] for r in ranks] == [r["e0_again"]["indices"] for r in ranks]
    assert [r["e0"]["indices"] for r in ranks] != [r["e1"]["indices"] for r in ranks]
    assert np.unique([len(r["e0"]["indices"]) for r in ranks]).size <= 2
