"""BatchNorm's arithmetic, written once: batch moments, normalize-and-affine, running statistics.

Every BN-shaped computation in cnnkit — the course's ``bn_scratch``, evaluation with batch
statistics, all-reduce BN, precise BN, input feature normalization — is built from these pieces,
so a fix or a convention (PyTorch's momentum, the unbiased running variance) lives in one place.

Conventions (PyTorch's): momentum ``m`` weights the new batch, ``μ̄ ← (1 − m)·μ̄ + m·μ_B`` (the
course's ``p = 1 − m``; ``None`` = a plain average over the batches so far); the batch is
normalized with its biased variance, the running variance stores the unbiased one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def channel_dims(x: torch.Tensor) -> list[int]:
    """The dims BN reduces over: all but the channel dim 1 of (N, C) or (N, C, ...)."""
    return [0] + list(range(2, x.dim()))


def per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (C,) tensor shaped to broadcast over ``like``'s channel dim."""
    return t.reshape([1, -1] + [1] * (like.dim() - 2))


def batch_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of one batch (what normalizes it in training)."""
    dims = channel_dims(x)
    return x.mean(dim=dims), x.var(dim=dims, unbiased=False)


def normalize(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """γ·(x − μ)/√(σ² + ε) + β with (C,) statistics and affine parameters."""
    y = (x - per_channel(mean, x)) * torch.rsqrt(per_channel(var, x) + eps)
    if weight is not None:
        y = y * per_channel(weight, x) + per_channel(bias, x)
    return y


def layer_normalize(layer: _BatchNorm, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``normalize`` with a BN layer's ε and (if it has them) affine parameters."""
    if layer.affine:
        return normalize(x, mean, var, layer.eps, layer.weight, layer.bias)
    return normalize(x, mean, var, layer.eps)


def unbiased(var: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """Bessel's correction n/(n − 1) of a biased variance over ``count`` values (a count of 1 keeps it)."""
    count = torch.as_tensor(count, dtype=var.dtype, device=var.device)
    return var * count / (count - 1).clamp_min(1)


@torch.no_grad()
def update_running_stats(layer: _BatchNorm, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor | int) -> None:
    """One moving-average step of ``layer``'s buffers from a batch's mean and biased variance."""
    layer.num_batches_tracked += 1
    m = 1.0 / float(layer.num_batches_tracked) if layer.momentum is None else layer.momentum
    layer.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
    layer.running_var.mul_(1 - m).add_(unbiased(var.detach(), count), alpha=m)


@torch.no_grad()
def set_running_stats(layer: _BatchNorm, mean: torch.Tensor, var_unbiased: torch.Tensor) -> None:
    """Replace ``layer``'s running statistics (precise BN: exact population statistics)."""
    layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
    layer.running_var.copy_(var_unbiased.to(layer.running_var.dtype))


@dataclass
class Moments:
    """Per-channel count, sum and sum of squares: added batch by batch, summed across processes.

    Sums of powers (not a running mean) so that shards combine by plain addition — an all-reduce.
    ``dtype=torch.float64`` keeps a pass over a large data set exact enough; ``None`` keeps the
    input's dtype and its autograd graph (all-reduce BN's training statistics).
    """

    total: torch.Tensor
    total_sq: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(
        cls, channels: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> "Moments":
        return cls(
            torch.zeros(channels, dtype=dtype, device=device),
            torch.zeros(channels, dtype=dtype, device=device),
            torch.zeros((), dtype=dtype, device=device),
        )

    @classmethod
    def of(cls, x: torch.Tensor, dtype: Optional[torch.dtype] = None) -> "Moments":
        flat = x.to(dtype or x.dtype).transpose(0, 1).reshape(x.shape[1], -1)
        count = torch.tensor(flat.shape[1], dtype=flat.dtype, device=flat.device)
        return cls(flat.sum(1), (flat * flat).sum(1), count)

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch (no autograd: statistics passes)."""
        batch = Moments.of(x, self.total.dtype)
        self.total += batch.total
        self.total_sq += batch.total_sq
        self.count += batch.count

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> "Moments":
        """The moments over all processes; ``reduce`` sums one packed tensor (in place or not)."""
        channels = self.total.shape[0]
        packed = reduce(torch.cat([self.total, self.total_sq, self.count.reshape(1)]))
        return Moments(packed[:channels], packed[channels : 2 * channels], packed[-1])

    @property
    def mean(self) -> torch.Tensor:
        return self.total / self.count

    def var(self) -> torch.Tensor:
        """Biased (population) variance; rounding cannot make it negative."""
        mean = self.mean
        return (self.total_sq / self.count - mean * mean).clamp_min(0)
