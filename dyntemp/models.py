"""Backbones and the projection head.

``build(name, stem)`` returns a backbone mapping images to feature vectors, with the attribute
``feature_dim``. The ResNets are torchvision's, with the classifier removed and, for 32x32
images, the CIFAR stem: a 3x3 stride-1 first convolution and no max-pool, so the last stage
still sees 4x4 feature maps instead of 1x1. ``small`` is a three-block network fast enough to
train on a laptop CPU. ``Projector`` is the paper's head and ``SimCLRModel`` ties the two.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

MODELS = ("resnet18", "resnet50", "small")
STEMS = ("cifar", "imagenet")


def _resnet(name: str, stem: str) -> nn.Module:
    network = getattr(torchvision.models, name)(weights=None)
    if stem == "cifar":
        network.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        network.maxpool = nn.Identity()
    network.feature_dim = network.fc.in_features
    network.fc = nn.Identity()
    return network


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallNet(nn.Module):
    """Three conv-BN-ReLU blocks and global average pooling, for CPU-scale experiments.

    The first convolution has stride 2 and the next two are each followed by a 2x2 max-pool,
    so at 32x32 the blocks see 16, 16 and 8 pixels a side and end at 4x4. With widths
    (32, 64, 128) an image costs about 10 million multiply-adds forward, a 2-core CPU trains
    on more than 1,000 images a second, and the features have 128 dimensions.
    """

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        first, second, third = widths
        self.blocks = nn.Sequential(
            *_conv_bn_relu(3, first, stride=2),
            *_conv_bn_relu(first, second),
            nn.MaxPool2d(2),
            *_conv_bn_relu(second, third),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = third

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x)).flatten(1)


def build(name: str, stem: str = "cifar") -> nn.Module:
    """The backbone ``name`` (resnet18, resnet50 or small) with attribute ``feature_dim``.

    ``stem`` is ``cifar`` (3x3 stride-1 convolution, no max-pool; for 32x32 images) or
    ``imagenet`` (torchvision's 7x7 stride-2 convolution and max-pool); ``small`` has one stem.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    if name == "small":
        return SmallNet()
    return _resnet(name, stem)


class Projector(nn.Sequential):
    """The paper's head: Linear (no bias), BN, ReLU, Linear (no bias), BN.

    The loss L2-normalises its output; the final BN follows the official code.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
            nn.BatchNorm1d(out_dim),
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim


class SimCLRModel(nn.Module):
    """Backbone followed by projector; ``forward`` returns projections, ``backbone`` features."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))
