"""Multilabel classification: the label blob is a multi-hot vector serialized
with np.save, binary cross-entropy per class, micro-averaged F1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common.decoding import decode_npy
from common.metrics import MicroF1
from common.models import CLASSIFIERS, classifier
from common.training import Task

from crs4_cassandra import Batch


def multihot(batch: Batch, size: int) -> torch.Tensor:
    return decode_npy(batch.label_samples())


TASK = Task(
    name="multilabel",
    label_type="blob",
    archs=("resnet18", *[a for a in CLASSIFIERS if a != "resnet18"]),
    model=classifier,
    targets=multihot,
    loss=F.binary_cross_entropy_with_logits,
    metric=MicroF1,
    label_kind="npy",
    main_metric="micro_f1",
)
