"""Pixel values: images are stored as uint8 in [0, 255] and trained on as float in [0, 1]."""

from __future__ import annotations

import torch


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float32 in [0, 1]; float images (already in [0, 1]) become float32 as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float pixel values in [0, 255] (e.g. a resampled uint8 image) → uint8, rounded and clipped."""
    return x.round().clamp(0, 255).to(torch.uint8)
