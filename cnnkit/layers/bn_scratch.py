"""BatchNorm from the course's formulas, in plain tensor operations — and how to extend the registry.

Training:   μ_B = mean(x),  σ²_B = mean((x − μ_B)²)  (biased),  x̂ = (x − μ_B) / √(σ²_B + ε),  y = γ·x̂ + β
Moving averages (PyTorch's momentum m; the course's p = 1 − m):
            μ̄ ← (1 − m)·μ̄ + m·μ_B,   σ̄² ← (1 − m)·σ̄² + m·σ²_B · n/(n − 1)  (unbiased)
Evaluation: x̂ = (x − μ̄) / √(σ̄² + ε)  — a fixed affine map.

This module registers itself like a user's module would: a layer, a NormScheme, one decorator.
It subclasses ``_BatchNorm`` only for its parameters and buffers (same names as torch's, so
checkpoints and every BN-aware tool — eval_stats, precise BN, sync BN — treat it as BatchNorm);
the forward pass is written out below.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..registry import NORMS
from .norms import BatchNorm


class ScratchBatchNorm(_BatchNorm):
    """BatchNorm over dim 1 of (N, C) or (N, C, H, W) inputs, computed with plain tensor ops."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected a 2D or 4D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training or not self.track_running_stats:
            mean = x.mean(dim=dims)
            var = ((x - mean.reshape(shape)) ** 2).mean(dim=dims)  # biased: what normalizes the batch
            if self.training and self.track_running_stats:
                self._update_running_stats(mean.detach(), var.detach(), x.numel() // x.shape[1])
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + self.eps)
        if self.affine:
            return x_hat * self.weight.reshape(shape) + self.bias.reshape(shape)
        return x_hat

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum  # None: plain average
        unbiased = var * n / max(n - 1, 1)
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased, alpha=m)


@NORMS.register("bn_scratch", description="BatchNorm before the activation, written with plain tensor ops "
                                          "(the course's formulas); matches torch's BatchNorm")
class ScratchBatchNormPre(BatchNorm):
    order = "pre"

    def make(self, num_features: int, dim: int) -> nn.Module:
        return ScratchBatchNorm(num_features, eps=self.eps, momentum=self.momentum)
