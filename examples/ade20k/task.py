"""Segmentation: the label blob is a PNG mask (one class index a pixel),
per-pixel cross-entropy, mean IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common.decoding import decode_masks
from common.metrics import MeanIoU
from common.models import SEGMENTERS, segmenter
from common.training import Task

from crs4_cassandra import Batch

IGNORE = 255
DEFAULT_ARCH = "deeplabv3_mobilenet_v3_large"


def masks(batch: Batch, size: int) -> torch.Tensor:
    return decode_masks(batch.label_samples(), size)


def pixel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, ignore_index=IGNORE)


TASK = Task(
    name="segmentation",
    label_type="blob",
    archs=(DEFAULT_ARCH, *[a for a in SEGMENTERS if a != DEFAULT_ARCH]),
    model=segmenter,
    targets=masks,
    loss=pixel_loss,
    metric=MeanIoU,
    label_kind="mask",
    main_metric="mean_iou",
    flip_targets=True,
)
