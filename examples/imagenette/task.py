"""Classification: int labels, cross-entropy, top-1 accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common.metrics import Accuracy
from common.models import CLASSIFIERS, classifier
from common.training import Task

from crs4_cassandra import Batch


def int_labels(batch: Batch, size: int) -> torch.Tensor:
    assert batch.labels is not None, "the split file's table has no int labels"
    return batch.labels.clone()


TASK = Task(
    name="classification",
    label_type="int",
    archs=("resnet18", *[a for a in CLASSIFIERS if a != "resnet18"]),
    model=classifier,
    targets=int_labels,
    loss=F.cross_entropy,
    metric=Accuracy,
    main_metric="accuracy",
)
