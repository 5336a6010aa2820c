"""Feature normalization of the inputs: the course's first remedy for a bad error surface.

The statistics come from the train split only and live in buffers, so they travel with the
checkpoint and a reloaded model standardizes exactly as it did in training.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.nn.layers import bn_math

MIN_STD = 1e-3  # digits has pixels that are constant over the data set


class InputStandardize(nn.Module):
    """(x − mean) / std per channel for images (C, H, W), per feature for vectors (F,)."""

    def __init__(self, input_shape: tuple[int, ...]):
        super().__init__()
        stat_shape = (input_shape[0],) + (1,) * (len(input_shape) - 1)
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("std", torch.ones(stat_shape))

    @torch.no_grad()
    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.copy_(std.reshape(self.std.shape).clamp_min(MIN_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[0]}"


def channel_statistics(batches, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (population) std per channel/feature over an iterable of input batches.

    Sums in float64 so a pass over a large image folder does not lose precision.
    """
    moments = bn_math.Moments.zeros(channels)
    for x in batches:
        moments.add(x)
    return moments.mean.float(), moments.var().sqrt().float()
