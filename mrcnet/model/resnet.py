"""Our own ResNet (no torchvision), laid out with the official MRC-Net module names.

``layer0`` = stem (conv7x7/2, in -> stem, no bias) + group BatchNorm + SiLU; no max-pool.
``layer{1..4}`` = ``Sequential(stage)`` with ``stage`` a ``Sequential`` of BasicBlocks (ReLU inside),
so that parameter names read ``layer1.0.0.conv1.weight`` as in the official state dict.
For a 256 x 256 input the outputs are at 1/2 (layer0, layer1), 1/4, 1/8, 1/16.
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from torch import Tensor

from .layers import GroupBatchNorm2d


class BasicBlock(nn.Module):
    """conv3x3/s - BN - ReLU - conv3x3 - BN (+ shortcut) - ReLU. (N, cin, H, W) -> (N, cout, H/s, W/s)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = GroupBatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = GroupBatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), GroupBatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet-34 (blocks 3-4-6-3) by default; ``forward`` returns the five feature maps.

    x (N, in, H, W) -> [x0 (N, stem, H/2), x1 (N, c1, H/2), x2 (N, c2, H/4), x3 (N, c3, H/8),
    x4 (N, c4, H/16)].
    """

    def __init__(self, in_channels: int = 4, stem: int = 64, channels: Sequence[int] = (64, 128, 256, 512),
                 blocks: Sequence[int] = (3, 4, 6, 3)):
        super().__init__()
        self.layer0 = nn.Sequential(nn.Conv2d(in_channels, stem, 7, 2, 3, bias=False), GroupBatchNorm2d(stem), nn.SiLU())
        cin = stem
        for i, (c, b) in enumerate(zip(channels, blocks)):
            self.add_module(f"layer{i + 1}", nn.Sequential(make_stage(cin, c, b, 1 if i == 0 else 2)))
            cin = c

    def forward(self, x: Tensor) -> list[Tensor]:
        x0 = self.layer0(x)
        x1 = self.layer1(x0)
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return [x0, x1, x2, x3, x4]
