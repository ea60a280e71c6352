"""Models: small ones that train in seconds on a CPU (the stand-in datasets),
torchvision ones for the real datasets."""

from __future__ import annotations

import torch
from torch import nn


def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: enough for the stand-ins."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_block(3, width),
            nn.MaxPool2d(2),
            conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            conv_block(2 * width, 4 * width),
            nn.MaxPool2d(2),
            conv_block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallSegNet(nn.Module):
    """An encoder-decoder with a global-context branch (as PSPNet's pooling):
    per-pixel features say where an object is, the image-level context which."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.enc1 = conv_block(3, width)
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_block(width, 2 * width))
        self.enc3 = nn.Sequential(nn.MaxPool2d(2), conv_block(2 * width, 4 * width))
        self.context = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4 * width, 4 * width, 1))
        self.dec2 = conv_block(4 * width + 2 * width, 2 * width)
        self.dec1 = conv_block(2 * width + width, width)
        self.out = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d = nn.functional.interpolate(e3 + self.context(e3), size=e2.shape[-2:])
        d = self.dec2(torch.cat([d, e2], 1))
        d = nn.functional.interpolate(d, size=e1.shape[-2:], mode="bilinear")
        return self.out(self.dec1(torch.cat([d, e1], 1)))


CLASSIFIERS = ("small", "resnet18", "resnet50", "mobilenet_v3_small")
SEGMENTERS = ("small", "deeplabv3_mobilenet_v3_large", "fcn_resnet50")


def classifier(arch: str, num_classes: int) -> nn.Module:
    if arch == "small":
        return SmallCNN(num_classes)
    import torchvision.models as tvm

    if arch not in CLASSIFIERS:
        raise ValueError(f"arch must be one of {CLASSIFIERS}, got {arch!r}")
    return getattr(tvm, arch)(num_classes=num_classes)  # type: ignore[no-any-return]


class _OutOnly(nn.Module):
    """torchvision segmentation models return a dict; keep the "out" map."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)["out"]  # type: ignore[no-any-return]


def segmenter(arch: str, num_classes: int) -> nn.Module:
    if arch == "small":
        return SmallSegNet(num_classes)
    import torchvision.models.segmentation as tvs

    if arch not in SEGMENTERS:
        raise ValueError(f"arch must be one of {SEGMENTERS}, got {arch!r}")
    return _OutOnly(getattr(tvs, arch)(num_classes=num_classes, weights_backbone=None))
