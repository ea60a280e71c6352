"""The training and evaluation loop every example shares: single process or
``torchrun --nproc_per_node N`` (DDP over gloo on CPU, nccl on GPU), decoding
chosen by ``decoding.choose_backend``, progress bars, per-epoch throughput and
metrics, a checkpoint and a JSON metrics file."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.decoding import (
    BACKENDS,
    DaliLoader,
    DecodedBatch,
    DecodedDataset,
    choose_backend,
    dataset_options,
    normalize,
)
from common.metrics import Metric
from crs4_cassandra import Batch, ShardedDataset, SplitFile, open_store
from crs4_cassandra.stats import summary


@dataclass(frozen=True)
class Task:
    """What differs between classification, segmentation and multilabel."""

    name: str
    label_type: str
    archs: tuple[str, ...]
    model: Callable[[str, int], nn.Module]
    # Runs in the DataLoader workers: the batch's targets, on the CPU.
    targets: Callable[[Batch, int], torch.Tensor]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[int], Metric]
    main_metric: str
    # How a DALI pipeline turns the label column into targets: "int", "mask"
    # (a PNG decoded like the images) or "npy" (an np.save-serialized vector).
    label_kind: str = "int"
    # Segmentation masks flip with their images.
    flip_targets: bool = False


@dataclass
class Dist:
    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        on = t.to(self.device)
        dist.all_reduce(on)
        return on.to(t.device)


def setup_distributed() -> Dist:
    """Joins the process group torchrun describes (if any) and picks the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, device)


