"""The sample CNNs of the course's image-classification homework (HW3, food-11), as published.

With ``norm: bn_pre`` and ``bias: true`` (the course's convs keep their biases) each equals the
course's model layer for layer. The fully-connected head has no norm, as in the course; its
input width follows the input size (128x128 gives the course's 256·8·8 and 512·4·4).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from cnnkit.nn.backbones.head import classifier_head
from cnnkit.nn.backbones.shapes import feature_shape, image_channels
from cnnkit.nn.layers.blocks import Bias, ConvNormAct
from cnnkit.nn.layers.norms import NoNorm, NormScheme
from cnnkit.registry import BACKBONES

COURSE_INPUT = (3, 128, 128)
COURSE_CLASSES = 11


def course_cnn(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    pool: Callable[..., nn.Module],
    bias: Bias,
    channels: Sequence[int],
    pools: Sequence[int],
    hidden: Sequence[int],
) -> nn.Sequential:
    in_channels = image_channels(input_shape, name)
    layers: list[nn.Module] = []
    for out_channels, pool_size in zip(channels, pools):
        layers.append(ConvNormAct(in_channels, out_channels, 3, 1, 1, norm=norm, act=act, bias=bias))
        layers.append(pool(kernel_size=pool_size))
        in_channels = out_channels
    features = nn.Sequential(*layers)
    flat = math.prod(feature_shape(features, input_shape, name))
    return nn.Sequential(features, classifier_head(flat, hidden, num_classes, norm=NoNorm(), act=act, bias=bias))


@BACKBONES.register(
    "hw3_2021",
    traits={"min_size": 16},
    description="course HW3 2021 sample: 3 conv blocks 64/128/256, pools 2/2/4, FC 256 → 256 → 11 (128x128 input)",
)
def hw3_2021(
    input_shape: Sequence[int] = COURSE_INPUT,
    num_classes: int = COURSE_CLASSES,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    pool: Callable[..., nn.Module],
    bias: Bias = "auto",
) -> nn.Module:
    return course_cnn(
        "hw3_2021",
        input_shape,
        num_classes,
        norm=norm,
        act=act,
        pool=pool,
        bias=bias,
        channels=(64, 128, 256),
        pools=(2, 2, 4),
        hidden=(256, 256),
    )


@BACKBONES.register(
    "hw3_2022",
    traits={"min_size": 32},
    description="course HW3 2022 sample: 5 conv blocks 64→512, pools of 2, FC 1024 → 512 → 11 (128x128 input)",
)
def hw3_2022(
    input_shape: Sequence[int] = COURSE_INPUT,
    num_classes: int = COURSE_CLASSES,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    pool: Callable[..., nn.Module],
    bias: Bias = "auto",
) -> nn.Module:
    return course_cnn(
        "hw3_2022",
        input_shape,
        num_classes,
        norm=norm,
        act=act,
        pool=pool,
        bias=bias,
        channels=(64, 128, 256, 512, 512),
        pools=(2, 2, 2, 2, 2),
        hidden=(1024, 512),
    )
