"""LeNet-5 as in the paper's footnote 1: CONV-ANL-RELU-POOL-CONV-ANL-RELU-POOL-FC-RELU-FC-RELU-FC.

``CONV(6, 5x5, pad 2) - RELU - POOL(2) - CONV(16, 5x5) - RELU - POOL(2) - FC(120) - RELU - FC(84) - RELU - FC(10)``:
on 28x28 (Fashion-MNIST) the maps are 28 -> 14 -> 10 -> 5, 400 features feed FC(120); 61,706 parameters. No
BatchNorm: ANL goes after each conv. ``dropout=True``: Dropout(0.5) between the FC layers (Table 2). An input smaller
than 28x28 (8x8 digits) is zero-padded, centred, to 28x28; a larger one reaches FC(120) through an adaptive average
pool to 5x5; at 28x28 the network is exactly the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pool import MaxPool2d

#: the input size the network is designed for (Fashion-MNIST); smaller inputs are padded to it
INPUT_SIZE = 28
#: the spatial size of the last feature maps at INPUT_SIZE (16 x 5 x 5 = 400 features)
FEATURE_SIZE = 5


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = MaxPool2d(2, 2)
        drop = (lambda: [nn.Dropout(0.5)]) if dropout else (lambda: [])
        self.classifier = nn.Sequential(
            nn.Linear(16 * FEATURE_SIZE * FEATURE_SIZE, 120),
            nn.ReLU(inplace=True),
            *drop(),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            *drop(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < INPUT_SIZE or w < INPUT_SIZE:  # shapes only: no device read
            ph, pw = max(INPUT_SIZE - h, 0), max(INPUT_SIZE - w, 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        if x.shape[-2:] != (FEATURE_SIZE, FEATURE_SIZE):
            x = F.adaptive_avg_pool2d(x, FEATURE_SIZE)
        return self.classifier(torch.flatten(x, 1))
