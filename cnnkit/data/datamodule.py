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
from ..plans import augment_plans, dataset_plan
from .datasets import dataset_info
from .info import DataInfo
from .resumable import ResumableDataLoader
from .splits import DatasetSplits, TensorImages
from .tensor_loader import TensorBatches, uses_tensor_path


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
        self.transforms: list[Any] = []

    # -- data ---------------------------------------------------------------------------------
    def load(self) -> DatasetSplits:
        """Build the dataset entry once (raises DataError if its files are missing)."""
        if self.splits is None:
            splits = dataset_plan(self.cfg).build().load()
            size = tuple(splits.input_shape[1:]) if len(splits.input_shape) == 3 else None
            self.transforms = [plan.build(size=size) for plan in augment_plans(self.cfg)]
            self.splits = splits
            if not self.tensor_path and self.transforms:
                from torchvision.transforms import v2

                splits.train.transform = v2.Compose(self.transforms)
        return self.splits

    @property
    def tensor_path(self) -> bool:
        """Whether batches come from device-resident tensors (see data/tensor_loader.py)."""
        return uses_tensor_path(to_plain(self.cfg.loader), isinstance(self.splits.train, TensorImages),
                                self.transforms)

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: Optional[str] = None) -> None:
        self.load()

    @property
    def info(self) -> DataInfo:
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
    @property
    def device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _workers(self) -> int:
        if self.cfg.num_workers is not None:
            return self.cfg.num_workers
        return min(max((os.cpu_count() or 1) - 1, 0), 8)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool, sampler=None) -> DataLoader:
        workers = self._workers()
        # every loader has its own generator: starting worker processes (e.g. a resumed run's first
        # validation) must not draw from the global RNG, or dropout after a resume would differ
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                          generator=generator, sampler=sampler)

    def train_dataloader(self):
        splits = self.load()
        batch = self.per_device(self.cfg.batch_size)
        if len(splits.train) < self.cfg.batch_size:
            raise ConfigError(
                f"data.batch_size={self.cfg.batch_size} is larger than the training split "
                f"({len(splits.train)} samples): with the last incomplete batch dropped no batch is left"
            )
        world, rank, _ = self._layout()
        if self.tensor_path:
            return TensorBatches(splits.train.images, splits.train.labels, batch, shuffle=True, drop_last=True,
                                 seed=self.seed, transforms=self.transforms, rank=rank, world=world,
                                 device=self.device)
        if world == 1:  # under DDP Lightning shards with its DistributedSampler, seeded per (seed, epoch)
            workers = self._workers()
            return ResumableDataLoader(splits.train, batch, self.seed, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
        return self._loader(splits.train, batch, train=True)

    def _eval_loader(self, dataset: Dataset):
        """Each rank evaluates its own unpadded shard, so every sample counts exactly once."""
        world, rank, _ = self._layout()
        batch = max(1, (self.cfg.eval_batch_size or self.cfg.batch_size) // world)
        if self.tensor_path:
            return TensorBatches(dataset.images[rank::world], dataset.labels[rank::world], batch, shuffle=False,
                                 drop_last=False, device=self.device)
        if world == 1:
            return self._loader(dataset, batch, train=False)
        return self._loader(dataset, batch, train=False, sampler=UnpaddedDistributedSampler(dataset, world, rank))

    def val_dataloader(self):
        return self._eval_loader(self.load().val)

    def test_dataloader(self):
        return self._eval_loader(self.load().get("test"))
