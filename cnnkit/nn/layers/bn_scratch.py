"""BatchNorm from the course's formulas, in plain tensor operations — and how to extend the registry.

Training:   μ_B = mean(x),  σ²_B = mean((x − μ_B)²)  (biased),  x̂ = (x − μ_B) / √(σ²_B + ε),  y = γ·x̂ + β
Moving averages (PyTorch's momentum m; the course's p = 1 − m):
            μ̄ ← (1 − m)·μ̄ + m·μ_B,   σ̄² ← (1 − m)·σ̄² + m·σ²_B · n/(n − 1)  (unbiased)
Evaluation: x̂ = (x − μ̄) / √(σ̄² + ε)  — a fixed affine map.

This module registers itself like a user's module would: a layer, a NormScheme, one decorator.
It subclasses ``_BatchNorm`` only for its parameters and buffers (same names as torch's, so
checkpoints and every BN-aware tool — eval_stats, precise BN, sync BN — treat it as BatchNorm);
the forward pass below is assembled from ``bn_math``'s pieces, where each formula is written once.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.nn.layers import bn_math
from cnnkit.nn.layers.norms import BatchNorm
from cnnkit.registry import NORMS


class ScratchBatchNorm(_BatchNorm):
    """BatchNorm over dim 1 of (N, C) or (N, C, H, W) inputs, computed with plain tensor ops."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected a 2D or 4D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if self.training or not self.track_running_stats:
            mean, var = bn_math.batch_mean_var(x)  # biased variance: what normalizes the batch
            if self.training and self.track_running_stats:
                bn_math.update_running_stats(self, mean, var, x.numel() // x.shape[1])
        else:
            mean, var = self.running_mean, self.running_var
        return bn_math.layer_normalize(self, x, mean, var)


@NORMS.register(
    "bn_scratch",
    description="BatchNorm before the activation, written with plain tensor ops "
    "(the course's formulas); matches torch's BatchNorm",
)
class ScratchBatchNormPre(BatchNorm):
    order = "pre"

    def make(self, num_features: int, dim: int) -> nn.Module:
        return ScratchBatchNorm(num_features, eps=self.eps, momentum=self.momentum)
