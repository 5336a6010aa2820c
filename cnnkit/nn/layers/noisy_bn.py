"""BatchNorm followed by Santurkar et al.'s noise: a "noisy BN" with unstable activation distributions.

After each BN, in training: a ← s·a + m, with per layer and step μ ~ U(−0.5, 0.5), σ ~ U(1, 1.25),
and per element m ~ U(μ − 0.1, μ + 0.1), s ~ N(σ, 0.1). Evaluation is noise-free. The point:
such a network still trains about as well as with plain BN, so BN's benefit is not the stable
("covariate-shift-free") distribution of layer inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.nn.layers.norms import BatchNorm
from cnnkit.registry import NORMS


class DistributionNoise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        mu = torch.empty((), device=x.device).uniform_(-0.5, 0.5)
        sigma = torch.empty((), device=x.device).uniform_(1.0, 1.25)
        shift = torch.empty_like(x).uniform_(-0.1, 0.1) + mu
        scale = torch.randn_like(x) * 0.1 + sigma
        return scale * x + shift


@NORMS.register(
    "noisy_bn",
    description="BatchNorm + Santurkar et al.'s random shift/scale noise after it "
    "(training only), before the activation",
)
class NoisyBatchNorm(BatchNorm):
    order = "pre"

    def make(self, num_features: int, dim: int) -> nn.Module:
        return nn.Sequential(super().make(num_features, dim), DistributionNoise())
