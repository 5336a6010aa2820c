"""Training augmentation by name, from torchvision.transforms.v2, applied to float images.

Transforms that take a ``size`` get the dataset's input size unless the spec sets one. Those that
also implement ``apply_batch(x, generator)`` — the same augmentation as a few tensor ops on a
whole batch — let the tensor-resident data path (``data.loader: tensor``) keep everything on the
training device.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from ..registry import TRANSFORMS


def _uniform_int(high: int, count: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, (count,), generator=generator, device=device)


def _side(size) -> int:
    return min(size) if isinstance(size, (tuple, list)) else int(size)


class RandomCrop(v2.RandomCrop):
    """Random crop of the input size after zero padding; batched: one offset per image.

    The padding defaults to an eighth of the side (4 px at 32 px, as for CIFAR; 1 px on 8x8 digits).
    """

    def __init__(self, size, padding: Optional[int] = None, **kwargs):
        super().__init__(size, padding=max(1, _side(size) // 8) if padding is None else padding, **kwargs)

    def apply_batch(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        pad = self.padding[0] if self.padding else 0
        n, c, h, w = x.shape
        out_h, out_w = self.size
        padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
        dy = _uniform_int(padded.shape[2] - out_h + 1, n, generator, x.device)
        dx = _uniform_int(padded.shape[3] - out_w + 1, n, generator, x.device)
        rows = (dy[:, None] + torch.arange(out_h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(out_w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]


class HorizontalFlip(v2.RandomHorizontalFlip):
    """Mirror left-right with probability p; batched: one coin per image."""

    def apply_batch(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


class Cutout(torch.nn.Module):
    """Zero a random square of side ``length`` (clipped at the border) in each image (DeVries & Taylor 2017).

    ``length`` defaults to a quarter of the input side (8 px at 32 px); 8 px would blank an 8x8 digit.
    """

    def __init__(self, length: Optional[int] = None, size=None):
        super().__init__()
        if length is None:
            length = max(1, _side(size) // 4) if size is not None else 8
        self.length = length

    def _mask(self, n: int, h: int, w: int, generator: Optional[torch.Generator], device) -> torch.Tensor:
        cy = _uniform_int(h, n, generator, device)[:, None, None]
        cx = _uniform_int(w, n, generator, device)[:, None, None]
        ys = torch.arange(h, device=device)[None, :, None]
        xs = torch.arange(w, device=device)[None, None, :]
        top, left = cy - self.length // 2, cx - self.length // 2
        inside = (ys >= top) & (ys < top + self.length) & (xs >= left) & (xs < left + self.length)
        return (~inside)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._mask(1, x.shape[-2], x.shape[-1], None, x.device)[0]

    def apply_batch(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return x * self._mask(x.shape[0], x.shape[2], x.shape[3], generator, x.device)


TRANSFORMS.register("random_crop", RandomCrop,
                    description="random crop of the input size after zero padding (default side/8); batched")
TRANSFORMS.register("random_resized_crop", v2.RandomResizedCrop,
                    description="random scale/aspect crop resized to the input size (Inception-style)")
TRANSFORMS.register("horizontal_flip", HorizontalFlip, aliases=("hflip", "flip"),
                    description="mirror left-right with probability p (default 0.5); batched")
TRANSFORMS.register("cutout", Cutout, description="zero a random length x length square (default side/4); batched")
TRANSFORMS.register("color_jitter", v2.ColorJitter, brightness=0.2, contrast=0.2, saturation=0.2,
                    description="random brightness/contrast/saturation (and hue) changes")
TRANSFORMS.register("trivial_augment", v2.TrivialAugmentWide,
                    description="TrivialAugment (Müller & Hutter 2021): one random op of random strength")
