"""ResNets for small images (He et al. 2016): CIFAR ResNet-20/56 and ResNet-18 with a CIFAR stem.

``preact: true`` gives the pre-activation variant (He et al. 2016b): norm/act → conv inside each
block and a final norm/act before pooling, each norm/act pair in the scheme's order (``bn_pre``:
BN → act → conv, ``bn_post``: act → BN → conv).

The residual joins, for every order: in the original (post-activation) block the norm scheme's
order decides the first conv's norm/act order; the second conv's norm comes before the addition
and the activation after it; a projection shortcut's norm has no activation. In the pre-activation
block the projection shortcut is a plain conv taken after the first norm/act, and the addition
ends the block (no norm or activation after it).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from cnnkit.nn.backbones.shapes import image_channels
from cnnkit.nn.layers.blocks import Bias, ConvNormAct, NormAct, use_bias
from cnnkit.nn.layers.norms import NormScheme
from cnnkit.registry import BACKBONES


class BasicBlock(nn.Module):
    """x → conv3x3 → norm/act → conv3x3 → norm, plus the shortcut, then act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: NormScheme,
        act: Callable[[], nn.Module],
        bias: Bias,
    ):
        super().__init__()
        self.shortcut = (
            nn.Identity()
            if stride == 1 and in_channels == out_channels
            else ConvNormAct(in_channels, out_channels, 1, stride, 0, norm=norm, act=None, bias=bias)
        )
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride, norm=norm, act=act, bias=bias)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm=norm, act=None, bias=bias)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        return self.act(self.conv2(self.conv1(x)) + shortcut)


class PreActBlock(nn.Module):
    """x → norm/act → conv3x3 → norm/act → conv3x3, plus the shortcut (taken after the first norm/act)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm: NormScheme,
        act: Callable[[], nn.Module],
        bias: Bias,
    ):
        super().__init__()
        self.pre1 = NormAct(in_channels, norm, act)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=use_bias(bias, _norm_first(norm)))
        self.pre2 = NormAct(out_channels, norm, act)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=use_bias(bias, False))
        self.project = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False) if self.project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pre1(x)
        shortcut = self.shortcut(out) if self.project else x
        return self.conv2(self.pre2(self.conv1(out))) + shortcut


def _norm_first(norm: NormScheme) -> bool:
    """Whether a conv followed by a NormAct of this scheme is directly followed by a norm."""
    return norm.order == "pre" and norm.make(1, 2) is not None


def resnet(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    *,
    norm: NormScheme,
    act: Callable[[], nn.Module],
    bias: Bias,
    widths: Sequence[int],
    blocks: Sequence[int],
    preact: bool,
) -> nn.Sequential:
    in_channels = image_channels(input_shape, name)
    block = PreActBlock if preact else BasicBlock
    stem = (
        nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=use_bias(bias, False))
        if preact
        else ConvNormAct(in_channels, widths[0], 3, norm=norm, act=act, bias=bias)
    )
    layers: list[nn.Module] = [stem]
    channels = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            layers.append(block(channels, width, stride, norm, act, bias))
            channels = width
    if preact:
        layers.append(NormAct(channels, norm, act))
    features = nn.Sequential(*layers)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
    return nn.Sequential(features, head)


def _register(name: str, widths: tuple[int, ...], blocks: tuple[int, ...], description: str) -> None:
    def build(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        norm: NormScheme,
        act: Callable[[], nn.Module],
        bias: Bias = "auto",
        preact: bool = False,
        width: float = 1.0,
    ) -> nn.Module:
        scaled = [max(1, round(w * width)) for w in widths]
        return resnet(
            name, input_shape, num_classes, norm=norm, act=act, bias=bias, widths=scaled, blocks=blocks, preact=preact
        )

    build.__name__ = build.__qualname__ = name
    BACKBONES.register(name, build, description=description, traits={"min_size": 1})  # global pooling


_register(
    "resnet20",
    (16, 32, 64),
    (3, 3, 3),
    "CIFAR ResNet-20 (He et al. 2016): 3 stages of 3 basic blocks, 16/32/64 channels; preact option",
)
_register(
    "resnet56", (16, 32, 64), (9, 9, 9), "CIFAR ResNet-56: 3 stages of 9 basic blocks, 16/32/64 channels; preact option"
)
_register(
    "resnet18", (64, 128, 256, 512), (2, 2, 2, 2), "ResNet-18 with a CIFAR stem (3x3 conv, no max-pool); preact option"
)
