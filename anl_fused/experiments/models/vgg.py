"""VGG with BatchNorm in its CIFAR form (the authors' / kuangliu's layout): 3x3 convs (BN, ReLU) and 2x2 max pools
(``ceil_mode``: any input survives five pools), a global pool, one ``Linear(512, num_classes)`` (VGG-11 9.2M, VGG-16
14.7M parameters). ``dropout=True`` (Table 2 "+Dropout") uses the classic CIFAR classifier
``Dropout-Linear(512,512)-ReLU-Dropout-Linear(512,512)-ReLU-Linear``, FC layers to put dropout between.
"""

from __future__ import annotations

import torch
from torch import nn

from .pool import MaxPool2d

CFG = {
    # not in the paper: a small VGG-style net for 8x8 digits and quick CPU demos (~0.07M parameters)
    "vgg_tiny": [16, 16, "M", 32, 32, "M", 64, 64, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10, in_channels: int = 3, dropout: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(c, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        if dropout:
            self.classifier = nn.Sequential(
                nn.Dropout(0.5),
                nn.Linear(c, 512),
                nn.ReLU(inplace=True),
                nn.Dropout(0.5),
                nn.Linear(512, 512),
                nn.ReLU(inplace=True),
                nn.Linear(512, num_classes),
            )
        else:
            self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
