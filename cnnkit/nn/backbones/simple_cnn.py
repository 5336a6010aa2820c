"""A plain CNN: [conv block → pool] × n → flatten → fully-connected head."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from cnnkit.nn.backbones.head import classifier_head
from cnnkit.nn.backbones.shapes import feature_shape, image_channels
from cnnkit.nn.layers.blocks import Bias, ConvNormAct
from cnnkit.nn.layers.norms import NormScheme
from cnnkit.registry import BACKBONES


@BACKBONES.register(
    "simple_cnn",
    aliases=("cnn",),
    traits={"min_size": 4},
    description="conv blocks (conv → norm/act, pool) → flatten → fully-connected head",
)
def simple_cnn(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    pool: Callable[..., nn.Module],
    bias: Bias = "auto",
    channels: Sequence[int] = (32, 64),
    kernel_size: int = 3,
    pool_size: int = 2,
    hidden: Sequence[int] = (128,),
    dropout: float = 0.0,
) -> nn.Module:
    in_channels = image_channels(input_shape, "simple_cnn")
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers.append(ConvNormAct(in_channels, out_channels, kernel_size, norm=norm, act=act, bias=bias))
        layers.append(pool(kernel_size=pool_size))
        in_channels = out_channels
    features = nn.Sequential(*layers)
    flat = math.prod(feature_shape(features, input_shape, "simple_cnn"))
    head = classifier_head(flat, hidden, num_classes, norm=norm, act=act, bias=bias, dropout=dropout)
    return nn.Sequential(features, head)
