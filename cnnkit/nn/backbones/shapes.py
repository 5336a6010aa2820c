"""Input and feature-map shapes: the image check every CNN backbone makes, feature shapes by a probe
forward pass, and the one-line error for inputs that are too small.

Heads derive their flatten width from this, never from a hard-coded size.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from cnnkit.errors import ConfigError


class InputTooSmall(ConfigError):
    """The data's images are smaller than the backbone's downsampling allows; ``minimum`` is the least
    square size that works. The message's fix names the config key of the data that resizes them."""

    def __init__(self, message: str, minimum: int):
        super().__init__(message)
        self.minimum = minimum


def image_channels(input_shape: Sequence[int], backbone: str) -> int:
    """The channel count of a (C, H, W) input; vectors get a one-line error naming the backbone."""
    if len(input_shape) != 3:
        raise ConfigError(f"{backbone} needs image inputs (channels, height, width), got shape {tuple(input_shape)}")
    return int(input_shape[0])


def _probe(features: nn.Module, input_shape: Sequence[int]) -> Optional[torch.Size]:
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, *input_shape))
    except RuntimeError:
        return None
    finally:
        features.train(was_training)
    return out.shape[1:] if out.numel() > 0 else None


def feature_shape(features: nn.Module, input_shape: Sequence[int], backbone: str) -> torch.Size:
    """Shape of ``features(x)`` for one input; fails with the minimum square size if it is too small."""
    shape = _probe(features, input_shape)
    if shape is not None:
        return shape
    channels = input_shape[0]
    size = 1
    while size <= 4096 and _probe(features, (channels, size, size)) is None:
        size *= 2
    low, high = size // 2, size  # high works, low does not
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _probe(features, (channels, middle, middle)) is not None else (middle, high)
    raise InputTooSmall(
        f"{backbone} needs inputs of at least {high}x{high}, got {'x'.join(str(d) for d in input_shape[1:])}", high
    )
