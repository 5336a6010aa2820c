"""CIFAR-style VGG (Simonyan & Zisserman 2015): 3x3 convs, pooling between stages, a small head.

The network of Santurkar et al.'s study of why BatchNorm helps. ``width`` scales every channel
count (0.25 makes a CPU-sized VGG).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.nn.backbones.head import classifier_head
from cnnkit.nn.backbones.shapes import feature_shape, image_channels
from cnnkit.nn.layers.blocks import Bias, ConvNormAct
from cnnkit.nn.layers.norms import NormScheme
from cnnkit.registry import BACKBONES

# Channel widths per stage, each stage ending in a pooling layer (the VGG paper's A, B and D).
STAGES = {
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def vgg(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    pool: Callable[..., nn.Module],
    bias: Bias,
    width: float,
    hidden: Sequence[int],
    dropout: float,
) -> nn.Sequential:
    if width <= 0:
        raise ConfigError(f"{name}: width must be > 0, got {width}")
    in_channels = image_channels(input_shape, name)
    layers: list[nn.Module] = []
    for stage in STAGES[name]:
        for channels in stage:
            out_channels = max(1, round(channels * width))
            layers.append(ConvNormAct(in_channels, out_channels, 3, norm=norm, act=act, bias=bias))
            in_channels = out_channels
        layers.append(pool(kernel_size=2))
    features = nn.Sequential(*layers)
    flat = math.prod(feature_shape(features, input_shape, name))
    hidden = [max(1, round(h * width)) for h in hidden]
    return nn.Sequential(
        features, classifier_head(flat, hidden, num_classes, norm=norm, act=act, bias=bias, dropout=dropout)
    )


def _register(name: str, layers: int) -> None:
    def build(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        norm: NormScheme,
        act: Callable[[], nn.Module],
        pool: Callable[..., nn.Module],
        bias: Bias = "auto",
        width: float = 1.0,
        hidden: Sequence[int] = (512,),
        dropout: float = 0.0,
    ) -> nn.Module:
        return vgg(
            name,
            input_shape,
            num_classes,
            norm=norm,
            act=act,
            pool=pool,
            bias=bias,
            width=width,
            hidden=hidden,
            dropout=dropout,
        )

    build.__name__ = build.__qualname__ = name
    BACKBONES.register(
        name,
        build,
        traits={"min_size": 32},
        description=f"CIFAR-style VGG-{layers}: 3x3 convs in 5 pooled stages, small FC head; width multiplier",
    )


_register("vgg11", 11)
_register("vgg13", 13)
_register("vgg16", 16)
