"""The network a config describes: input standardization (if the norm scheme wants it) + backbone.

No Lightning here, so tools that only inspect a model stay fast.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from cnnkit.config.plans import model_plan
from cnnkit.nn.layers.input_norm import InputStandardize


class Classifier(nn.Module):
    """``backbone(input_norm(x))`` → logits."""

    def __init__(self, backbone: nn.Module, input_norm: nn.Module):
        super().__init__()
        self.input_norm = input_norm
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.input_norm(x))


def build_classifier(model_cfg: Any, input_shape: Sequence[int], num_classes: int) -> Classifier:
    """Every part from the model's plan; the norm scheme also decides on input standardization."""
    plan = model_plan(model_cfg)
    backbone = plan.backbone.build(
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        norm=plan.norm,
        act=plan.act.build,
        pool=lambda kernel_size: plan.pool.build(kernel_size=kernel_size),
        bias=plan.bias,
    )
    plan.init.build()(backbone)
    input_norm = InputStandardize(tuple(input_shape)) if plan.norm.standardize_inputs else nn.Identity()
    return Classifier(backbone, input_norm)
