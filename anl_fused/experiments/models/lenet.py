"""LeNet-5 as in the paper's footnote 1: CONV-ANL-RELU-POOL-CONV-ANL-RELU-POOL-FC-RELU-FC-RELU-FC.

No BatchNorm, so ANL goes after each conv (``insert_anl(model, eps, after="conv")``).
Both 5x5 convs use padding 2 (size preserving) so that inputs as small as 8x8 (scikit-learn's
digits) work; an adaptive average pool to 4x4 gives the classic 16*4*4 = 256 features of
LeNet-5 on 28x28 images. ``dropout=True`` puts Dropout(0.5) between the FC layers (Table 2).
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, padding=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        drop = (lambda: [nn.Dropout(0.5)]) if dropout else (lambda: [])
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 120), nn.ReLU(inplace=True), *drop(),
            nn.Linear(120, 84), nn.ReLU(inplace=True), *drop(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


def lenet5(num_classes: int = 10, in_channels: int = 1, dropout: bool = False) -> LeNet5:
    return LeNet5(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
