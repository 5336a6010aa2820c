"""Image folders at tensor speed: decoded once (memory or a disk cache), batched augmentation that
matches torchvision image by image, the path recorded and followed on resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

import cnnkit
from cnnkit.data.decoded import CACHE_FOLDER
from cnnkit.data.image_files import ImageFiles
from cnnkit.data.transforms import ColorJitter, RandomResizedCrop, RandomRotation, resized_crops
from tests.conftest import QUICKSTART, REPO, SMOKE, cli


# -- batched transforms against torchvision's, image by image ------------------------------------------
@pytest.mark.parametrize("size", [(24, 24), (40, 36)], ids=["down", "up"])
def test_resized_crops_match_torchvision_per_image(size):
    x = torch.rand(4, 3, 32, 30, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[0, 0, 32, 30], [3, 5, 20, 17], [10, 2, 7, 27], [1, 1, 31, 29]])
    out = resized_crops(x, boxes, size)
    for image, crop, box in zip(x, out, boxes.tolist()):
        # torchvision antialiases by default; the batched crop is plain bilinear
        expected = TF.resized_crop(image, *box, list(size), antialias=False)
        torch.testing.assert_close(crop, expected, atol=1e-5, rtol=0)


def test_random_resized_crop_boxes_follow_torchvisions_rule():
    crop = RandomResizedCrop(32, scale=(0.3, 1.0), ratio=(0.75, 4 / 3))
    boxes = crop.boxes(2000, 32, 32, torch.Generator().manual_seed(1), torch.device("cpu"))
    top, left, h, w = boxes.unbind(1)
    assert ((top >= 0) & (left >= 0) & (top + h <= 32) & (left + w <= 32) & (h >= 1) & (w >= 1)).all()
    area = h * w / (32 * 32)
    assert area.min() >= 0.3 - 0.05 and area.max() <= 1.0  # rounding to whole pixels
    assert len({tuple(b) for b in boxes.tolist()}) > 1500  # one box per image, not per batch
    # no try can fit an extreme ratio on a wide image: torchvision's fallback, the centre crop
    narrow = RandomResizedCrop(8, scale=(0.99, 1.0), ratio=(10.0, 11.0))
    fallback = narrow.boxes(3, 32, 32, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert fallback.tolist() == [[14.0, 0.0, 3.0, 32.0]] * 3  # h = round(32 / 10), top = (32 - 3) // 2


def test_color_jitter_matches_torchvision_per_image_and_order():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    factors = {
        "brightness": torch.tensor([0.7, 1.2, 1.0, 0.9]),
        "contrast": torch.tensor([1.3, 0.8, 1.0, 0.6]),
        "saturation": torch.tensor([0.5, 1.4, 1.0, 0.0]),
    }
    functions = {"brightness": TF.adjust_brightness, "contrast": TF.adjust_contrast, "saturation": TF.adjust_saturation}
    jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)
    for order in (["brightness", "contrast", "saturation"], ["saturation", "brightness", "contrast"]):
        out = x
        for name in order:  # ColorJitter's order is random per call: compare in one fixed order
            out = jitter.adjust(out, name, factors[name])
        for i in range(4):
            expected = x[i]
            for name in order:
                expected = functions[name](expected, factors[name][i].item())
            torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=0)
    gray = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(
        jitter.adjust(gray, "contrast", torch.tensor([0.5, 1.5]))[1],
        TF.adjust_contrast(gray[1], 1.5),
        atol=1e-6,
        rtol=0,
    )
    assert not ColorJitter(hue=0.1).batchable  # hue stays on the per-image path


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 20, 28)], ids=["square", "wide"])
@pytest.mark.parametrize("fill", [0, 0.5, None])
def test_rotation_matches_torchvision_per_image(shape, fill):
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2))
    angles = torch.tensor([10.0, -25.0, 0.0, 90.0])
    out = RandomRotation(90, fill=fill).apply_batch(x, None, angles)
    for image, rotated, angle in zip(x, out, angles.tolist()):
        expected = TF.rotate(image, angle, interpolation=v2.InterpolationMode.BILINEAR, fill=fill)
        torch.testing.assert_close(rotated, expected, atol=1e-5, rtol=0)


def test_color_jitter_batched_keeps_each_images_own_order():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    jitter = ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5)
    generator = torch.Generator().manual_seed(9)
    factors = jitter.factors(3, torch.Generator().manual_seed(9), torch.device("cpu"))
    orders = torch.tensor([[0, 1, 2], [2, 0, 1], [1, 2, 0]])
    out = jitter.apply_batch(x, generator, orders=orders)
    names = list(factors)
    for i in range(3):
        expected = x[i : i + 1]
        for index in orders[i].tolist():
            expected = jitter.adjust(expected, names[index], factors[names[index]][i : i + 1])
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-6, rtol=0)
    drawn = jitter.orders(1000, 3, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert len({tuple(o) for o in drawn.tolist()}) == 6  # every order occurs


def test_batched_transforms_draw_per_image_and_repeat_with_the_seed():
    x = torch.rand(64, 3, 32, 32)
    for transform in (
        RandomResizedCrop(32),
        ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3),
        RandomRotation(20),
    ):
        a = transform.apply_batch(x, torch.Generator().manual_seed(5))
        b = transform.apply_batch(x, torch.Generator().manual_seed(5))
        assert torch.equal(a, b)
        changes = (a - x).abs().flatten(1).mean(1)
        assert len(set(changes.round(decimals=5).tolist())) > 32  # each image its own parameters


# -- an image folder, decoded once ----------------------------------------------------------------------
def make_folder(root, size=32, per_class=8, classes=3, channels=3, fmt="png"):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split in ("train", "val", "test"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = (torch.rand(size, size, channels, generator=gen) * 80 + 60 * c).byte().numpy()
                Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(folder / f"{i}.{fmt}")
    return f"data.dataset={{name: image_folder, root: {root}}}"


AUGMENT = "data.augment=[random_resized_crop, horizontal_flip, color_jitter]"
SMALL = "data.batch_size=8"  # 24 training images


def count_decodes(monkeypatch) -> list[str]:
    seen: list[str] = []
    original = ImageFiles.decode

    def decode(self, index):
        seen.append(self.items[index][0])
        return original(self, index)

    monkeypatch.setattr(ImageFiles, "decode", decode)
    return seen


def test_a_folder_that_fits_takes_the_tensor_path_and_says_so(tmp_path, capsys, monkeypatch):
    dataset = make_folder(tmp_path / "images")
    decoded = count_decodes(monkeypatch)
    datamodule = cnnkit.build_datamodule(cnnkit.load_config([QUICKSTART, SMOKE], [dataset, AUGMENT, SMALL]))
    splits = datamodule.load()
    assert datamodule.tensor_path and datamodule.path == "tensor"
    assert type(datamodule.train_dataloader()).__name__ == "TensorBatches"
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape == (24, 3, 32, 32)
    assert len(decoded) == 72  # every image once
    assert "cnnkit: data: 72 images decoded once into memory (221.2 kB" in capsys.readouterr().out
    # the decoded pixels are the DataLoader path's
    files = ImageFiles(list(zip(splits.train.names(), splits.train.labels.tolist())), (32, 32), 3, "train")
    assert torch.equal(files.load(5), splits.train[5][0])


def test_over_the_budget_the_dataloader_decodes_and_says_why(tmp_path, capsys):
    dataset = make_folder(tmp_path / "images")
    datamodule = cnnkit.build_datamodule(
        cnnkit.load_config([QUICKSTART, SMOKE], [dataset, AUGMENT, SMALL, "data.cache_budget=1e-6"])
    )
    datamodule.load()
    assert not datamodule.tensor_path
    assert "exceed data.cache_budget=1e-06 GiB: the DataLoader decodes them every epoch" in capsys.readouterr().out


def test_a_transform_without_a_batched_version_takes_the_dataloader_and_says_why(tmp_path, capsys):
    dataset = make_folder(tmp_path / "images")
    cfg = cnnkit.load_config([QUICKSTART, SMOKE], [dataset, SMALL, "data.augment=[horizontal_flip, trivial_augment]"])
    datamodule = cnnkit.build_datamodule(cfg)
    datamodule.load()
    assert not datamodule.tensor_path
    assert "cnnkit: data: the DataLoader path, since trivial_augment has no batched version" in capsys.readouterr().out


def test_the_disk_cache_is_mapped_by_the_next_run_and_rebuilt_when_an_image_changes(tmp_path, monkeypatch, capsys):
    dataset = make_folder(tmp_path / "images")
    overrides = [dataset, AUGMENT, SMALL, "data.cache=disk", f"runs_dir={tmp_path / 'runs'}"]
    decoded = count_decodes(monkeypatch)
    first = cnnkit.fit(cnnkit.load_config([QUICKSTART, SMOKE], overrides))
    assert first.status == "finished" and len(decoded) == 72
    cache = tmp_path / "images" / CACHE_FOLDER
    files = sorted(p.name for p in cache.glob("*.npy"))
    assert [f.split("-")[0] for f in files] == ["test", "train", "val"]

    decoded.clear()
    capsys.readouterr()
    second = cnnkit.fit(cnnkit.load_config([QUICKSTART, SMOKE], overrides), overwrite=True)
    assert second.status == "finished" and decoded == []  # trained without decoding anything
    assert "72 decoded images mapped from the cache" in capsys.readouterr().out
    assert second.metrics["test/acc"] == first.metrics["test/acc"]

    image = tmp_path / "images" / "train" / "c1" / "3.png"
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # touched
    cnnkit.fit(cnnkit.load_config([QUICKSTART, SMOKE], overrides), overwrite=True)
    assert len(decoded) == 24 and all("/train/" in p for p in decoded)  # that split only
    assert sorted(p.name for p in cache.glob("*.npy")) != files and len(list(cache.glob("train-*.npy"))) == 1


def test_a_read_only_folder_caches_in_the_users_cache_directory(tmp_path, monkeypatch, capsys):
    from cnnkit.data import decoded

    dataset = make_folder(tmp_path / "images")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    writable = decoded._writable
    monkeypatch.setattr(decoded, "_writable", lambda folder: CACHE_FOLDER not in str(folder) and writable(folder))
    datamodule = cnnkit.build_datamodule(cnnkit.load_config([QUICKSTART, SMOKE], [dataset, SMALL, "data.cache=disk"]))
    datamodule.load()
    printed = capsys.readouterr().out
    assert (
        f"cnnkit: '{tmp_path / 'images'}' cannot be written; the decoded-image cache is in "
        f"{tmp_path / 'home-cache' / 'cnnkit' / 'decoded'}" in printed
    )
    assert len(list((tmp_path / "home-cache").rglob("train-*.npy"))) == 1
    assert not (tmp_path / "images" / CACHE_FOLDER).exists()


def test_an_unreadable_image_is_found_while_decoding_before_training(tmp_path):
    dataset = make_folder(tmp_path / "images")
    (tmp_path / "images" / "train" / "c0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    proc = cli("fit", "--config", QUICKSTART, "--config", SMOKE, dataset, SMALL, "model.norm=none")
    assert proc.returncode == 2 and "broken.png" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # before the run directory was made


def test_the_checkpoint_records_the_path_and_a_resume_follows_it(tmp_path, capsys):
    dataset = make_folder(tmp_path / "images")
    overrides = [dataset, AUGMENT, SMALL, f"runs_dir={tmp_path / 'runs'}", "checkpoint.every_n_steps=1"]
    result = cnnkit.fit(cnnkit.load_config([QUICKSTART, SMOKE], overrides))
    checkpoint = torch.load(result.last_checkpoint, weights_only=True)
    assert checkpoint["cnnkit"]["data_path"] == "tensor"
    datamodule = cnnkit.build_datamodule(
        cnnkit.load_config([QUICKSTART, SMOKE], [*overrides, "data.cache_budget=1e-6"])
    )
    datamodule.follow("tensor")
    datamodule.load()
    assert datamodule.tensor_path
    assert "resuming on the tensor path this run started on" in capsys.readouterr().out
    other = cnnkit.build_datamodule(cnnkit.load_config([QUICKSTART, SMOKE], overrides))
    other.follow("dataloader")
    other.load()
    assert not other.tensor_path and "resuming on the DataLoader path" in capsys.readouterr().out


# -- processes that start together build the cache once ---------------------------------------------
TRACER = """
import os
from cnnkit.data.image_files import ImageFiles

