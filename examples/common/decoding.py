"""Turning batches of encoded samples into tensors.

The decode backend is chosen here and nowhere else:

- ``dali``: a DALI pipeline reads the split with ``crs4_cassandra.dali.reader``
  (the counterpart of cassandra-dali-plugin's ``fn.crs4.cassandra``) and
  decodes and resizes on the GPU (nvJPEG), masks included; used when a GPU,
  DALI and ``crs4_cassandra.dali`` are present.
- ``dali-cpu``: the same pipeline with DALI's CPU decoders (the plugin's
  examples call it ``--dali_cpu``); only when asked for.
- ``rust``: the library's own CPU decoder (``ShardedDataset(decode="rgb")``),
  when the installed version has it.
- ``torchvision``: ``torchvision.io.decode_image`` on the CPU, always there.

The CPU backends other than DALI run inside the DataLoader workers, so
decoding overlaps training.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from crs4_cassandra import Batch, ShardedDataset

BACKENDS = ("auto", "dali", "dali-cpu", "rust", "torchvision")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def rust_decoder_available() -> bool:
    return "decode" in inspect.signature(ShardedDataset.__init__).parameters


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def dali_importable() -> bool:
    return _importable("nvidia.dali") and _importable("crs4_cassandra.dali")


def choose_backend(requested: str = "auto") -> str:
    if requested not in BACKENDS:
        raise ValueError(f"decode backend must be one of {BACKENDS}, got {requested!r}")
    if requested in ("dali", "dali-cpu") and not dali_importable():
        raise RuntimeError(f"the {requested} backend needs nvidia-dali and crs4_cassandra.dali")
    if requested == "dali" and not torch.cuda.is_available():
        raise RuntimeError("the dali backend needs a CUDA GPU (dali-cpu decodes on the CPU)")
    if requested == "rust" and not rust_decoder_available():
        raise RuntimeError("this crs4_cassandra has no CPU decoder (ShardedDataset decode=)")
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and dali_importable():
        return "dali"
    if rust_decoder_available():
        return "rust"
    return "torchvision"


def dataset_options(backend: str, size: int) -> dict[str, Any]:
    """Extra ShardedDataset arguments for a backend."""
    return {"decode": "rgb", "size": (size, size)} if backend == "rust" else {}


def decode_images_cpu(samples: list[torch.Tensor], size: int) -> torch.Tensor:
    """Encoded images -> uint8 (B, 3, size, size), with torchvision on the CPU."""
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2.functional import resize

    out = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    for i, s in enumerate(samples):
        img = decode_image(s, mode=ImageReadMode.RGB)
        out[i] = resize(img, [size, size], antialias=True)
    return out


def decode_masks(samples: list[torch.Tensor], size: int) -> torch.Tensor:
    """PNG masks (one class index a pixel) -> int64 (B, size, size), nearest-neighbour."""
    from torchvision.io import ImageReadMode, decode_image

    out = torch.empty((len(samples), size, size), dtype=torch.int64)
    for i, s in enumerate(samples):
        m = decode_image(s, mode=ImageReadMode.GRAY)
        out[i] = F.interpolate(m[None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return out


def decode_npy(samples: list[torch.Tensor]) -> torch.Tensor:
    """np.save-serialized label vectors -> float32 (B, C)."""
    arrs = [np.load(io.BytesIO(s.numpy().tobytes()), allow_pickle=False) for s in samples]
    return torch.from_numpy(np.stack(arrs).astype(np.float32))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float, ImageNet mean/std, on x's device."""
    return (x.float() - MEAN.to(x.device)) / STD.to(x.device)


class DecodedBatch:
    """What the training loop receives: uint8 NCHW images, targets, the pad mask."""

    __slots__ = ("images", "targets", "is_pad")

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, is_pad: torch.Tensor) -> None:
        self.images = images
        self.targets = targets
        self.is_pad = is_pad

    def __len__(self) -> int:
        return int(self.is_pad.shape[0])


class DecodedDataset(IterableDataset[DecodedBatch]):
    """Wraps a ShardedDataset: decodes each batch (in the DataLoader worker) and
    extracts its targets with ``targets(batch, size)``."""

    def __init__(
        self,
        ds: ShardedDataset,
        backend: str,
        size: int,
        targets: Callable[[Batch, int], torch.Tensor],
    ) -> None:
        super().__init__()
        self.ds = ds
        self.backend = backend
        self.size = size
        self.targets = targets

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        self.ds.set_epoch(epoch)

    def __iter__(self) -> Iterator[DecodedBatch]:
        for b in self.ds:
            y = self.targets(b, self.size)
            if self.backend == "rust":
                images = b.images.permute(0, 3, 1, 2).contiguous()
            else:
                images = decode_images_cpu(b.samples(), self.size)
            yield DecodedBatch(images, y, b.is_pad)


class DaliLoader:
    """One split read by ``crs4_cassandra.dali.reader`` in a DALI pipeline that
    decodes and resizes the images, and the masks of segmentation data, on the
    GPU (``device_id`` given) or the CPU. Yields (images uint8 NCHW, targets,
    is_pad) per batch; each epoch gives this rank's shard once
    (LastBatchPolicy.PARTIAL: no pads; with ``drop_last``, as many full batches
    on every rank)."""

    def __init__(
        self,
        *,
        store: str,
        split_file: Any,
        split: str,
        batch_size: int,
        size: int,
        label_kind: str,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool,
        drop_last: bool,
        device_id: int | None,
        threads: int = 4,
    ) -> None:
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        from crs4_cassandra.dali import reader

        where = "cpu" if device_id is None else "mixed"

        @pipeline_def(
            batch_size=batch_size,
            num_threads=threads,
            device_id=device_id,
            prefetch_queue_depth=2,
            seed=seed,
        )
        def pipe() -> Any:
            data, labels = reader(
                name="Reader",
                store=store,
                split_file=split_file,
                split=split,
                shard_id=rank,
                num_shards=world_size,
                seed=seed,
                shuffle_every_epoch=shuffle,
                drop_last=drop_last,
            )
            images = fn.decoders.image(data, device=where, output_type=types.RGB)
            images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
            images = fn.transpose(images, perm=[2, 0, 1])
            if label_kind == "mask":
                labels = fn.decoders.image(labels, device=where, output_type=types.GRAY)
                labels = fn.resize(
                    labels,
                    resize_x=size,
                    resize_y=size,
                    interp_type=types.INTERP_NN,
                    antialias=False,
                )
            return images, labels

        p = pipe()
        p.build()
        self.pipe = p
        self.label_kind = label_kind
        self.iterator = DALIGenericIterator(
            [p],
            ["images", "labels"],
            reader_name="Reader",
            last_batch_policy=LastBatchPolicy.PARTIAL,
            auto_reset=True,
        )

    def stats(self) -> dict[str, Any]:
        """The reader's loader statistics (crs4_cassandra.stats)."""
        from crs4_cassandra.dali import stats

        return stats(self.pipe, "Reader")

    def __iter__(self) -> Iterator[DecodedBatch]:
        for (out,) in self.iterator:
            images, labels = out["images"], out["labels"]
            if self.label_kind == "int":
                y = labels.view(-1).long()
            elif self.label_kind == "mask":
                y = labels.squeeze(-1).long()
            else:  # np.save-serialized vectors: same shape, so same byte count
                y = decode_npy(list(labels.cpu()))
            pad = torch.zeros(images.shape[0], dtype=torch.bool)
            yield DecodedBatch(images, y, pad)
