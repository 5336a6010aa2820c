"""Samples kept as files: decoded to uint8 on access, or once into memory or a cache file (data/decoded.py)."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from cnnkit.data.pixels import to_unit_float


class FileSamples(Dataset):
    """(path, label) pairs; ``decode`` turns a file into a uint8 (channels, height, width) tensor of ``size``.

    A file format is a subclass that implements ``decode`` and names its files' ``extensions``.
    """

    extensions: tuple[str, ...] = ()  # lower-case file name endings of this format (``predict --input`` takes them)

    def __init__(
        self,
        items: list[tuple[str, int]],
        size: tuple[int, int],
        channels: int,
        split: str,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    ):
        self.items, self.size, self.channels, self.split, self.transform = items, size, channels, split, transform

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, index: int) -> torch.Tensor:
        """The sample as uint8 (channels, height, width) of ``size``; what a cache holds."""
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        return to_unit_float(self.decode(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.load(index)
        if self.transform is not None:
            x = self.transform(x)
        return x, torch.tensor(self.items[index][1])

    def inputs(self, batch_size: int = 256):
        for start in range(0, len(self), batch_size):
            yield torch.stack([self.load(i) for i in range(start, min(start + batch_size, len(self)))])

    def names(self) -> list[str]:
        return [path for path, _ in self.items]
