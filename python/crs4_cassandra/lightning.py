"""PyTorch Lightning integration: a LightningDataModule over a split file.

    dm = ShardedDataModule("local:/data/store", "imagenette.split", batch_size=64,
                           transform=decode_batch, num_workers=4)
    Trainer(accelerator="gpu", devices=4, strategy="ddp").fit(model, datamodule=dm)

Each rank reads its own shard (the Trainer's ``global_rank`` of ``world_size``;
Lightning's DistributedSampler is not involved), every rank gets the same
number of batches, validation covers every sample once (the padding that
evens the shards is flagged in ``Batch.is_pad``), and the training order is
reshuffled each epoch. The module's ``state_dict`` records how far the current
epoch went, so a checkpoint saved mid-epoch resumes with the batches not yet
seen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, IterableDataset

from . import _native
from . import stats as stats_mod
from .dataset import Batch, ShardedDataset
from .errors import InvalidArgumentError, StateDictError
from .split_file import SplitFile

STATE_VERSION = 1


class _Mapped(IterableDataset[Any]):
    """Applies ``transform`` to each batch, inside the DataLoader workers."""

    def __init__(self, ds: ShardedDataset, transform: Callable[[Batch], Any] | None) -> None:
        super().__init__()
        self.ds = ds
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ds)

    def __iter__(self) -> Iterator[Any]:
        if self.transform is None:
            yield from self.ds
        else:
            for b in self.ds:
                yield self.transform(b)


class EpochDataLoader(DataLoader[Any]):
    """A DataLoader that sets its dataset's epoch each time an epoch starts.

    Lightning calls ``set_epoch`` only on samplers, which an IterableDataset
    does not have; iteration starts once an epoch, in the main process, before
    workers start, so this is where the epoch reaches them.
    """

    def __init__(
        self,
        mapped: _Mapped,
        epoch: Callable[[], int] | None,
        resumed: Callable[[], int],
        **kwargs: Any,
    ) -> None:
        super().__init__(mapped, batch_size=None, **kwargs)
        self._mapped = mapped
        self._epoch = epoch
        self._resumed = resumed

    @property
    def sharded(self) -> ShardedDataset:
        return self._mapped.ds

    def __iter__(self) -> Any:
        if self._epoch is not None:
            self.sharded.set_epoch(self._epoch())
        return super().__iter__()

    def __len__(self) -> int:
        # Lightning counts the batches of a resumed epoch from its start.
        return len(self.sharded) + self._resumed()


class ShardedDataModule(pl.LightningDataModule):
    """Train/val(/test) ShardedDatasets from a split file, sharded over the
    Trainer's ranks.

    ``transform`` turns a :class:`Batch` into what the LightningModule takes
    (decoded images and targets, say); it runs in the DataLoader workers and
    must be picklable. ``dataset_kwargs`` go to every ShardedDataset
    (``ordered``, ``window``, ``drop_last``...). Persistent workers are not
    supported: the epoch reaches the workers when they start.
    """

    def __init__(
        self,
        store: _native.Store | str | None,
        split_file: SplitFile | str | os.PathLike[str],
        batch_size: int,
        *,
        train_split: str | None = "train",
        val_split: str | None = "val",
        test_split: str | None = None,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        transform: Callable[[Batch], Any] | None = None,
        pin_memory: bool = False,
        **dataset_kwargs: Any,
    ) -> None:
        super().__init__()
        self.split = split_file if isinstance(split_file, SplitFile) else SplitFile.load(split_file)
        url = store if store is not None else self.split.store
        if url is None:
            raise InvalidArgumentError("the split file names no store: pass one")
        self.store = url
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.num_workers = num_workers
        self.seed = seed
        self.transform = transform
        self.pin_memory = pin_memory
        self.dataset_kwargs = dataset_kwargs
        self.datasets: dict[str, ShardedDataset] = {}
        self._pending: dict[str, Any] | None = None
        self._resumed_epoch: int | None = None
        self._resumed_batches = 0

    def _ranks(self) -> tuple[int | None, int | None]:
        trainer = self.trainer
        if trainer is None:
            return None, None  # ShardedDataset falls back to torch.distributed / env
        return trainer.global_rank, trainer.world_size

    def setup(self, stage: str) -> None:
        rank, world = self._ranks()
        for role, name in self.splits.items():
            if name is None or role in self.datasets:
                continue
            self.datasets[role] = ShardedDataset.from_split(
                self.store,
                self.split,
                name,
                self.batch_size if role == "train" else self.val_batch_size,
                shuffle=role == "train",
                seed=self.seed,
                rank=rank,
                world_size=world,
                **self.dataset_kwargs,
            )
        self._apply_pending()

    def _dataset(self, role: str) -> ShardedDataset:
        if role not in self.datasets:
            if self.splits.get(role) is None:
                raise InvalidArgumentError(f"no {role} split was given")
            self.setup(role)
        return self.datasets[role]

    def _loader(self, role: str) -> EpochDataLoader:
        ds = self._dataset(role)
        trainer = self.trainer
        epoch: Callable[[], int] | None = None
        if role == "train":
            epoch = (lambda: trainer.current_epoch) if trainer is not None else None

        def resumed() -> int:
            if role == "train" and self._resumed_epoch == ds.epoch:
                return self._resumed_batches
            return 0

        return EpochDataLoader(
            _Mapped(ds, self.transform),
            epoch,
            resumed,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> EpochDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> EpochDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self._loader("test")

    def _batches_consumed(self) -> int:
        """Training batches this rank has finished in the current epoch."""
        trainer = self.trainer
        if trainer is None:
            return 0
        current = trainer.fit_loop.epoch_loop.batch_progress.current
        # "processed" counts the batch whose on_train_batch_end saves a
        # checkpoint; "completed" does not yet.
        return int(getattr(current, "processed", current.completed))

    def state_dict(self) -> dict[str, Any]:
        ds = self.datasets.get("train")
        if ds is None:
            return {}
        # Lightning counts from the epoch's start, also in a resumed epoch;
        # the dataset counts from its resume point.
        before = self._resumed_batches if self._resumed_epoch == ds.epoch else 0
        consumed = max(0, min(self._batches_consumed() - before, len(ds)))
        return {
            "version": STATE_VERSION,
            "train": ds.state_dict(batches_consumed=consumed),
            "batches_consumed": before + consumed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("version") != STATE_VERSION:
            raise StateDictError(
                f"unsupported ShardedDataModule state version {state_dict.get('version')!r}"
            )
        self._pending = state_dict
        self._apply_pending()

    def _apply_pending(self) -> None:
        state, ds = self._pending, self.datasets.get("train")
        if state is None or ds is None:
            return
        ds.load_state_dict(state["train"])
        self._resumed_epoch = ds.epoch
        self._resumed_batches = int(state["batches_consumed"])
        self._pending = None


class LoaderStats(pl.Callback):
    """Logs the training data's figures at the end of each training epoch
    (``pl_module.log_dict``, under ``prefix``): samples/s, MB/s, the data stall
    (the share of the epoch the training loop waited for batches, measured
    here, between one batch's end and the next one's start), batch read
    percentiles, window and reads in flight, the store's reads, retries,
    timeouts and hedges, and per-node read latencies (see
    :func:`crs4_cassandra.stats.summary`).

        Trainer(callbacks=[LoaderStats()]).fit(model, datamodule=dm)

    Works with a :class:`ShardedDataModule`, or any train DataLoader whose
    dataset is a :class:`ShardedDataset`. ``last`` holds the last epoch's
    logged figures.
    """

    def __init__(self, prefix: str = "data/") -> None:
        super().__init__()
        self.prefix = prefix
        self.last: dict[str, float] = {}
        self._ds: ShardedDataset | None = None
        self._mark = 0.0

    @staticmethod
    def _dataset(trainer: pl.Trainer) -> ShardedDataset | None:
        loader = trainer.train_dataloader
        if isinstance(loader, EpochDataLoader):
            return loader.sharded
        ds = getattr(loader, "dataset", None)
        if isinstance(ds, _Mapped):
            return ds.ds
        return ds if isinstance(ds, ShardedDataset) else None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ds = self._dataset(trainer)
        self._mark = time.monotonic()
        if self._ds is not None:
            self._ds._loop.begin(self._ds.epoch, self._mark)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._ds is not None:
            self._ds._loop.waited(self._ds.epoch, time.monotonic() - self._mark)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._mark = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ds = self._ds
        if ds is None:
            return
        ds._loop.end(ds.epoch)
        figures = ds.stats()
        mine = [figures[k] for k in ("last", "current") if figures[k]]
        epoch = next((e for e in mine if e["epoch"] == ds.epoch), None)
        self.last = stats_mod.summary(epoch, self.prefix)
        if self.last:
            pl_module.log_dict(self.last, on_epoch=True, sync_dist=False)
