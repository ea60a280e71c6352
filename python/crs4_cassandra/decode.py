"""Decoding a batch's JPEGs with torchvision (nvJPEG on the GPU, batched).

For machines without a GPU, ``ShardedDataset(..., decode="rgb")`` decodes in
Rust instead, off the GIL and overlapped with reading.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from .dataset import Batch
from .errors import CorruptSampleError, InvalidArgumentError


def decode_jpeg(
    batch: Batch,
    device: str | torch.device = "cuda",
    *,
    mode: Literal["rgb", "gray", "unchanged"] = "rgb",
    table: str | None = None,
) -> list[torch.Tensor]:
    """Decodes every sample of ``batch`` with ``torchvision.io.decode_jpeg``:
    one call for the whole batch, so on CUDA nvJPEG decodes it in one go.

    Returns a list of uint8 (3, H, W) tensors (``mode="rgb"``; "gray" gives
    (1, H, W), "unchanged" keeps the file's channels) on ``device``. The
    inputs are views of the batch arena: nothing is copied before decoding.
    A sample torchvision cannot decode raises CorruptSampleError naming its
    uuid (and ``table``, if given).
    """
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as tv_decode_jpeg

    modes = {
        "rgb": ImageReadMode.RGB,
        "gray": ImageReadMode.GRAY,
        "unchanged": ImageReadMode.UNCHANGED,
    }
    if mode not in modes:
        raise InvalidArgumentError(f"mode must be one of {sorted(modes)}, got {mode!r}")
    samples = batch.samples()
    if not samples:
        return []
    try:
        out: Any = tv_decode_jpeg(samples, mode=modes[mode], device=device)
        return list(out)
    except RuntimeError:
        pass
    # Find the culprit: the batched call does not say which sample failed.
    ids = batch.ids
    decoded = []
    for i, sample in enumerate(samples):
        try:
            decoded.append(tv_decode_jpeg(sample, mode=modes[mode], device=device))
        except RuntimeError as e:
            where = f" in table {table!r}" if table else ""
            err = CorruptSampleError(f"sample {ids[i]}{where}: cannot decode the JPEG: {e}")
            # The attributes the Rust side sets on the errors it raises.
            err.__dict__.update(uuid=str(ids[i]), table=table, column="data")
            raise err from e
    return decoded


__all__ = ["decode_jpeg"]
