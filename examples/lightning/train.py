"""Trains an image classifier (imagenette by default) with PyTorch Lightning,
reading through crs4_cassandra.lightning.ShardedDataModule.

    python train.py --split-file imagenette.split --devices 2 --epochs 10 --size 160
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.decoding import decode_images_cpu, normalize  # noqa: E402
from common.models import CLASSIFIERS, classifier  # noqa: E402

from crs4_cassandra import Batch  # noqa: E402
from crs4_cassandra.lightning import ShardedDataModule  # noqa: E402


def decode(batch: Batch, size: int) -> dict[str, torch.Tensor]:
    """Runs in the DataLoader workers: JPEG bytes to uint8 images, on the CPU."""
    assert batch.labels is not None
    return {
        "images": decode_images_cpu(batch.samples(), size),
        "labels": batch.labels.clone(),
        "is_pad": batch.is_pad.clone(),
    }


class Classifier(pl.LightningModule):
    def __init__(self, arch: str, num_classes: int, lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = classifier(arch, num_classes)
        self.lr = lr
        self.register_buffer("val_sums", torch.zeros(2, dtype=torch.float64), persistent=False)
        self.t0 = 0.0
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(normalize(x))

    def on_train_epoch_start(self) -> None:
        self.t0, self.seen = time.perf_counter(), 0

    def training_step(self, b: dict[str, torch.Tensor], _: int) -> torch.Tensor:
        x = b["images"]
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        loss = F.cross_entropy(self(x), b["labels"])
        self.seen += x.shape[0]
        self.log("loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def on_train_epoch_end(self) -> None:
        rate = self.seen * self.trainer.world_size / (time.perf_counter() - self.t0)
        self.log("images_per_s", rate, rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self.val_sums.zero_()

    def validation_step(self, b: dict[str, torch.Tensor], _: int) -> None:
        keep = ~b["is_pad"]
        pred = self(b["images"][keep]).argmax(1)
        self.val_sums += torch.stack([(pred == b["labels"][keep]).sum(), keep.sum()]).to(
            self.val_sums
        )

    def on_validation_epoch_end(self) -> None:
        # Exact over every sample: each rank saw its shard, pads excluded.
        sums = self.trainer.strategy.reduce(self.val_sums.clone(), reduce_op="sum")
        self.log("val_accuracy", float(sums[0] / sums[1].clamp(min=1)), prog_bar=True)
        self.log("val_samples", float(sums[1]))

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=steps, pct_start=0.2
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--split-file", required=True)
    ap.add_argument("--store", help="store URL (default: the split file's)")
    ap.add_argument("--arch", default="resnet18", choices=CLASSIFIERS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64, help="per process")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--accelerator", default="auto")
    ap.add_argument("--devices", default="auto", help="number of devices (processes)")
    ap.add_argument("--strategy", default="auto", help="e.g. ddp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-path", help="resume from this checkpoint")
    ap.add_argument("--checkpoint-dir", help="save checkpoints (and last.ckpt) here")
    ap.add_argument("--every-n-steps", type=int, help="also checkpoint every N steps (mid-epoch)")
    ap.add_argument("--metrics-out", help="write the final metrics here, as JSON")
    args = ap.parse_args(argv)

    pl.seed_everything(args.seed, workers=True)
    dm = ShardedDataModule(
        args.store,
        args.split_file,
        args.batch_size,
        num_workers=args.workers,
        seed=args.seed,
        transform=functools.partial(decode, size=args.size),
    )
    devices: int | str = int(args.devices) if args.devices.isdigit() else args.devices
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=devices,
        strategy=args.strategy,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=args.checkpoint_dir is not None,
        callbacks=[
            ModelCheckpoint(
                dirpath=args.checkpoint_dir,
                save_last=True,
                save_top_k=-1,
                every_n_train_steps=args.every_n_steps,
            )
        ]
        if args.checkpoint_dir
        else [],
        num_sanity_val_steps=0,
    )
    model = Classifier(args.arch, len(dm.split.classes), args.lr)
    trainer.fit(model, datamodule=dm, ckpt_path=args.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        print(f"FINAL {json.dumps(metrics, sort_keys=True)}", flush=True)
        if args.metrics_out:
            Path(args.metrics_out).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
