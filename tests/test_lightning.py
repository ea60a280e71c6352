"""ShardedDataModule under a real Lightning Trainer: DDP over gloo with two
CPU processes, and a mid-epoch checkpoint resumed by a new Trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import crs4_cassandra as cc
from crs4_cassandra.lightning import ShardedDataModule


def tensors(batch: cc.Batch) -> dict[str, torch.Tensor]:
    """Each sample's byte count as its only feature: cheap and deterministic."""
    lengths = (batch.offsets[1:] - batch.offsets[:-1]).float().unsqueeze(1) / 1000.0
    return {"x": lengths, "indices": batch.indices.clone(), "is_pad": batch.is_pad.clone()}


class Recorder:
    """Makes a LightningModule that records the sample indices each step sees."""

    @staticmethod
    def module() -> Any:
        import lightning.pytorch as pl

        class Tiny(pl.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.lin = torch.nn.Linear(1, 2)
                self.train_steps: dict[int, list[list[int]]] = {}
                self.val_indices: dict[int, list[int]] = {}
                self.val_pads = 0

            def training_step(self, b: dict[str, torch.Tensor], i: int) -> torch.Tensor:
                self.train_steps.setdefault(self.current_epoch, []).append(b["indices"].tolist())
                return self.lin(b["x"]).pow(2).mean()

            def validation_step(self, b: dict[str, torch.Tensor], i: int) -> None:
                keep = ~b["is_pad"]
                seen = self.val_indices.setdefault(self.current_epoch, [])
                seen += b["indices"][keep].tolist()
                self.val_pads += int(b["is_pad"].sum())

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.SGD(self.parameters(), lr=0.01)

        return Tiny()


def ddp_main(url: str, split: str, out: str) -> None:
    """Runs as a script: Lightning's subprocess launcher starts rank 1 by
    running it again."""
    import lightning.pytorch as pl

    dm = ShardedDataModule(url, split, 8, seed=5, transform=tensors, num_workers=1)
    model = Recorder.module()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    rank = trainer.global_rank
    record = {
        "rank": rank,
        "world_size": trainer.world_size,
        "len_train": len(dm.train_dataloader()),
        "train_steps": model.train_steps,
        "val_indices": model.val_indices,
        "val_pads": model.val_pads,
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ddp_two_cpu_ranks_two_epochs(local_store: tuple[str, Path], tmp_path: Path) -> None:
    url, split = local_store
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run(
        [sys.executable, __file__, url, str(split), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=220,
        env=env,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [x["rank"] for x in ranks] == [0, 1] and ranks[0]["world_size"] == 2
    sf = cc.SplitFile.load(split)
    n_train, n_val = len(sf.uuids("train")), len(sf.uuids("val"))
    orders = []
    for epoch in ("0", "1"):
        steps = [x["train_steps"][epoch] for x in ranks]
        # Every rank the same number of steps (an uneven count hangs DDP) ...
        assert len(steps[0]) == len(steps[1]) == ranks[0]["len_train"] == -(-n_train // 16)
        # ... and together every training sample (plus pads) once.
        seen = [i for s in steps for b in s for i in b]
        assert set(seen) == set(range(n_train)) and len(seen) == len(steps[0]) * 16
        orders.append(steps[0])
        # Validation covers every val sample exactly once over the ranks.
        val = [i for x in ranks for i in x["val_indices"][epoch]]
        assert sorted(val) == list(range(n_val)), epoch
    assert orders[0] != orders[1], "the epoch did not reshuffle"
    assert sum(x["val_pads"] for x in ranks) == 2 * (-(-n_val // 16) * 16 - n_val)


@pytest.mark.slow
@pytest.mark.timeout(180)
# Lightning 2.6 calls a torch pytree API that this torch deprecates.
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_mid_epoch_checkpoint_resumes_the_rest(
    local_store: tuple[str, Path], tmp_path: Path
) -> None:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    url, split = local_store
    opts: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    first = Recorder.module()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    dm = ShardedDataModule(url, split, 8, seed=2, transform=tensors)
    pl.Trainer(max_epochs=1, callbacks=[ckpt], **opts).fit(first, datamodule=dm)
    full = first.train_steps[0]
    assert len(full) == len(dm.datasets["train"]) == 11
    saved = tmp_path / "epoch=0-step=3.ckpt"
    state = torch.load(saved, weights_only=False)["ShardedDataModule"]
    assert state["batches_consumed"] == 3

    resumed = Recorder.module()
    dm2 = ShardedDataModule(url, split, 8, seed=2, transform=tensors)
    pl.Trainer(max_epochs=2, enable_checkpointing=False, **opts).fit(
        resumed, datamodule=dm2, ckpt_path=saved
    )
    # The resumed epoch yields exactly the batches not yet seen, in order; the
    # next epoch is whole and reshuffled.
    assert resumed.train_steps[0] == full[3:]
    epoch1 = resumed.train_steps[1]
    assert len(epoch1) == 11 and epoch1 != full
    assert {i for b in epoch1 for i in b} == set(range(84))


if __name__ == "__main__":
    ddp_main(*sys.argv[1:4])
