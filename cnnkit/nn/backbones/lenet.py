"""LeNet-5 (LeCun et al. 1998) for small grayscale images, with any norm/activation/pooling."""

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
    "lenet",
    aliases=("lenet5",),
    traits={"min_size": 12},
    description="LeNet-5: conv5x5(6) → pool → conv5x5(16) → pool → FC 120 → FC 84 → classes",
)
def lenet(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    pool: Callable[..., nn.Module],
    bias: Bias = "auto",
    channels: Sequence[int] = (6, 16),
    hidden: Sequence[int] = (120, 84),
) -> nn.Module:
    """The first conv is padded by 2, so 28x28 MNIST maps like the original's 32x32 input (16·5·5 = 400)."""
    in_channels = image_channels(input_shape, "lenet")
    features = nn.Sequential(
        ConvNormAct(in_channels, channels[0], 5, padding=2, norm=norm, act=act, bias=bias),
        pool(kernel_size=2),
        ConvNormAct(channels[0], channels[1], 5, padding=0, norm=norm, act=act, bias=bias),
        pool(kernel_size=2),
    )
    flat = math.prod(feature_shape(features, input_shape, "lenet"))
    return nn.Sequential(features, classifier_head(flat, hidden, num_classes, norm=norm, act=act, bias=bias))
