"""Pooling by name. Each entry takes ``kernel_size`` (stride = kernel size)."""

import torch
from torch import nn

from cnnkit.registry import POOLINGS


class MinPool2d(nn.MaxPool2d):
    """The minimum of each window (the course lists it beside max and mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -super().forward(-x)


class NoPool(nn.Identity):
    """No pooling: keeps the feature map's size."""

    def __init__(self, kernel_size: int = 2):
        super().__init__()
        self.kernel_size = 1


POOLINGS.register("max", nn.MaxPool2d, description="maximum of each window")
POOLINGS.register("avg", nn.AvgPool2d, aliases=("mean",), description="mean of each window")
POOLINGS.register("min", MinPool2d, description="minimum of each window")
POOLINGS.register("none", NoPool, description="no pooling (identity): the feature map keeps its size")
