"""What a dataset entry returns: its splits and what a model needs to know about them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch.utils.data import Dataset

from cnnkit.data.pixels import to_unit_float
from cnnkit.errors import DataError


class TensorImages(Dataset):
    """Images held in memory as one tensor (uint8 in [0, 255] or float in [0, 1]) with labels."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        split: str,
        transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        names: Optional[list[str]] = None,
    ):
        self.images, self.labels, self.split, self.transform = images, labels.long(), split, transform
        self._names = names  # e.g. the files a decoded image folder came from

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit_float(self.images[index])
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[index]

    def inputs(self, batch_size: int = 1024):
        """The untransformed inputs in batches (for input statistics)."""
        for start in range(0, len(self), batch_size):
            yield to_unit_float(self.images[start : start + batch_size])

    def names(self) -> list[str]:
        return self._names or [f"{self.split}/{i}" for i in range(len(self))]


@dataclass
class DatasetSplits:
    """Train/val/test datasets yielding (float image in [0, 1], label), plus their shape and classes."""

    train: Dataset
    val: Dataset
    test: Optional[Dataset]
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def get(self, split: str) -> Dataset:
        dataset = {"train": self.train, "val": self.val, "test": self.test}.get(split)
        if dataset is None:
            raise DataError(f"this dataset has no '{split}' split")
        return dataset


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """Indices of consecutive stratified parts: ``fractions`` are the sizes of all parts but the first."""
    # startup: sklearn only when this runs
    from sklearn.model_selection import train_test_split

    remaining = torch.arange(len(labels))
    label_tensor = torch.as_tensor(labels)
    parts = []
    total = 1.0
    for fraction in fractions:
        rest, part = train_test_split(
            remaining.numpy(), test_size=fraction / total, random_state=seed, stratify=label_tensor[remaining].numpy()
        )
        parts.append(torch.as_tensor(part))
        remaining = torch.as_tensor(rest)
        total -= fraction
    return [torch.sort(remaining).values] + [torch.sort(p).values for p in parts]
