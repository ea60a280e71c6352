"""PatchDataset: batches of patches of arrays (whole-slide images, volumes,
satellite tiles) for training, sharded and resumable like ShardedDataset.

Patches are the samples of the same Rust reader as ShardedDataset's: the
epoch plan deals patch slots over ranks and DataLoader workers (each slot once
per epoch), the fetch engine keeps a window of batch reads in flight, and a
batch's patches arrive as one tensor through DLPack. ``state_dict`` and
``load_state_dict`` work as they do there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.dlpack import from_dlpack

from . import _native
from .arrays import Array
from .dataset import Batch, ShardedDataset, open_store
from .errors import InvalidArgumentError

__all__ = ["PatchBatch", "PatchDataset"]


def _torch_dtype(dtype: str, what: str) -> torch.dtype:
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except TypeError as e:
        raise InvalidArgumentError(f"{what} dtype {dtype} has no torch equivalent: {e}") from None


class PatchBatch(Batch):
    """A batch of patches: ``images`` is a (B, *patch_shape) tensor of the
    arrays' dtype; ``labels`` the same patches of the label arrays (B,
    *label_shape), or None. ``indices`` are the patch slots (see
    :meth:`PatchDataset.locate`); ``is_pad``, ``position`` and ``epoch`` as
    in :class:`~crs4_cassandra.Batch`. ``batch[i]`` is ``(image, label)``."""

    __slots__ = ()

    def __getitem__(self, i: int) -> Any:
        images = self.images
        assert isinstance(images, torch.Tensor)
        return images[i], None if self.labels is None else self.labels[i]

    def __repr__(self) -> str:
        images = self.images
        assert isinstance(images, torch.Tensor)
        return (
            f"PatchBatch(images={tuple(images.shape)} {images.dtype}, position={self.position}, "
            f"epoch={self.epoch}, pads={int(self.is_pad.sum())})"
        )


class PatchDataset(ShardedDataset):
    """Batches of patches of ``arrays`` (names or :class:`~crs4_cassandra.arrays.Array`
    objects of ``store``).

    ``patch_shape`` covers the leading dimensions of the arrays; the others are
    taken whole (a (256, 256) patch of an (H, W, 3) image is (256, 256, 3)),
    and must agree over the arrays, as must their dtype.

    - ``per_epoch=N``: N random patches an epoch, each at a position drawn
      from (seed, epoch, slot): uniform over every position of every array
      (an array is picked in proportion to its positions), new each epoch,
      the same on every rank.
    - ``grid=True``: every patch of a regular grid (``stride`` defaults to
      the patch shape: no overlap; the edge remainder is left out), the same
      each epoch, in an order shuffled by the plan.

    ``labels``: one array per array (a segmentation mask, of the same leading
    shape), read for the same patch. Every other keyword is ShardedDataset's
    (``shuffle``, ``seed``, ``drop_last``, ``rank``/``world_size``,
    ``window``, ``memory_budget``, ``ordered``, ``transform``). Use with
    ``DataLoader(ds, batch_size=None, num_workers=k)``.
    """

    def __init__(
        self,
        store: _native.Store | str,
        arrays: Sequence[str | Array],
        patch_shape: Sequence[int],
        *,
        batch_size: int,
        per_epoch: int | None = None,
        grid: bool = False,
        stride: Sequence[int] | None = None,
        labels: Sequence[str | Array] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        ordered: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        window: int | None = None,
        memory_budget: int | None = None,
        transform: Callable[[Batch], Any] | None = None,
    ) -> None:
        torch.utils.data.IterableDataset.__init__(self)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        store = open_store(store) if isinstance(store, str) else store

        def names(items: Sequence[str | Array]) -> list[str]:
            return [a.name if isinstance(a, Array) else str(a) for a in items]

        source = _native.PatchSource(
            store,
            names(arrays),
            [int(n) for n in patch_shape],
            labels=None if labels is None else names(labels),
            per_epoch=None if per_epoch is None else int(per_epoch),
            grid=grid,
            stride=None if stride is None else [int(n) for n in stride],
            seed=int(seed),
        )
        self._config = _native.ReaderConfig(
            source.table,
            source.uuids(),
            batch_size,
            label_type=source.label_type,
            shuffle=shuffle,
            seed=int(seed),
            drop_last=drop_last,
            ordered=ordered,
            rank=rank,
            world_size=world_size,
            window=window,
            memory_budget=memory_budget,
            patches=source.spec_json,
        )
        self._start(store, transform)
        self._source: _native.PatchSource | None = source
        self._spec = (
            names(arrays),
            [int(n) for n in patch_shape],
            per_epoch,
            grid,
            None if stride is None else [int(n) for n in stride],
            None if labels is None else names(labels),
        )
        self.patch_shape = tuple(int(n) for n in source.patch_shape)
        self.dtype = np.dtype(source.dtype)
        self.label_shape = None if source.label_shape is None else tuple(source.label_shape)
        self.label_dtype = None if source.label_dtype is None else np.dtype(source.label_dtype)
        self._torch_dtypes = (
            _torch_dtype(source.dtype, "array"),
            None if source.label_dtype is None else _torch_dtype(source.label_dtype, "label"),
        )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_source"] = None  # reopened on demand (locate)
        return state

    def __repr__(self) -> str:
        return (
            f"PatchDataset(store={self.store.url!r}, patches={self.num_samples}, "
            f"patch_shape={self.patch_shape}, dtype={self.dtype}, batch_size={self.batch_size}, "
            f"rank={self.rank}, world_size={self.world_size}, epoch={self.epoch}, "
            f"batches={len(self)})"
        )

    def locate(self, epoch: int, index: int) -> tuple[str, tuple[int, ...]]:
        """(array name, origin) of patch slot ``index`` (``PatchBatch.indices``) in ``epoch``."""
        if self._source is None:
            arrays, patch_shape, per_epoch, grid, stride, labels = self._spec
            self._source = _native.PatchSource(
                self.store,
                arrays,
                patch_shape,
                labels=labels,
                per_epoch=per_epoch,
                grid=grid,
                stride=stride,
                seed=self.seed,
            )
        name, origin = self._source.locate(int(epoch), int(index))
        return name, tuple(int(o) for o in origin)

    def _batch(self, nb: _native.NativeBatch, epoch: int) -> Batch:
        n = len(nb)
        image_dtype, label_dtype = self._torch_dtypes
        data = from_dlpack(nb.data())
        images = data.view(image_dtype).view(n, *self.patch_shape)
        labels = None
        if label_dtype is not None and self.label_shape is not None:
            raw = nb.labels()
            assert raw is not None
            labels = from_dlpack(raw).view(label_dtype).view(n, *self.label_shape)
        return PatchBatch(
            data=data,
            offsets=from_dlpack(nb.offsets()),
            labels=labels,
            label_offsets=None,
            indices=from_dlpack(nb.indices()),
            is_pad=from_dlpack(nb.is_pad()),
            id_bytes=from_dlpack(nb.ids()),
            position=nb.position,
            epoch=epoch,
            images=images,
        )