def add_data_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--split-file", required=True, help="split file (crs4-cassandra ingest/split)")
    ap.add_argument(
        "--store",
        help="store URL (default: the split file's), e.g. local:/data/store or "
        "cassandra://host:9042/keyspace",
    )
    ap.add_argument("--batch-size", type=int, default=64, help="per process")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    ap.add_argument(
        "--decode",
        default="auto",
        choices=BACKENDS,
        help="decoder (auto: DALI on a GPU, else the CPU decoder)",
    )
    ap.add_argument("--metrics-out", help="write the final metrics here, as JSON")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def train_parser(task: Task, doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--val-split", default="val", help="evaluated after each epoch ('' for none)")
    ap.add_argument("--arch", default=task.archs[0], choices=task.archs)
    ap.add_argument("--num-classes", type=int, help="default: the split file's classes")
    ap.add_argument("--size", type=int, default=224, help="training resolution (square)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle)")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint", help="save the trained model here")
    return ap


class Loader:
    """A split's batches as (normalized images, targets, is_pad) on the device:
    from a DataLoader over a ShardedDataset (CPU decoding in its workers), or
    from a DALI pipeline."""

    def __init__(
        self,
        task: Task,
        args: argparse.Namespace,
        sf: SplitFile,
        store: Any,
        split: str,
        backend: str,
        size: int,
        d: Dist,
        train: bool,
    ) -> None:
        seed = getattr(args, "seed", 0)
        self.device = d.device
        dali = backend.startswith("dali")
        # The DALI iterator serves no padding, so a rank whose last batch would
        # be padding only gets one batch fewer: in training (where DDP needs as
        # many steps on every rank) drop the last incomplete round instead.
        drop_last = dali and train
        self.ds = ShardedDataset.from_split(
            store,
            sf,
            split,
            args.batch_size,
            shuffle=train,
            seed=seed,
            drop_last=drop_last,
            **dataset_options(backend, size),
        )
        self.batches: Any
        if dali:
            self.batches = DaliLoader(
                store=store,
                split_file=sf,
                split=split,
                batch_size=args.batch_size,
                size=size,
                label_kind=task.label_kind,
                rank=d.rank,
                world_size=d.world_size,
                seed=seed,
                shuffle=train,
                drop_last=drop_last,
                device_id=(d.device.index or 0) if backend == "dali" else None,
            )
        else:
            self.batches = DataLoader(
                DecodedDataset(self.ds, backend, size, task.targets),
                batch_size=None,
                num_workers=args.workers,
                pin_memory=d.device.type == "cuda",
            )

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        # The DALI reader counts its epochs itself.
        self.ds.set_epoch(epoch)

    def stats(self) -> dict[str, Any]:
        """Loader statistics of the epoch under way and the last one
        (crs4_cassandra.stats): samples/s, data stall, round trips..."""
        if isinstance(self.batches, DataLoader):
            return self.ds.stats()
        stats: dict[str, Any] = self.batches.stats()
        return stats

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        db: DecodedBatch
        # The loop's waits for batches, measured here: the data stall.
        batches = (
            self.ds.watch(self.batches) if isinstance(self.batches, DataLoader) else self.batches
        )
        for db in batches:
            x = db.images.to(self.device, non_blocking=True)
            y = db.targets.to(self.device, non_blocking=True)
            yield normalize(x), y, db.is_pad.to(self.device)


@torch.no_grad()
def evaluate(
    task: Task, model: nn.Module, loader: Loader, num_classes: int, d: Dist, desc: str, quiet: bool
) -> dict[str, float]:
    """Metrics over every sample of the split: each rank evaluates its shard
    (pads excluded), the sums are all-reduced."""
    model.eval()
    metric = task.metric(num_classes)
    t0 = time.perf_counter()
    for x, y, pad in tqdm(loader, desc=desc, disable=quiet or not d.main, file=sys.stderr):
        keep = ~pad
        metric.update(model(x)[keep], y[keep])
    metric.sums = d.all_reduce(metric.sums)
    out = metric.compute()
    out["images_per_s"] = out["samples"] / max(time.perf_counter() - t0, 1e-9)
    return out


def data_postfix(stats: dict[str, Any]) -> dict[str, str]:
    """Samples/s and data stall of the epoch under way, for a progress bar."""
    e = stats["current"] or stats["last"]
    if not e:
        return {}
    return {"samples/s": f"{e['samples_per_s']:,.0f}", "stall": f"{100 * e['stall']:.0f}%"}


def load_split(args: argparse.Namespace) -> tuple[SplitFile, Any]:
    sf = SplitFile.load(args.split_file)
    url = args.store or sf.store
    if not url:
        raise SystemExit("the split file names no store: pass --store")
    return sf, open_store(url)


def emit(final: dict[str, Any], tag: str, path: str | None) -> None:
    """The parseable last line, and the JSON file."""
    print(f"{tag} {json.dumps(final, sort_keys=True)}", flush=True)
    if path:
        Path(path).write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")


def train_main(task: Task, argv: list[str] | None = None, doc: str | None = None) -> int:
    args = train_parser(task, doc).parse_args(argv)
    d = setup_distributed()
    try:
        return _train(task, args, d)
    finally:
        if d.world_size > 1:
            # Leave together: a rank tearing down gloo while another still
            # writes its outputs can abort the job at exit.
            dist.barrier()
            dist.destroy_process_group()


def _train(task: Task, args: argparse.Namespace, d: Dist) -> int:
    backend = choose_backend(args.decode)
    sf, store = load_split(args)
    num_classes = args.num_classes or len(sf.classes)
    if num_classes <= 0:
        raise SystemExit("the split file lists no classes: pass --num-classes")
    train = Loader(task, args, sf, store, args.train_split, backend, args.size, d, True)
    val = (
        Loader(task, args, sf, store, args.val_split, backend, args.size, d, False)
        if args.val_split
        else None
    )
    if d.main:
        print(
            f"{task.name}: {train.ds.num_samples} training samples, {num_classes} classes, "
            f"{d.world_size} process(es) on {d.device.type}, decode: {backend}",
            flush=True,
        )
    torch.manual_seed(args.seed)
    model: nn.Module = task.model(args.arch, num_classes).to(d.device)
    net = model
    if d.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, total_steps=max(1, args.epochs * len(train)), pct_start=0.2
    )
    gen = torch.Generator(device="cpu").manual_seed(args.seed + d.rank)
    history: list[dict[str, Any]] = []
    val_metrics: dict[str, float] = {}
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        net.train()
        t0, seen, loss_sum, step = time.perf_counter(), 0, 0.0, 0
        bar = tqdm(
            train,
            total=len(train),
            desc=f"epoch {epoch}",
            disable=args.quiet or not d.main,
            file=sys.stderr,
        )
        for x, y, _ in bar:
            flip = (torch.rand(x.shape[0], generator=gen) < 0.5).to(d.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            if task.flip_targets:
                y = torch.where(flip.view(-1, *([1] * (y.dim() - 1))), y.flip(-1), y)
            loss = task.loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += x.shape[0]
            loss_sum += loss.item() * x.shape[0]
            step += 1
            if step % 10 == 1:
                bar.set_postfix(loss=f"{loss.item():.3f}", **data_postfix(train.stats()))
        dt = time.perf_counter() - t0
        data = train.stats()
        data_epoch = (
            data["last"] if data["last"] and data["last"]["epoch"] == train.ds.epoch else None
        )
        totals = d.all_reduce(torch.tensor([seen, loss_sum], dtype=torch.float64))
        row: dict[str, Any] = {
            "epoch": epoch,
            "loss": float(totals[1] / max(totals[0], 1)),
            "images_per_s": float(totals[0]) / dt,
            "seconds": dt,
        }
        if data_epoch is not None:
            row["data"] = summary(data_epoch)
        if val is not None:
            val_metrics = evaluate(task, model, val, num_classes, d, "val", args.quiet)
            row["val"] = val_metrics
        history.append(row)
        if d.main:
            shown = ", ".join(
                f"{k} {v:.4f}" for k, v in val_metrics.items() if k not in ("samples",)
            )
            print(
                f"epoch {epoch}: loss {row['loss']:.4f}, {row['images_per_s']:,.0f} images/s "
                f"(decode + train, {d.world_size} process(es))"
                + (f"; val: {shown}" if shown else ""),
                flush=True,
            )
    if d.main and args.checkpoint:
        torch.save(
            {
                "task": task.name,
                "arch": args.arch,
                "num_classes": num_classes,
                "size": args.size,
                "classes": sf.classes,
                "model": model.state_dict(),
            },
            args.checkpoint,
        )
    if d.main:
        final = {
            "task": task.name,
            "decode": backend,
            "world_size": d.world_size,
            "epochs": history,
            "val": val_metrics,
            task.main_metric: val_metrics.get(task.main_metric),
        }
        emit(final, "FINAL", args.metrics_out)
    return 0


def evaluate_main(task: Task, argv: list[str] | None = None, doc: str | None = None) -> int:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--checkpoint", required=True, help="what train.py saved")
    ap.add_argument("--split", default="val", help="the split to evaluate")
    args = ap.parse_args(argv)
    d = setup_distributed()
    try:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        if ckpt["task"] != task.name:
            raise SystemExit(f"{args.checkpoint} is a {ckpt['task']} model, not {task.name}")
        backend = choose_backend(args.decode)
        sf, store = load_split(args)
        model = task.model(ckpt["arch"], ckpt["num_classes"])
        model.load_state_dict(ckpt["model"])
        model.to(d.device)
        loader = Loader(task, args, sf, store, args.split, backend, ckpt["size"], d, False)
        m = evaluate(task, model, loader, ckpt["num_classes"], d, args.split, args.quiet)
        if d.main:
            emit({"task": task.name, "split": args.split, **m}, "METRICS", args.metrics_out)
        return 0
    finally:
        if d.world_size > 1:
            # Leave together: a rank tearing down gloo while another still
            # writes its outputs can abort the job at exit.
            dist.barrier()
            dist.destroy_process_group()
