"""The tensor-resident data path: a data set held as one tensor on the training device.

For data that fits in memory (digits, MNIST, CIFAR, small folders), per-sample Python work is
the bottleneck of a DataLoader. Here the images stay on the device (uint8 where they came as
uint8), each epoch's order comes from (seed, epoch) — reproducible and resumable mid-epoch — and
augmentation runs as a few batched tensor ops. Under DDP each rank takes its shard of the order.
Transforms take part if they implement ``apply_batch(x, generator)``; ``data.loader: auto`` uses
this path only when every training transform does.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence

import torch

from cnnkit.data.pixels import to_unit_float
from cnnkit.data.seeding import batch_augment_seed, order_seed


class ResumablePosition:
    """Lightning's stateful-loader protocol for a loader that knows its epoch and its batches handed out.

    On resume the loader skips the batches the interrupted run had already handed out this epoch.
    """

    sampler: "_EpochSampler"
    handed_out = 0
    _resume = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "position": self.handed_out}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.epoch = int(state["epoch"])
        self._resume = int(state["position"])


class _EpochSampler:
    """Lightning calls ``loader.sampler.set_epoch(epoch)`` at the start of each training epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TensorBatches(ResumablePosition):
    """Iterable of (x, y) batches over tensors on ``device``; stateful (Lightning saves its position)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        transforms: Sequence[Any] = (),
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size, self.shuffle, self.drop_last, self.seed = batch_size, shuffle, drop_last, seed
        self.transforms = list(transforms)
        self.rank, self.world = rank, world
        self.sampler = _EpochSampler()
        self.batch_sampler = None  # Lightning inspects these two DataLoader attributes

    # -- order ------------------------------------------------------------------------------------
    def _order(self) -> torch.Tensor:
        n = len(self.labels)
        if self.shuffle:
            generator = torch.Generator().manual_seed(order_seed(self.seed, self.sampler.epoch))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.world > 1:  # equal shards, as DistributedSampler makes them for training
            per_rank = math.ceil(n / self.world) if not self.drop_last else n // self.world
            order = torch.cat([order, order[: per_rank * self.world - n]]) if per_rank * self.world > n else order
            order = order[self.rank : per_rank * self.world : self.world]
        return order

    def __len__(self) -> int:
        n = len(self._order()) if self.world > 1 else len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    # -- batches ----------------------------------------------------------------------------------
    def _batch(self, index: torch.Tensor, generator: Optional[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit_float(self.images[index])
        for transform in self.transforms:
            x = transform.apply_batch(x, generator)
        return x, self.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order().to(self.device)  # one copy an epoch: a batch's indices need no host sync
        count = len(self)
        generator = None
        if self.transforms:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(batch_augment_seed(self.seed, self.sampler.epoch))
        start, self._resume = self._resume, 0
        self.handed_out = 0
        for index in range(count):
            batch = self._batch(order[index * self.batch_size : (index + 1) * self.batch_size], generator)
            self.handed_out = index + 1
            if index >= start:  # on resume the skipped batches still advance the generator
                yield batch
