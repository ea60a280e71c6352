"""Turning batches of encoded samples into tensors.

The decode backend is chosen here and nowhere else:

- ``dali``: NVIDIA DALI decodes on the GPU (nvJPEG); used when a GPU and DALI
  are present.
- ``rust``: the library's own CPU decoder (``ShardedDataset(decode="rgb")``),
  when the installed version has it.
- ``torchvision``: ``torchvision.io.decode_image`` on the CPU, always there.

CPU backends run inside the DataLoader workers, so decoding overlaps training.
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

BACKENDS = ("auto", "dali", "rust", "torchvision")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255


def rust_decoder_available() -> bool:
    return "decode" in inspect.signature(ShardedDataset.__init__).parameters


def dali_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("nvidia.dali") is not None


def choose_backend(requested: str = "auto") -> str:
    if requested not in BACKENDS:
        raise ValueError(f"decode backend must be one of {BACKENDS}, got {requested!r}")
    if requested == "dali" and not dali_available():
        raise RuntimeError("the dali backend needs a CUDA GPU and nvidia-dali installed")
    if requested == "rust" and not rust_decoder_available():
        raise RuntimeError("this crs4_cassandra has no CPU decoder (ShardedDataset decode=)")
    if requested != "auto":
        return requested
    if dali_available():
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
    """What the training loop receives: images (uint8 NCHW, or None while the
    GPU decoder still has to run), the raw batch for it, targets and the pad mask."""

    __slots__ = ("images", "raw", "targets", "is_pad")

    def __init__(
        self,
        images: torch.Tensor | None,
        raw: list[torch.Tensor] | None,
        targets: torch.Tensor,
        is_pad: torch.Tensor,
    ) -> None:
        self.images = images
        self.raw = raw
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
                yield DecodedBatch(images, None, y, b.is_pad)
            elif self.backend == "torchvision":
                yield DecodedBatch(decode_images_cpu(b.samples(), self.size), None, y, b.is_pad)
            else:  # decoded on the GPU, in the main process
                yield DecodedBatch(None, [s.clone() for s in b.samples()], y, b.is_pad)


class DaliImageDecoder:
    """Decodes on the GPU with DALI: encoded samples in, uint8 (B, 3, H, W) out."""

    def __init__(self, batch_size: int, size: int, device_id: int, threads: int = 4) -> None:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(  # type: ignore[misc]
            batch_size=batch_size, num_threads=threads, device_id=device_id, prefetch_queue_depth=1
        )
        def pipe() -> Any:
            enc = fn.external_source(name="encoded", dtype=types.UINT8, device="cpu")
            img = fn.decoders.image(enc, device="mixed", output_type=types.RGB)
            img = fn.resize(img, resize_x=size, resize_y=size, antialias=True)
            return fn.transpose(img, perm=[2, 0, 1])

        self.pipe = pipe()
        self.pipe.build()
        self.size = size
        self.device = torch.device("cuda", device_id)

    def __call__(self, samples: list[torch.Tensor]) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self.pipe.feed_input("encoded", [s.numpy() for s in samples])
        (out,) = self.pipe.run()
        t = torch.empty(
            (len(samples), 3, self.size, self.size), dtype=torch.uint8, device=self.device
        )
        feed_ndarray(out.as_tensor(), t, cuda_stream=torch.cuda.current_stream(self.device))
        return t
