"""VGG with BatchNorm in its CIFAR form (the authors' / kuangliu's layout).

Features: 3x3 convs (BN, ReLU(inplace)) and 2x2 max pools; the classifier is a single
``Linear(512, num_classes)`` after a global pool, as in the CIFAR VGGs the paper's numbers come
from (VGG-11 9.2M, VGG-16 14.7M parameters). ``dropout=True`` (Table 2, "+Dropout" for non-WRN
networks: dropout between FC layers, p=0.5) uses the classic CIFAR classifier
``Dropout-Linear(512,512)-ReLU-Dropout-Linear(512,512)-ReLU-Linear`` so that there are FC layers
to put dropout between (+0.5M parameters).

Pools use ``ceil_mode=True`` so that any input >= 1x1 survives five pools (identical to the
usual floor mode for even sizes such as 32x32); an adaptive average pool to 1x1 feeds the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

CFG = {
    # not in the paper: a small VGG-style net for 8x8 digits and quick CPU demos (~0.07M parameters)
    "vgg_tiny": [16, 16, "M", 32, 32, "M", 64, 64, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10, in_channels: int = 3, dropout: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
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


def vgg(name: str, num_classes: int = 10, in_channels: int = 3, dropout: bool = False) -> VGG:
    return VGG(CFG[name], num_classes=num_classes, in_channels=in_channels, dropout=dropout)
