"""A small conv net (conv, BN, ReLU, depthwise, pool, linear) for device and export tests."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv + BN + ReLU + depthwise conv + pool + linear."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.dw(self.stem(x))), 1))
