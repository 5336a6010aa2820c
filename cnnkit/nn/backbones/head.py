"""The fully-connected part every classifier ends with: flatten → hidden layers → logits."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from cnnkit.nn.layers.blocks import Bias, LinearNormAct
from cnnkit.nn.layers.norms import NormScheme


def classifier_head(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    bias: Bias,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Flatten, ``hidden`` LinearNormAct layers, then a plain linear layer to the logits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers.append(LinearNormAct(width, size, norm=norm, act=act, bias=bias))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)
