"""PyramidNet (Han et al. 2017) for CIFAR, basic blocks, depth 110: alpha=48 (1.7M parameters,
Table 2 "PyramidNet-48") and alpha=270 (28.3M, "PyramidNet-270").

Block: BN-conv3x3-BN-ReLU-conv3x3-BN, shortcut = identity (2x2 average pool when downsampling)
with zero-padded extra channels. The residual add is out of place (the block's last BN may be
followed by an ANL layer whose output must not be rewritten in place).
``dropout=True``: ``Linear(C,512)-ReLU-Dropout(0.5)-Linear`` head (dropout between FC layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import head


class PyramidBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = nn.AvgPool2d(2, stride=2, ceil_mode=True) if stride != 1 else None
        self.extra = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn1(x)
        out = self.conv1(out)
        out = self.relu(self.bn2(out))
        out = self.bn3(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        if self.extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return out + shortcut


class PyramidNet(nn.Module):
    def __init__(
        self, depth: int = 110, alpha: float = 48, num_classes: int = 10, in_channels: int = 3, dropout: bool = False
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"PyramidNet depth must be 6n+2 for basic blocks, got {depth}")
        n = (depth - 2) // 6
        addrate = alpha / (3 * n)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        dim, c = 16.0, 16
        stages = []
        for stage in range(3):
            blocks = []
            for i in range(n):
                dim += addrate
                out = round(dim)
                blocks.append(PyramidBlock(c, out, 2 if (i == 0 and stage > 0) else 1))
                c = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn_final = nn.BatchNorm2d(c)
        self.relu_final = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = head(c, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu_final(self.bn_final(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))
