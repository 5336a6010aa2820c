"""The network a config describes: input standardization (if the norm scheme wants it) + backbone.

No Lightning here, so tools that only inspect a model stay fast.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .config import to_plain
from .layers.input_norm import InputStandardize
from .registry import ACTIVATIONS, BACKBONES, INITS, NORMS, POOLINGS


class Classifier(nn.Module):
    """``backbone(input_norm(x))`` → logits."""

    def __init__(self, backbone: nn.Module, input_norm: nn.Module):
        super().__init__()
        self.input_norm = input_norm
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.input_norm(x))


def _bias(value: Any) -> str | bool:
    return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value


def build_classifier(model_cfg: Any, input_shape: Sequence[int], num_classes: int) -> Classifier:
    """Every part by name from the registry; the norm scheme also decides on input standardization."""
    norm = NORMS.build(to_plain(model_cfg.norm))
    act_spec, pool_spec = to_plain(model_cfg.act), to_plain(model_cfg.pool)
    inputs = {
        "input_shape": tuple(input_shape),
        "num_classes": num_classes,
        "norm": norm,
        "act": lambda: ACTIVATIONS.build(act_spec),
        "pool": lambda kernel_size: POOLINGS.build(pool_spec, kernel_size=kernel_size),
        "bias": _bias(model_cfg.bias),
    }
    backbone = BACKBONES.build(to_plain(model_cfg.backbone), optional=inputs)
    INITS.build(to_plain(model_cfg.init))(backbone)
    input_norm = InputStandardize(tuple(input_shape)) if norm.standardize_inputs else nn.Identity()
    return Classifier(backbone, input_norm)
