"""Two-class logistic regression with one weight per feature and no bias (course E1).

The logits are [0, w·x], so softmax cross-entropy is the logistic loss and the model has exactly
as many parameters as features: with two features, its error surface is a picture.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.registry import BACKBONES


class Logistic(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.linear = nn.Linear(features, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x.flatten(1))
        return torch.cat([torch.zeros_like(z), z], dim=1)


@BACKBONES.register(
    "logistic",
    traits={"min_size": 1, "num_classes": 2},
    description="two-class logistic regression, logits [0, w·x], no bias: "
    "one weight per input feature (E1's error surface)",
)
def logistic(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    if num_classes != 2:
        raise ConfigError(f"logistic is a two-class model; the dataset has {num_classes} classes")
    return Logistic(math.prod(input_shape))