_decode = ImageFiles.decode


def decode(self, index):
    with open(os.environ["DECODE_LOG"], "a") as log:
        log.write(f"{os.getpid()} {self.items[index][0]}\\n")
    return _decode(self, index)


ImageFiles.decode = decode
"""


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "ddp_cpu"])
def test_two_processes_build_the_disk_cache_once_and_both_train(tmp_path, launcher):
    dataset = make_folder(tmp_path / "images", per_class=16)
    (tmp_path / "tracer.py").write_text(TRACER)
    args = [
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        SMOKE,
        dataset,
        AUGMENT,
        "data.cache=disk",
        "trainer.devices=2",
        "data.batch_size=16",
        "imports=[tracer.py]",
    ]
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "CNNKIT_NO_PLUGINS": "1",
        "PYTHONPATH": str(REPO),
        "DECODE_LOG": str(tmp_path / "decodes.log"),
    }
    if launcher == "torchrun":  # both ranks start at once, with no process group yet when they load the data
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "cnnkit",
            *args,
            "trainer.strategy=ddp",
        ]
    else:
        command = [sys.executable, "-m", "cnnkit", *args, "--config", str(REPO / "configs/trainer/ddp_cpu.yaml")]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    decodes = (tmp_path / "decodes.log").read_text().splitlines()
    paths = [line.split(" ", 1)[1] for line in decodes]
    assert len(paths) == len(set(paths)) == 3 * 3 * 16  # every image decoded once, by one process or the other
    assert len(list((tmp_path / "images" / CACHE_FOLDER).glob("*.npy"))) == 3
    status = json.loads(next((tmp_path / "runs").glob("**/quickstart/*/status.json")).read_text())
    assert status["status"] == "finished" and math.isfinite(status["metrics"]["test/acc"])


def test_caches_of_other_shapes_of_one_folder_live_side_by_side(tmp_path, monkeypatch):
    dataset = make_folder(tmp_path / "images")
    decoded = count_decodes(monkeypatch)
    for size in (32, 16, 32, 16):
        cfg = cnnkit.load_config(
            [QUICKSTART, SMOKE], [dataset.replace("}", f", image_size: {size}}}"), SMALL, "data.cache=disk"]
        )
        cnnkit.build_datamodule(cfg).load()
    assert len(decoded) == 2 * 72  # each shape decoded once, then mapped
    names = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "images" / CACHE_FOLDER).glob("*.npy"))
    assert names == ["test-3x16x16", "test-3x32x32", "train-3x16x16", "train-3x32x32", "val-3x16x16", "val-3x32x32"]
