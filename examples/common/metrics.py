"""Metrics that add up over batches and over DDP ranks: each keeps a tensor of
sums (all-reduced across ranks) and computes its values from them."""

from __future__ import annotations

import torch


class Metric:
    names: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.sums = torch.zeros(self.size(), dtype=torch.float64)

    def size(self) -> int:
        raise NotImplementedError

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        raise NotImplementedError


class Accuracy(Metric):
    """Top-1 accuracy of a classifier; sums: (correct, seen)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()

    def size(self) -> int:
        return 2

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        correct = (logits.argmax(1) == targets).sum().item()
        self.sums += torch.tensor([correct, targets.numel()], dtype=torch.float64)

    def compute(self) -> dict[str, float]:
        return {
            "accuracy": float(self.sums[0] / self.sums[1].clamp(min=1)),
            "samples": float(self.sums[1]),
        }


class MeanIoU(Metric):
    """Mean intersection over union of a segmenter, over the classes present in
    the targets or predicted; sums: the confusion matrix (and the image count)."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def size(self) -> int:
        return self.num_classes * self.num_classes + 1

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        k = self.num_classes
        pred = logits.argmax(1).flatten()
        t = targets.flatten()
        ok = (t != self.ignore_index) & (t >= 0) & (t < k)
        cm = torch.bincount(t[ok] * k + pred[ok], minlength=k * k).double().cpu()
        self.sums[:-1] += cm
        self.sums[-1] += targets.shape[0]

    def compute(self) -> dict[str, float]:
        k = self.num_classes
        cm = self.sums[:-1].view(k, k)
        inter = cm.diag()
        union = cm.sum(0) + cm.sum(1) - inter
        present = union > 0
        miou = (inter[present] / union[present]).mean() if present.any() else torch.tensor(0.0)
        acc = inter.sum() / cm.sum().clamp(min=1)
        return {
            "mean_iou": float(miou),
            "pixel_accuracy": float(acc),
            "samples": float(self.sums[-1]),
        }


class MicroF1(Metric):
    """Micro-averaged F1 of a multilabel classifier at a 0.5 threshold; sums:
    (true positives, false positives, false negatives, samples)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()

    def size(self) -> int:
        return 4

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        pred = logits > 0
        t = targets > 0.5
        tp = (pred & t).sum().item()
        fp = (pred & ~t).sum().item()
        fn = (~pred & t).sum().item()
        self.sums += torch.tensor([tp, fp, fn, targets.shape[0]], dtype=torch.float64)

    def compute(self) -> dict[str, float]:
        tp, fp, fn, n = self.sums.tolist()
        precision = tp / max(tp + fp, 1)
        recall = tp / max(tp + fn, 1)
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        return {"micro_f1": f1, "precision": precision, "recall": recall, "samples": n}
