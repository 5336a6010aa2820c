"""A DataLoader that Lightning can stop and resume mid-epoch with the same batches.

Its shuffled order comes from (seed, epoch), not from the global RNG, and it reports how many
batches it has handed out (``state_dict``), the protocol Lightning uses to save and restore a
loader's position. The sampler hands the dataset (index, epoch) keys, and each sample's
augmentation draws from a generator seeded by (seed, epoch, index): a sample looks the same
whichever process, worker or resumed run loads it.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnkit.data.seeding import order_seed, sample_augment_seed
from cnnkit.data.tensor_loader import ResumablePosition


class EpochSeededSampler(Sampler[int]):
    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.epoch = 0
        self.start = 0  # samples to skip at the start of the epoch (resumption)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(order_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        start, self.start = self.start, 0
        return iter([(index, self.epoch) for index in order[start:]])

    def __len__(self) -> int:
        return self.size


class SeededAugmentation(Dataset):
    """``dataset[index]`` with its transform applied under a generator seeded by (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):  # the global RNG (dropout's) is left as it was
            torch.manual_seed(sample_augment_seed(self.seed, epoch, index))
            return self.dataset[index]


class ResumableDataLoader(ResumablePosition, DataLoader):
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, **kwargs: Any):
        # its own generator: creating an iterator must not draw from the global RNG (dropout's)
        super().__init__(
            SeededAugmentation(dataset, seed),
            batch_size=batch_size,
            sampler=EpochSeededSampler(len(dataset), seed),
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )

    def __iter__(self):
        skip, self._resume = self._resume, 0
        self.sampler.start = skip * self.batch_size
        self.handed_out = skip
        for batch in super().__iter__():
            self.handed_out += 1
            yield batch
