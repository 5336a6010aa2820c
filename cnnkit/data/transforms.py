"""Training augmentation by name, from torchvision.transforms.v2, applied to float images.

Transforms that take a ``size`` get the dataset's input size unless the spec sets one. Those that
also implement ``apply_batch(x, generator)`` — the same augmentation as a few tensor ops on a
whole batch — let the tensor-resident data path (``data.loader: tensor``) keep everything on the
training device.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cnnkit.registry import TRANSFORMS


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


def resized_crops(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box (top, left, height, width) resized to ``size``, bilinearly, in one ``grid_sample``.

    The sampling points are those of ``torchvision``'s ``resized_crop`` without antialiasing: output
    pixel centres mapped into the box (half-pixel convention), clamped to the box's edge pixels.
    """
    n, _, height, width = x.shape
    out_h, out_w = size
    top, left, box_h, box_w = (boxes[:, i, None].to(x.dtype) for i in range(4))
    ys = top + (torch.arange(out_h, device=x.device, dtype=x.dtype) + 0.5) * box_h / out_h - 0.5
    xs = left + (torch.arange(out_w, device=x.device, dtype=x.dtype) + 0.5) * box_w / out_w - 0.5
    ys = torch.minimum(torch.maximum(ys, top), top + box_h - 1)
    xs = torch.minimum(torch.maximum(xs, left), left + box_w - 1)
    grid = torch.stack(
        [
            ((2 * xs + 1) / width - 1)[:, None, :].expand(n, out_h, out_w),
            ((2 * ys + 1) / height - 1)[:, :, None].expand(n, out_h, out_w),
        ],
        dim=-1,
    )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class RandomResizedCrop(v2.RandomResizedCrop):
    """Random scale/aspect-ratio crop resized to the input size (Inception-style); batched: one box per image.

    The boxes are drawn as torchvision draws them (up to 10 tries, else a centre crop); the batched
    resize is bilinear without antialiasing.
    """

    def boxes(
        self, n: int, height: int, width: int, generator: Optional[torch.Generator], device: torch.device
    ) -> torch.Tensor:
        """(n, 4) boxes: top, left, height, width."""
        tries = 10
        area = height * width
        scale = torch.empty(n, tries, device=device).uniform_(*self.scale, generator=generator)
        log_ratio = torch.empty(n, tries, device=device).uniform_(
            math.log(self.ratio[0]), math.log(self.ratio[1]), generator=generator
        )
        ratio = torch.exp(log_ratio)
        w = torch.round(torch.sqrt(area * scale * ratio))
        h = torch.round(torch.sqrt(area * scale / ratio))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        pick = torch.argmax(fits.int(), dim=1)  # the first try that fits
        w, h = w.gather(1, pick[:, None])[:, 0], h.gather(1, pick[:, None])[:, 0]
        top = torch.floor(torch.rand(n, generator=generator, device=device) * (height - h + 1))
        left = torch.floor(torch.rand(n, generator=generator, device=device) * (width - w + 1))
        # no try fits: torchvision's fallback, the whole image's centre with the ratio clamped to the range
        in_ratio = width / height
        fw, fh = (
            (width, round(width / min(self.ratio)))
            if in_ratio < min(self.ratio)
            else (round(height * max(self.ratio)), height)
            if in_ratio > max(self.ratio)
            else (width, height)
        )
        fallback = torch.stack([torch.full_like(top, v) for v in ((height - fh) // 2, (width - fw) // 2, fh, fw)], 1)
        boxes = torch.stack([top, left, h, w], dim=1)  # built on the device: no copy from the host, no sync
        return torch.where(fits.any(dim=1)[:, None], boxes, fallback)

    def apply_batch(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        return resized_crops(x, self.boxes(x.shape[0], x.shape[2], x.shape[3], generator, x.device), self.size)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """torchvision's luma weights; one channel stays as it is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    return (ratio * x + (1 - ratio) * other).clamp_(0, 1)


class ColorJitter(v2.ColorJitter):
    """Random brightness, contrast and saturation per image (hue: per-image pipeline only).

    Batched: one factor per image and adjustment, and each image's own random order of the
    adjustments, as torchvision draws them (at each of the three positions every adjustment is
    computed and each image keeps its own: three times the arithmetic, no host sync).
    """

    ADJUSTMENTS = ("brightness", "contrast", "saturation")

    @property
    def batchable(self) -> bool:
        return self.hue is None

    def factors(self, n: int, generator: Optional[torch.Generator], device: torch.device) -> dict[str, torch.Tensor]:
        return {
            name: torch.empty(n, device=device).uniform_(*getattr(self, name), generator=generator)
            for name in self.ADJUSTMENTS
            if getattr(self, name) is not None
        }

    @staticmethod
    def adjust(x: torch.Tensor, name: str, factor: torch.Tensor) -> torch.Tensor:
        """One adjustment with a factor per image, as ``torchvision.transforms.v2.functional`` does it."""
        factor = factor[:, None, None, None]
        if name == "brightness":
            return _blend(x, torch.zeros_like(x), factor)
        if name == "contrast":
            return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)
        return x if x.shape[1] == 1 else _blend(x, _grayscale(x), factor)

    def orders(self, n: int, count: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
        """(n, count): each image's order of the adjustments, a random permutation."""
        return torch.argsort(torch.rand(n, count, generator=generator, device=device), dim=1)

    def apply_batch(
        self, x: torch.Tensor, generator: Optional[torch.Generator], orders: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Each adjustment is a blend, clamped: ``a·x + (1 − a)·ref`` with ref 0 (brightness), the image's
        mean gray (contrast) or each pixel's gray (saturation). At every position of the order each
        image blends with its own adjustment's factor and reference: one blend a position."""
        if not self.batchable:
            raise ValueError("color_jitter with hue has no batched version")
        n = x.shape[0]
        factors = self.factors(n, generator, x.device)
        names = list(factors)
        if orders is None:
            orders = self.orders(n, len(names), generator, x.device)
        for position in range(len(names)):
            ratio = torch.ones(n, device=x.device, dtype=x.dtype)
            to_mean = torch.zeros(n, dtype=torch.bool, device=x.device)
            to_gray = torch.zeros(n, dtype=torch.bool, device=x.device)
            for index, name in enumerate(names):
                chosen = orders[:, position] == index
                if name == "saturation" and x.shape[1] == 1:
                    continue  # one channel: saturation leaves it as it is
                ratio = torch.where(chosen, factors[name].to(x.dtype), ratio)
                to_mean = to_mean | (chosen if name == "contrast" else False)
                to_gray = to_gray | (chosen if name == "saturation" else False)
            gray = _grayscale(x)
            reference = torch.where(
                to_gray[:, None, None, None],
                gray,
                torch.where(
                    to_mean[:, None, None, None],
                    gray.mean(dim=(1, 2, 3), keepdim=True),
                    torch.zeros((), device=x.device, dtype=x.dtype),
                ),
            )
            x = _blend(x, reference, ratio[:, None, None, None])
        return x


class RandomRotation(v2.RandomRotation):
    """Rotation by a random angle in ``degrees`` about the centre, the corners filled with ``fill``;
    batched: one angle per image (bilinear by default; torchvision's default is nearest). As in
    torchvision, the border blends into the fill by the interpolated share of the image."""

    def __init__(
        self, degrees=15, interpolation=v2.InterpolationMode.BILINEAR, expand: bool = False, center=None, fill=0
    ):
        super().__init__(degrees, interpolation=interpolation, expand=expand, center=center, fill=fill)

    @property
    def batchable(self) -> bool:
        return not self.expand and self.center is None and (self.fill is None or isinstance(self.fill, (int, float)))

    def apply_batch(
        self, x: torch.Tensor, generator: Optional[torch.Generator], angles: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        n, _, height, width = x.shape
        if angles is None:
            angles = torch.empty(n, device=x.device).uniform_(*self.degrees, generator=generator)
        theta = torch.deg2rad(angles.to(x.dtype))
        cos, sin = torch.cos(theta), torch.sin(theta)
        # output pixel → input pixel, in coordinates normalized to [-1, 1] (aspect ratio kept)
        aspect = height / width
        zero = torch.zeros_like(cos)
        affine = torch.stack([torch.stack([cos, -sin * aspect, zero], 1), torch.stack([sin / aspect, cos, zero], 1)], 1)
        grid = F.affine_grid(affine, list(x.shape), align_corners=False)
        mode = "nearest" if self.interpolation == v2.InterpolationMode.NEAREST else "bilinear"
        if self.fill is None:
            return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
        # torchvision samples a mask of ones beside the image and blends the fill in by it
        sampled = F.grid_sample(
            torch.cat([x, torch.ones_like(x[:, :1])], 1), grid, mode=mode, padding_mode="zeros", align_corners=False
        )
        image, mask = sampled[:, :-1], sampled[:, -1:]
        if mode == "nearest":
            mask = (mask >= 0.5).to(x.dtype)
        return image * mask + (1.0 - mask) * float(self.fill)


TRANSFORMS.register(
    "random_crop", RandomCrop, description="random crop of the input size after zero padding (default side/8); batched"
)
TRANSFORMS.register(
    "random_resized_crop",
    RandomResizedCrop,
    description="random scale/aspect crop resized to the input size (Inception-style); batched",
)
TRANSFORMS.register(
    "horizontal_flip",
    HorizontalFlip,
    aliases=("hflip", "flip"),
    description="mirror left-right with probability p (default 0.5); batched",
)
TRANSFORMS.register("cutout", Cutout, description="zero a random length x length square (default side/4); batched")
TRANSFORMS.register(
    "color_jitter",
    ColorJitter,
    brightness=0.2,
    contrast=0.2,
    saturation=0.2,
    description="random brightness/contrast/saturation (and hue) changes; batched without hue",
)
TRANSFORMS.register(
    "random_rotation",
    RandomRotation,
    description="rotation by a random angle in [-degrees, degrees] (default 15) about the centre; batched",
)
TRANSFORMS.register(
    "trivial_augment",
    v2.TrivialAugmentWide,
    description="TrivialAugment (Müller & Hutter 2021): one random op of random strength",
)
