"""The one block every backbone is made of: a weight layer, its norm and its activation.

The norm scheme decides the order (cf. mmcv's ``ConvModule(order=...)``), so one block serves
``none``, ``input``, ``bn_pre``, ``bn_post`` and any norm a user registers. Norm and activation
stay separate child modules, which keeps ``SyncBatchNorm.convert_sync_batchnorm`` working.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Literal, Union

from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.nn.layers.norms import ORDERS, NormScheme

Bias = Union[bool, Literal["auto"]]
BIAS_CHOICES = ("auto", "true", "false")


def parse_bias(value: Any) -> Bias:
    """``model.bias`` as blocks take it: ``"auto"``, True or False (YAML booleans or their spellings)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in BIAS_CHOICES:
        raise ConfigError(f"bias must be one of {', '.join(BIAS_CHOICES)}, got {value!r}")
    return "auto" if text == "auto" else text == "true"


def use_bias(bias: Bias | str, norm_follows: bool) -> bool:
    """``auto`` drops the bias only where a norm directly follows (its β makes the bias redundant)."""
    bias = parse_bias(bias)  # blocks built by hand may spell it "true"; from a config it arrives parsed
    return not norm_follows if bias == "auto" else bias


def norm_act_order(
    norm: NormScheme, norm_layer: nn.Module | None, act_layer: nn.Module | None
) -> list[tuple[str, nn.Module]]:
    """``[("norm", ...), ("act", ...)]`` in the scheme's order (``post`` puts the activation first), without Nones."""
    if norm.order not in ORDERS:
        raise ConfigError(f"norm order must be one of {', '.join(ORDERS)}, got {norm.order!r}")
    ordered = [("norm", norm_layer), ("act", act_layer)]
    if norm.order == "post":
        ordered.reverse()
    return [(name, layer) for name, layer in ordered if layer is not None]


class WeightNormAct(nn.Sequential):
    """``weight`` → norm → act (order ``pre``) or ``weight`` → act → norm (order ``post``)."""

    dim = 1
    weight_name = "weight_layer"

    def __init__(
        self,
        make_weight: Callable[[bool], nn.Module],
        out_features: int,
        norm: NormScheme,
        act: Callable[[], nn.Module] | None,
        bias: Bias,
    ):
        norm_layer = norm.make(out_features, self.dim)
        norm_follows = norm_layer is not None and (norm.order == "pre" or act is None)
        layers = OrderedDict([(self.weight_name, make_weight(use_bias(bias, norm_follows)))])
        layers.update(norm_act_order(norm, norm_layer, act() if act is not None else None))
        super().__init__(layers)


class NormAct(nn.Sequential):
    """Norm and activation with no weight layer, in the scheme's order: ``pre`` → norm → act,
    ``post`` → act → norm. Pre-activation blocks put it before their convs (BN → act → conv for
    ``bn_pre``, act → BN → conv for ``bn_post``)."""

    def __init__(self, num_features: int, norm: NormScheme, act: Callable[[], nn.Module], dim: int = 2):
        super().__init__(OrderedDict(norm_act_order(norm, norm.make(num_features, dim), act())))


class ConvNormAct(WeightNormAct):
    """Conv2d + norm + activation; padding defaults to ``kernel_size // 2`` ("same" at stride 1)."""

    dim = 2
    weight_name = "conv"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        *,
        norm: NormScheme,
        act: Callable[[], nn.Module] | None,
        bias: Bias = "auto",
    ):
        padding = kernel_size // 2 if padding is None else padding
        super().__init__(
            lambda b: nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=b),
            out_channels,
            norm,
            act,
            bias,
        )


class LinearNormAct(WeightNormAct):
    """Linear + norm + activation."""

    dim = 1
    weight_name = "linear"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        norm: NormScheme,
        act: Callable[[], nn.Module] | None,
        bias: Bias = "auto",
    ):
        super().__init__(lambda b: nn.Linear(in_features, out_features, bias=b), out_features, norm, act, bias)
