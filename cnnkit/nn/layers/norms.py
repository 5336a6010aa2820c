"""Normalization schemes: which layer, where it sits relative to the activation, what it needs.

A scheme is chosen by name (``model.norm: bn_pre``) and hands blocks a layer factory and an
order, so backbones never branch on a norm's name. Its traits — ``order``,
``standardize_inputs``, ``batch_stats`` — are class attributes, readable without building it.

Momentum follows PyTorch: ``momentum`` is the weight of the *new* batch,
running ← (1 − momentum)·running + momentum·batch. The course's moving-average factor p is
1 − momentum (PyTorch's default 0.1 is the course's p = 0.9).
"""

from __future__ import annotations

import math

from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.registry import NORMS

ORDERS = ("pre", "post")


class NormScheme:
    """Base class of a normalization scheme; subclass it to add your own (see the README)."""

    order: str = "pre"  # "pre": conv/linear → norm → act; "post": conv/linear → act → norm
    standardize_inputs: bool = True  # the model standardizes its inputs with train-split statistics
    batch_stats: bool = False  # the layer normalizes with statistics of the current batch

    def make(self, num_features: int, dim: int) -> nn.Module | None:
        """The layer for ``num_features`` channels (dim 2: feature maps, 1: vectors); None = none."""
        return None

    @classmethod
    def describe_traits(cls) -> str:
        inputs = "standardized inputs" if cls.standardize_inputs else "raw inputs"
        side = "before" if cls.order == "pre" else "after"
        where = "no layer" if cls.make is NormScheme.make else f"norm {side} activation"
        stats = ", batch statistics" if cls.batch_stats else ""
        return f"{where}, {inputs}{stats}"


@NORMS.register("none", description="no normalization at all: inputs as loaded, nothing inside the network")
class NoNorm(NormScheme):
    standardize_inputs = False


@NORMS.register(
    "input",
    aliases=("feature_norm",),
    description="feature normalization of the inputs only (train-split mean/std), nothing inside",
)
class InputNorm(NormScheme):
    standardize_inputs = True


class BatchNorm(NormScheme):
    """BatchNorm (Ioffe & Szegedy 2015); momentum is PyTorch's (course p = 1 − momentum)."""

    batch_stats = True

    def __init__(self, momentum: float | None = 0.1, eps: float = 1e-5):
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ConfigError(
                f"BatchNorm momentum must be in [0, 1] (PyTorch's convention: the weight of the new batch; "
                f"the course's p = 1 - momentum), got {momentum}"
            )
        if eps <= 0:
            raise ConfigError(f"BatchNorm eps must be > 0, got {eps}")
        self.momentum = momentum
        self.eps = eps

    def make(self, num_features: int, dim: int) -> nn.Module:
        layer = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        return layer(num_features, eps=self.eps, momentum=self.momentum)


@NORMS.register(
    "bn_pre",
    aliases=("bn", "batchnorm"),
    description="BatchNorm before the activation (conv → BN → act), standardized inputs",
)
class BatchNormPre(BatchNorm):
    order = "pre"


@NORMS.register("bn_post", description="BatchNorm after the activation (conv → act → BN), standardized inputs")
class BatchNormPost(BatchNorm):
    order = "post"


@NORMS.register(
    "gn", aliases=("groupnorm",), description="GroupNorm (Wu & He 2018): batch-independent, before the activation"
)
class GroupNorm(NormScheme):
    """GroupNorm with up to ``groups`` groups (the largest divisor of the channel count ≤ groups)."""

    def __init__(self, groups: int = 32, eps: float = 1e-5):
        if groups < 1:
            raise ConfigError(f"GroupNorm groups must be >= 1, got {groups}")
        self.groups = groups
        self.eps = eps

    def make(self, num_features: int, dim: int) -> nn.Module:
        groups = math.gcd(self.groups, num_features)
        return nn.GroupNorm(groups, num_features, eps=self.eps)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each position of an (N, C, H, W) map (ConvNeXt style)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@NORMS.register(
    "ln", aliases=("layernorm",), description="LayerNorm over channels at each position, before the activation"
)
class LayerNorm(NormScheme):
    def __init__(self, eps: float = 1e-5):
        self.eps = eps

    def make(self, num_features: int, dim: int) -> nn.Module:
        return ChannelLayerNorm(num_features, eps=self.eps) if dim == 2 else nn.LayerNorm(num_features, eps=self.eps)
