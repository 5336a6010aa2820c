"""Datasets by name. Each entry returns ``DatasetSplits``; images come out as floats in [0, 1].

``digits`` (scikit-learn's bundled 8×8 handwritten digits) needs no download and is the default.
torchvision's MNIST, Fashion-MNIST and CIFAR are read from ``root`` (``download: true`` fetches
them); ``image_folder`` reads a folder of image files laid out per class or with label prefixes.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError
from ..registry import DATASETS
from .splits import DatasetSplits, TensorImages, stratified_split



def _size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _resize(images: torch.Tensor, image_size: int | Sequence[int] | None) -> torch.Tensor:
    if image_size is None or tuple(images.shape[-2:]) == _size_pair(image_size):
        return images
    dtype = images.dtype
    resized = F.interpolate(images.float(), size=_size_pair(image_size), mode="bilinear",
                            antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(dtype) if dtype == torch.uint8 else resized


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise DataError(f"{name} must be in (0, 1), got {value}")


def _in_memory(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], *,
               test: tuple[torch.Tensor, torch.Tensor] | None, val_fraction: float, test_fraction: float | None,
               split_seed: int, image_size) -> DatasetSplits:
    """Carve val (and test, if the source has none) out of the training images, stratified."""
    _check_fraction("val_fraction", val_fraction)
    images = _resize(images, image_size)
    if test is None:
        _check_fraction("test_fraction", test_fraction)
        train_idx, test_idx, val_idx = stratified_split(labels.tolist(), [test_fraction, val_fraction], split_seed)
        test_set = TensorImages(images[test_idx], labels[test_idx], "test")
    else:
        train_idx, val_idx = stratified_split(labels.tolist(), [val_fraction], split_seed)
        test_set = TensorImages(_resize(test[0], image_size), test[1], "test")
    return DatasetSplits(
        train=TensorImages(images[train_idx], labels[train_idx], "train"),
        val=TensorImages(images[val_idx], labels[val_idx], "val"),
        test=test_set,
        input_shape=tuple(images.shape[1:]),
        class_names=class_names,
    )


@DATASETS.register("digits", description="scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download)")
def digits(image_size: int | list[int] | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
           split_seed: int = 0) -> DatasetSplits:
    """The embedded default: seeded stratified train/val/test split; ``image_size`` resizes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    return _in_memory(images, labels, [str(c) for c in bunch.target_names], test=None,
                      val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                      image_size=image_size)


def _torchvision(cls_name: str, folder: str, root: str, download: bool, train: bool):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    if not download and not os.path.isdir(root):
        raise DataError(
            f"{cls_name}: data root '{root}' does not exist; set data.dataset.root to where the data is, "
            f"or data.dataset.download=true to fetch it (needs internet)"
        )
    try:
        return cls(root=root, train=train, download=download)
    except RuntimeError as err:
        raise DataError(
            f"{cls_name}: no data found under '{os.path.join(root, folder)}'; "
            f"set data.dataset.download=true to fetch it (needs internet) or copy the files there"
        ) from err
    except OSError as err:
        raise DataError(f"{cls_name}: could not get the data into '{root}': {err}") from err


def _torchvision_splits(cls_name: str, folder: str, root: str, download: bool, val_fraction: float,
                        split_seed: int, image_size) -> DatasetSplits:
    train = _torchvision(cls_name, folder, root, download, train=True)
    test = _torchvision(cls_name, folder, root, download, train=False)

    def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.as_tensor(ds.data)
        images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
        return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)

    images, labels = tensors(train)
    return _in_memory(images, labels, list(train.classes), test=tensors(test), val_fraction=val_fraction,
                      test_fraction=None, split_seed=split_seed, image_size=image_size)


def _register_torchvision(name: str, cls_name: str, folder: str, description: str) -> None:
    def dataset(root: str = "data", download: bool = False, val_fraction: float = 0.1, split_seed: int = 0,
                image_size: int | list[int] | None = None) -> DatasetSplits:
        return _torchvision_splits(cls_name, folder, root, download, val_fraction, split_seed, image_size)

    dataset.__name__ = dataset.__qualname__ = name
    DATASETS.register(name, dataset, description=description)


_register_torchvision("mnist", "MNIST", "MNIST", "torchvision MNIST, 28x28 grayscale digits (60k train / 10k test)")
_register_torchvision("fashion_mnist", "FashionMNIST", "FashionMNIST",
                      "torchvision Fashion-MNIST, 28x28 grayscale clothing (60k / 10k)")
_register_torchvision("cifar10", "CIFAR10", "cifar-10-batches-py", "torchvision CIFAR-10, 32x32 color, 10 classes (50k / 10k)")
_register_torchvision("cifar100", "CIFAR100", "cifar-100-python", "torchvision CIFAR-100, 32x32 color, 100 classes (50k / 10k)")


@DATASETS.register("image_folder", aliases=("folder",),
                   description="image files: train/ val/ [test/] with a folder per class, or label-prefixed names")
def image_folder(root: str, layout: str = "class_dirs", image_size: int | list[int] = 64, channels: int = 3,
                 splits: dict[str, str] | None = None) -> DatasetSplits:
    """``layout: class_dirs`` → ``root/train/<class>/*.jpg``; ``label_prefix`` → ``root/train/3_120.jpg``.

    ``splits`` names the split folders (default train, val, test); test is optional.
    """
    from .image_files import ImageFiles, list_class_dirs, list_label_prefix

    if layout not in ("class_dirs", "label_prefix"):
        raise DataError(f"image_folder: layout must be class_dirs or label_prefix, got {layout!r}")
    if channels not in (1, 3):
        raise DataError(f"image_folder: channels must be 1 or 3, got {channels}")
    if not os.path.isdir(root):
        raise DataError(f"image_folder: data root '{root}' does not exist; set data.dataset.root to your image folder")
    folders = {"train": "train", "val": "val", "test": "test", **(splits or {})}
    lister = list_class_dirs if layout == "class_dirs" else list_label_prefix
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, folders[split])):
            raise DataError(f"image_folder: no '{folders[split]}' folder under '{root}' (the {split} split); "
                            f"set data.dataset.splits.{split} to its folder name")
    class_names, train_files = lister(os.path.join(root, folders["train"]), None)
    _, val_files = lister(os.path.join(root, folders["val"]), class_names)
    test_dir = os.path.join(root, folders["test"])
    test_files = lister(test_dir, class_names)[1] if os.path.isdir(test_dir) else None
    size = _size_pair(image_size)

    def files(split: str, items):
        return ImageFiles(items, size, channels, split) if items is not None else None

    return DatasetSplits(train=files("train", train_files), val=files("val", val_files),
                         test=files("test", test_files), input_shape=(channels, *size), class_names=class_names)


def dataset_info(splits: DatasetSplits) -> dict[str, Any]:
    """What a model needs from its data, as plain data (stored in checkpoints)."""
    return {"input_shape": list(splits.input_shape), "num_classes": splits.num_classes,
            "class_names": list(splits.class_names)}
