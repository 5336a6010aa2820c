"""The fully-connected baseline: every input pixel is a separate feature, no sharing."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from cnnkit.nn.backbones.head import classifier_head
from cnnkit.nn.layers.blocks import Bias
from cnnkit.nn.layers.norms import NormScheme
from cnnkit.registry import BACKBONES


@BACKBONES.register(
    "mlp",
    aliases=("fc",),
    traits={"min_size": 1},
    description="flatten → hidden fully-connected layers (norm + act each) → classifier",
)
def mlp(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    bias: Bias = "auto",
    hidden: Sequence[int] = (100, 100, 100),
    dropout: float = 0.0,
) -> nn.Module:
    """Ioffe & Szegedy's MNIST network is ``hidden: [100, 100, 100]`` with sigmoid."""
    return classifier_head(math.prod(input_shape), hidden, num_classes, norm=norm, act=act, bias=bias, dropout=dropout)
