"""The LightningDataModule every run uses: a dataset entry, its transforms, and the loaders."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cnnkit import messages
from cnnkit.config.batch import per_device_batch
from cnnkit.config.diff import format_value
from cnnkit.config.loader_choice import batched, batched_names, uses_tensor_path
from cnnkit.config.plain import spec
from cnnkit.config.plans import augment_plans, dataset_plan
from cnnkit.data.datasets import dataset_info
from cnnkit.data.decoded import cache_folder, choose, decoded_bytes, decoded_split, size_text
from cnnkit.data.info import DataInfo
from cnnkit.data.resumable import ResumableDataLoader
from cnnkit.data.sampler import UnpaddedDistributedSampler
from cnnkit.data.splits import DatasetSplits, TensorImages
from cnnkit.data.tensor_loader import TensorBatches
from cnnkit.errors import ConfigError
from cnnkit.nn.layers.input_norm import channel_statistics
from cnnkit.registry import split_spec


class ClassificationDataModule(L.LightningDataModule):
    """``data.batch_size`` is the global batch; each device gets batch_size / world size.

    Training loaders shuffle and drop the last incomplete batch (BN never sees a batch of one
    that way); evaluation loaders keep every sample in order.
    """

    def __init__(
        self, data_cfg: Any, seed: int = 0, note: Callable[[str], None] = messages.note, show_progress: bool = False
    ):
        """``note`` says what was decided for the user (the data path, an inferred size): ``messages.note``
        (stdout, first process, prefixed) unless the caller collects them; ``show_progress`` draws a bar while
        images are decoded."""
        super().__init__()
        self.cfg = data_cfg
        self.seed = seed
        self.note, self.show_progress = note, show_progress
        self.splits: Optional[DatasetSplits] = None
        self.transforms: list[Any] = []
        self.recorded_path: Optional[str] = None  # a resumed run's path: its batches must stay the same

    # -- data ---------------------------------------------------------------------------------
    def load(self) -> DatasetSplits:
        """Build the dataset entry once (raises DataError if its files are missing); image files are
        decoded once when ``data.cache`` says so."""
        if self.splits is None:
            source = dataset_plan(self.cfg).build()
            splits = source.load()
            for line in source.notes():
                self.note(line)
            size = tuple(splits.input_shape[1:]) if len(splits.input_shape) == 3 else None
            self.transforms = [plan.build(size=size) for plan in augment_plans(self.cfg)]
            if source.decodable():
                splits = self._decode_once(splits, source.cache_root())
            self.splits = splits
            self._say_path()
            if not self.tensor_path and self.transforms:
                splits.train.transform = v2.Compose(self.transforms)
        return self.splits

    def follow(self, recorded: Optional[str]) -> None:
        """Resume on the path (``tensor`` | ``dataloader``) the run was made on, whatever this machine
        would choose: the two give different batches. Call before ``load``."""
        self.recorded_path = recorded

    def _decode_once(self, splits: DatasetSplits, root: Optional[str]) -> DatasetSplits:
        parts = [s for s in (splits.train, splits.val, splits.test) if s is not None]
        total = sum(decoded_bytes(part) for part in parts)
        count = sum(len(part) for part in parts)
        how = choose(self.cfg.cache, self.cfg.cache_budget, total)
        if how == "none" and self.recorded_path == "tensor":
            how = "memory"
            self.note(
                f"resuming on the tensor path this run started on: the images ({size_text(total)}) are "
                f"decoded into memory (data.cache would not decode them on this machine)"
            )
        if how == "none":
            if self.cfg.cache == "auto":
                self.note(
                    f"data: {count:,} images, {size_text(total)} decoded, exceed data.cache_budget="
                    f"{self.cfg.cache_budget:g} GiB: the DataLoader decodes them every epoch (data.cache=disk "
                    f"decodes them once into a file instead)"
                )
            return splits
        started = time.monotonic()
        folder = None
        if how == "disk":
            root = root or os.path.commonpath([path for path, _ in splits.train.items])
            folder = cache_folder(root)
            if folder.parent != Path(root):
                self.note(f"'{root}' cannot be written; the decoded-image cache is in {folder}")
        decoded, built = {}, 0
        for name in ("train", "val", "test"):
            if getattr(splits, name) is not None:
                decoded[name], decoded_now = decoded_split(getattr(splits, name), name, folder, self.show_progress)
                built += len(decoded[name]) if decoded_now else 0
        took = f"{time.monotonic() - started:.1f} s"
        if folder is None:
            self.note(f"data: {count:,} images decoded once into memory ({size_text(total)}, {took})")
        elif built:
            self.note(
                f"data: {built:,} of {count:,} images decoded in {took} into the cache {folder} "
                f"({size_text(total)}; later runs map it)"
            )
        else:
            self.note(f"data: {count:,} decoded images mapped from the cache {folder} ({size_text(total)})")
        return dataclasses.replace(splits, **decoded)

    def _say_path(self) -> None:
        """One line when ``data.loader: auto`` takes the DataLoader for a reason the user may not expect."""
        mode = self.cfg.loader
        in_memory = isinstance(self.splits.train, TensorImages)
        if self.recorded_path == "dataloader" and uses_tensor_path(mode, in_memory, self.transforms):
            self.note(
                "resuming on the DataLoader path this run started on (this machine would take the "
                "tensor path, whose batches differ)"
            )
        elif mode == "auto" and in_memory and not self.tensor_path:
            names = [split_spec(s)[0] for s in spec(self.cfg, "augment")]
            slow = [name for name, t in zip(names, self.transforms) if not batched(t)]
            self.note(
                f"data: the DataLoader path, since {', '.join(slow)} has no batched version "
                f"(batched: {batched_names()}; color_jitter only without hue)"
            )

    @property
    def path(self) -> str:
        """``tensor`` or ``dataloader``: recorded in checkpoints, followed on resume."""
        return "tensor" if self.tensor_path else "dataloader"

    @property
    def tensor_path(self) -> bool:
        """Whether batches come from device-resident tensors (see data/tensor_loader.py)."""
        if self.recorded_path == "dataloader":
            return False
        return uses_tensor_path(self.cfg.loader, isinstance(self.splits.train, TensorImages), self.transforms)

    def prepare_data(self) -> None:
        self.load()

    def setup(self, stage: Optional[str] = None) -> None:
        self.load()

    @property
    def info(self) -> DataInfo:
        return dataset_info(self.load())

    def describe(self) -> str:
        """``digits 1437/180/180 of 1x8x8, 10 classes``: the data in a phrase, for the run's header line."""
        splits = self.load()
        sizes = "/".join(str(len(s)) for s in (splits.train, splits.val, splits.test) if s is not None)
        name = format_value(spec(self.cfg, "dataset")).split("(")[0]
        info = self.info
        return f"{name} {sizes} of {'x'.join(map(str, info.input_shape))}, {info.num_classes} classes"

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
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            generator=generator,
            sampler=sampler,
        )

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
            return TensorBatches(
                splits.train.images,
                splits.train.labels,
                batch,
                shuffle=True,
                drop_last=True,
                seed=self.seed,
                transforms=self.transforms,
                rank=rank,
                world=world,
                device=self.device,
            )
        if world == 1:  # under DDP Lightning shards with its DistributedSampler, seeded per (seed, epoch)
            workers = self._workers()
            return ResumableDataLoader(
                splits.train,
                batch,
                self.seed,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
                persistent_workers=workers > 0,
            )
        return self._loader(splits.train, batch, train=True)

    def _eval_loader(self, dataset: Dataset):
        """Each rank evaluates its own unpadded shard, so every sample counts exactly once."""
        world, rank, _ = self._layout()
        batch = max(1, (self.cfg.eval_batch_size or self.cfg.batch_size) // world)
        if self.tensor_path:
            return TensorBatches(
                dataset.images[rank::world],
                dataset.labels[rank::world],
                batch,
                shuffle=False,
                drop_last=False,
                device=self.device,
            )
        if world == 1:
            return self._loader(dataset, batch, train=False)
        return self._loader(dataset, batch, train=False, sampler=UnpaddedDistributedSampler(dataset, world, rank))

    def val_dataloader(self):
        return self._eval_loader(self.load().val)

    def test_dataloader(self):
        return self._eval_loader(self.load().get("test"))
