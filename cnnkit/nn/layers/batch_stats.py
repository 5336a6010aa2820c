"""Evaluate BatchNorm with the statistics of each batch instead of its moving averages.

The course's point about BN at test time is that batch statistics make a prediction depend on
the rest of the batch (and are undefined for a batch of one in PyTorch). This lets a user
measure that: the running buffers are neither read nor updated, and a batch of one is defined
(the input equals its own mean, so the layer outputs β).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.nn.layers import bn_math


def _batch_stat_forward(layer: _BatchNorm, x: torch.Tensor) -> torch.Tensor:
    mean, var = bn_math.batch_mean_var(x)
    return bn_math.layer_normalize(layer, x, mean, var)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """Inside the block, every BatchNorm layer (any ``_BatchNorm``) normalizes with batch statistics."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    for layer in layers:
        layer.forward = _batch_stat_forward.__get__(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
