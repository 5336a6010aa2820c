"""The LightningDataModule every run uses: a dataset entry, its transforms, and the loaders."""

from __future__ import annotations

import os
from typing import Any, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..config import to_plain
from ..distributed import UnpaddedDistributedSampler, per_device_batch
from ..errors import ConfigError
from ..layers.input_norm import channel_statistics
from ..registry import DATASETS, TRANSFORMS
from .datasets import dataset_info
from .splits import DatasetSplits


class ClassificationDataModule(L.LightningDataModule):
    """``data.batch_size`` is the global batch; each device gets batch_size / world size.

    Training loaders shuffle and drop the last incomplete batch (BN never sees a batch of one
    that way); evaluation loaders keep every sample in order.
    """

    def __init__(self, data_cfg: Any, seed: int = 0):
        super().__init__()
        self.cfg = data_cfg
        self.seed = seed
        self.splits: Optional[DatasetSplits] = None

    # -- data ---------------------------------------------------------------------------------
    def load(self) -> DatasetSplits:
        """Build the dataset entry once (raises DataError if its files are missing)."""
        if self.splits is None:
            splits = DATASETS.build(to_plain(self.cfg.dataset)).load()
            if self.cfg.augment:
                size = tuple(splits.input_shape[1:]) if len(splits.input_shape) == 3 else None
                transforms = [TRANSFORMS.build(to_plain(spec), optional={"size": size}) for spec in self.cfg.augment]
                from torchvision.transforms import v2

                splits.train.transform = v2.Compose(transforms)
            self.splits = splits
        return self.splits

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: Optional[str] = None) -> None:
        self.load()

    @property
    def info(self) -> dict[str, Any]:
        return dataset_info(self.load())

    def input_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (per-feature) mean and std of the un-augmented training inputs."""
        splits = self.load()
        return channel_statistics(splits.train.inputs(), splits.input_shape[0])

    # -- batch sizes ----------------------------------------------------------------------------
    def _layout(self) -> tuple[int, int, int]:
        """(world size, global rank, gradient-accumulation steps) of the trainer, if attached."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0, 1
        return trainer.world_size, trainer.global_rank, trainer.accumulate_grad_batches

    @property
    def world_size(self) -> int:
        return self._layout()[0]

    def per_device(self, global_batch: int) -> int:
        world, _, accumulate = self._layout()
        return per_device_batch(global_batch, world, accumulate)

    def steps_per_epoch(self, world_size: int = 1, accumulate: int = 1) -> int:
        """Optimizer steps in one epoch, as the training loader will produce them."""
        n = len(self.load().train)
        per_rank = -(-n // world_size)  # DistributedSampler pads to equal shards
        batches = per_rank // per_device_batch(self.cfg.batch_size, world_size, accumulate)
        return max(1, batches // accumulate)

    # -- loaders --------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        workers = self.cfg.num_workers
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                          generator=generator)

    def train_dataloader(self) -> DataLoader:
        batch = self.per_device(self.cfg.batch_size)
        if len(self.load().train) < self.cfg.batch_size:
            raise ConfigError(
                f"data.batch_size={self.cfg.batch_size} is larger than the training split "
                f"({len(self.load().train)} samples): with the last incomplete batch dropped no batch is left"
            )
        return self._loader(self.load().train, batch, train=True)

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        """Each rank evaluates its own unpadded shard, so every sample counts exactly once."""
        world, rank, _ = self._layout()
        batch = max(1, (self.cfg.eval_batch_size or self.cfg.batch_size) // world)
        if world == 1:
            return self._loader(dataset, batch, train=False)
        workers = self.cfg.num_workers
        return DataLoader(dataset, batch_size=batch, sampler=UnpaddedDistributedSampler(dataset, world, rank),
                          num_workers=workers, pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.load().val)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.load().get("test"))
