"""A plain CNN: [conv block → pool] × n → flatten → fully-connected head."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

from ..errors import ConfigError
from ..layers.blocks import ConvNormAct
from ..layers.norms import NormScheme
from ..registry import BACKBONES
from .head import classifier_head


def _feature_size(size: int, stages: int, kernel_size: int, pool_size: int) -> int:
    """Spatial size after ``stages`` of ("same"-padded conv, pool); < 1 means the input is too small."""
    padding = kernel_size // 2
    for _ in range(stages):
        size = size + 2 * padding - kernel_size + 1
        size = size // pool_size if size >= pool_size else 0
    return size


@BACKBONES.register("simple_cnn", aliases=("cnn",),
                    description="conv blocks (conv → norm/act, pool) → flatten → fully-connected head")
def simple_cnn(input_shape: Sequence[int], num_classes: int, *, norm: NormScheme, act: Callable[[], nn.Module],
               pool: Callable[..., nn.Module], bias: str | bool = "auto", channels: Sequence[int] = (32, 64),
               kernel_size: int = 3, pool_size: int = 2, hidden: Sequence[int] = (128,),
               dropout: float = 0.0) -> nn.Module:
    if len(input_shape) != 3:
        raise ConfigError(f"simple_cnn needs image inputs (channels, height, width), got shape {tuple(input_shape)}")
    in_channels, height, width = input_shape
    probe = pool(kernel_size=pool_size)
    stride = getattr(probe, "kernel_size", pool_size)
    stride = stride[0] if isinstance(stride, tuple) else stride
    out_h, out_w = (_feature_size(s, len(channels), kernel_size, stride) for s in (height, width))
    if out_h < 1 or out_w < 1:
        minimum = next(s for s in range(1, 4096) if _feature_size(s, len(channels), kernel_size, stride) >= 1)
        raise ConfigError(
            f"simple_cnn with {len(channels)} conv stages and pooling {stride} needs inputs of at least "
            f"{minimum}x{minimum}, got {height}x{width}; use fewer model.backbone.channels, "
            f"model.pool=none, or a larger data.dataset.image_size"
        )
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers.append(ConvNormAct(in_channels, out_channels, kernel_size, norm=norm, act=act, bias=bias))
        layers.append(pool(kernel_size=pool_size))
        in_channels = out_channels
    features = nn.Sequential(*layers)
    head = classifier_head(in_channels * out_h * out_w, hidden, num_classes, norm=norm, act=act,
                           bias=bias, dropout=dropout)
    return nn.Sequential(features, head)
