"""The tensor-resident data path, batched augmentation, and the speed switches."""

import pytest
import torch
from torch.utils.data import DataLoader

import cnnkit
from cnnkit.config.load import load_config
from cnnkit.data.tensor_loader import TensorBatches
from cnnkit.data.transforms import Cutout, HorizontalFlip, RandomCrop
from cnnkit.errors import ConfigError

from .conftest import QUICKSTART, SMOKE


def batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_epoch_order_comes_from_seed_and_epoch():
    images, labels = torch.arange(20.0).reshape(20, 1, 1, 1), torch.arange(20)
    a = TensorBatches(images, labels, 4, shuffle=True, drop_last=False, seed=3)
    b = TensorBatches(images, labels, 4, shuffle=True, drop_last=False, seed=3)
    first = torch.cat([y for _, y in a])
    assert torch.equal(first, torch.cat([y for _, y in b]))
    assert sorted(first.tolist()) == list(range(20))  # every sample once
    a.sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([y for _, y in a]))
    assert len(TensorBatches(images, labels, 6, shuffle=True, drop_last=True)) == 3


def test_ranks_take_disjoint_equal_shards():
    images, labels = torch.zeros(10, 1, 1, 1), torch.arange(10)
    shards = [
        torch.cat(
            [y for _, y in TensorBatches(images, labels, 2, shuffle=True, drop_last=True, seed=0, rank=r, world=2)]
        )
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 4 and not set(shards[0].tolist()) & set(shards[1].tolist())


def test_resuming_mid_epoch_serves_the_remaining_batches_unchanged():
    images, labels = torch.rand(24, 3, 8, 8), torch.arange(24)
    transforms = [RandomCrop(size=(8, 8), padding=2), HorizontalFlip()]
    full = TensorBatches(images, labels, 4, shuffle=True, drop_last=True, seed=1, transforms=transforms)
    expected = batches(full)
    resumed = TensorBatches(images, labels, 4, shuffle=True, drop_last=True, seed=1, transforms=transforms)
    resumed.load_state_dict({"epoch": 0, "position": 2})
    rest = batches(resumed)
    assert len(rest) == len(expected) - 2
    for (x, y), (ex, ey) in zip(rest, expected[2:]):
        assert torch.equal(y, ey) and torch.equal(x, ex)


def test_batched_random_crop_is_a_crop_of_the_padded_image():
    x = torch.rand(16, 3, 6, 6)
    out = RandomCrop(size=(6, 6), padding=2).apply_batch(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(16):
        assert any(torch.equal(out[i], padded[i, :, dy : dy + 6, dx : dx + 6]) for dy in range(5) for dx in range(5))
    assert len({out[i].sum().item() for i in range(16)}) > 1


def test_batched_flip_and_cutout():
    x = torch.rand(8, 1, 5, 5)
    assert torch.equal(HorizontalFlip(p=1.0).apply_batch(x, None), x.flip(-1))
    assert torch.equal(HorizontalFlip(p=0.0).apply_batch(x, None), x)
    cut = Cutout(length=2).apply_batch(torch.ones(50, 1, 9, 9), torch.Generator().manual_seed(0))
    zeros = (cut == 0).flatten(1).sum(1)
    assert zeros.max() == 4 and zeros.min() >= 1  # a 2x2 square, clipped at the border


def datamodule(*overrides):
    cfg = load_config([], list(overrides))
    dm = cnnkit.build_datamodule(cfg)
    dm.load()
    return dm


def test_auto_loader_picks_the_tensor_path_only_when_everything_is_batched():
    assert isinstance(datamodule("data.augment=[random_crop, hflip, cutout]").train_dataloader(), TensorBatches)
    assert isinstance(
        datamodule("data.augment=[random_resized_crop, color_jitter, random_rotation]").train_dataloader(),
        TensorBatches,
    )
    assert isinstance(datamodule("data.augment=[trivial_augment]").train_dataloader(), DataLoader)
    assert isinstance(datamodule("data.augment=[{name: color_jitter, hue: 0.1}]").train_dataloader(), DataLoader)
    assert isinstance(datamodule("data.loader=dataloader").train_dataloader(), DataLoader)
    with pytest.raises(ConfigError, match="TrivialAugmentWide have no batched version"):
        datamodule("data.loader=tensor", "data.augment=[trivial_augment]").train_dataloader()
    with pytest.raises(ConfigError, match="ColorJitter have no batched version"):
        datamodule("data.loader=tensor", "data.augment=[{name: color_jitter, hue: 0.1}]").train_dataloader()


def test_both_paths_give_the_same_validation_data():
    tensor = batches(datamodule("data.loader=tensor").val_dataloader())
    loader = batches(datamodule("data.loader=dataloader").val_dataloader())
    assert torch.equal(torch.cat([x for x, _ in tensor]), torch.cat([x for x, _ in loader]))


@pytest.mark.slow
def test_speed_switches_train_and_keep_checkpoint_names():
    cfg = load_config(
        [QUICKSTART, SMOKE],
        ["trainer.compile=true", "trainer.channels_last=true", "tta=flip", "data.augment=[random_crop, cutout]"],
    )
    result = cnnkit.fit(cfg)
    assert result.status == "finished"
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert "model.backbone.0.0.conv.weight" in state and not any("_orig_mod" in k for k in state)
