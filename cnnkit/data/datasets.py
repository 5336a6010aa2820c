"""Datasets by name. Each entry returns ``DatasetSplits``; images come out as floats in [0, 1].

``digits`` (scikit-learn's bundled 8×8 handwritten digits) needs no download and is the default.
torchvision's MNIST, Fashion-MNIST and CIFAR are read from ``root`` (``download: true`` fetches
them); ``image_folder`` reads a folder of image files laid out per class or with label prefixes.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from cnnkit.data.image_files import ImageFiles, image_headers, list_class_dirs, list_label_prefix
from cnnkit.data.info import DataInfo
from cnnkit.data.pixels import to_uint8
from cnnkit.data.source import DatasetSource, FileSource, LabelRule
from cnnkit.data.splits import DatasetSplits, TensorImages, stratified_split
from cnnkit.errors import DataError
from cnnkit.registry import DATASETS


def _size_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    height, width = image_size
    return int(height), int(width)


def _resize(images: torch.Tensor, image_size: int | Sequence[int] | None) -> torch.Tensor:
    if image_size is None or images.dim() != 4 or tuple(images.shape[-2:]) == _size_pair(image_size):
        return images
    dtype = images.dtype
    resized = F.interpolate(
        images.float(), size=_size_pair(image_size), mode="bilinear", antialias=True, align_corners=False
    )
    return to_uint8(resized) if dtype == torch.uint8 else resized


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 < value < 1.0:
        raise DataError(f"{name} must be in (0, 1), got {value}")


def _in_memory(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    *,
    test: tuple[torch.Tensor, torch.Tensor] | None,
    val_fraction: float,
    test_fraction: float | None,
    split_seed: int,
    image_size,
) -> DatasetSplits:
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
class Digits(DatasetSource):
    """The embedded default: seeded stratified train/val/test split; ``image_size`` resizes."""

    def __init__(
        self,
        image_size: int | list[int] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ):
        self.image_size, self.val_fraction, self.test_fraction, self.split_seed = (
            image_size,
            val_fraction,
            test_fraction,
            split_seed,
        )

    def info(self) -> DataInfo:
        return DataInfo.of((1, *_size_pair(self.image_size or 8)), [str(i) for i in range(10)])

    def load(self) -> DatasetSplits:
        # startup: sklearn only when this runs
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.as_tensor(bunch.target, dtype=torch.long)
        return _in_memory(
            images,
            labels,
            [str(c) for c in bunch.target_names],
            test=None,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            split_seed=self.split_seed,
            image_size=self.image_size,
        )


@DATASETS.register(
    "two_scales",
    description="generated two-class data on two features of scale ~1 and ~scale "
    "(default 100): the course's badly conditioned error surface",
)
class TwoScales(DatasetSource):
    """x1 ~ N(0, 1), x2 ~ N(0, scale²); the label is the sign of x1 + x2/scale + noise·N(0, 1).

    Both features matter equally once standardized; unstandardized, the loss is far steeper along
    w2 than along w1 (condition number ~ scale²).
    """

    def __init__(
        self,
        samples: int = 600,
        scale: float = 100.0,
        noise: float = 0.5,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
    ):
        if samples < 20 or scale <= 0:
            raise DataError(f"two_scales: need samples >= 20 and scale > 0, got {samples}, {scale}")
        self.samples, self.scale, self.noise, self.seed = samples, scale, noise, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def info(self) -> DataInfo:
        return DataInfo.of((2,), ["0", "1"])

    def load(self) -> DatasetSplits:
        generator = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.samples, 2, generator=generator) * torch.tensor([1.0, self.scale])
        score = x[:, 0] + x[:, 1] / self.scale + self.noise * torch.randn(self.samples, generator=generator)
        labels = (score > 0).long()
        return _in_memory(
            x,
            labels,
            ["0", "1"],
            test=None,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            split_seed=self.seed,
            image_size=None,
        )


@DATASETS.register(
    "synthetic",
    description="generated uint8 images with random labels (e.g. CIFAR-shaped "
    "3x32x32) for speed tests; nothing to learn",
)
class Synthetic(DatasetSource):
    """``samples`` random images of ``shape`` with ``num_classes`` random labels, from ``seed``."""

    def __init__(
        self,
        shape: list[int] = (3, 32, 32),
        num_classes: int = 10,
        samples: int = 10000,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
    ):
        if len(shape) != 3 or num_classes < 2 or samples < 20:
            raise DataError("synthetic: need shape [C, H, W], num_classes >= 2 and samples >= 20")
        self.shape, self.num_classes, self.samples, self.seed = tuple(shape), num_classes, samples, seed
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def info(self) -> DataInfo:
        return DataInfo.of(self.shape, [str(i) for i in range(self.num_classes)])

    def load(self) -> DatasetSplits:
        generator = torch.Generator().manual_seed(self.seed)
        images = torch.randint(0, 256, (self.samples, *self.shape), generator=generator, dtype=torch.uint8)
        labels = torch.arange(self.samples) % self.num_classes
        return _in_memory(
            images,
            labels,
            [str(i) for i in range(self.num_classes)],
            test=None,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            split_seed=self.seed,
            image_size=None,
        )


class TorchvisionSource(DatasetSource):
    """A torchvision data set read from ``root`` (``download: true`` fetches it); val is carved from train."""

    tv_class = ""  # torchvision.datasets class name
    folder = ""  # where it keeps its files under root
    files = ""  # where a user puts the files by hand, under root
    shape: tuple[int, int, int] = (1, 28, 28)
    classes: Sequence[str] = ()

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        image_size: int | list[int] | None = None,
    ):
        self.root, self.download, self.val_fraction, self.split_seed, self.image_size = (
            root,
            download,
            val_fraction,
            split_seed,
            image_size,
        )

    def info(self) -> DataInfo:
        size = _size_pair(self.image_size) if self.image_size else self.shape[1:]
        return DataInfo.of((self.shape[0], *size), self.classes)

    def _open(self, train: bool):
        # startup: torchvision only when this runs
        import torchvision.datasets as tvd

        if self.download:
            return self._download(train)
        if not os.path.isdir(self.root):
            raise DataError(
                f"{self.tv_class}: data root '{self.root}' does not exist; set data.dataset.root to where the data "
                f"is, or data.dataset.download=true to fetch it (needs internet)"
            )
        try:
            return getattr(tvd, self.tv_class)(root=self.root, train=train, download=False)
        except RuntimeError as err:
            raise DataError(
                f"{self.tv_class}: no data found under '{os.path.join(self.root, self.files)}'; "
                f"set data.dataset.download=true to fetch it (needs internet) or copy the files there"
            ) from err
        except OSError as err:
            raise DataError(f"{self.tv_class}: could not read the data under '{self.root}': {err}") from err

    def _download(self, train: bool):
        """torchvision's download (nothing to do when the files are there). A failed one says why, in one
        line, and leaves nothing of its own behind: no empty folders, no partial files."""
        # startup: torchvision only when this runs
        import torchvision.datasets as tvd

        before = _entries(self.root, self.folder)
        try:
            return getattr(tvd, self.tv_class)(root=self.root, train=train, download=True)
        except BaseException as err:
            _remove_new(self.root, self.folder, before)
            if not isinstance(err, (RuntimeError, OSError)):  # URLError is an OSError; torchvision wraps some
                raise
            raise DataError(
                f"downloading {self.tv_class} into '{self.root}' failed: {_download_error(err)}; check the network "
                f"(or proxy), or copy the files into '{os.path.join(self.root, self.files)}' and set "
                f"data.dataset.download=false"
            ) from err

    def load(self) -> DatasetSplits:
        def tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
            images = torch.as_tensor(ds.data)
            images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
            return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)

        train = self._open(train=True)
        images, labels = tensors(train)
        return _in_memory(
            images,
            labels,
            list(train.classes),
            test=tensors(self._open(train=False)),
            val_fraction=self.val_fraction,
            test_fraction=None,
            split_seed=self.split_seed,
            image_size=self.image_size,
        )


def _entries(root: str, folder: str) -> set[str]:
    """What is there of a download's destinations: ``root`` and its entries, everything under ``root/folder``."""
    if not os.path.isdir(root):
        return set()
    found = {root, *(os.path.join(root, name) for name in os.listdir(root))}
    for path, folders, files in os.walk(os.path.join(root, folder)):
        found.update(os.path.join(path, name) for name in folders + files)
    return found


def _download_error(err: BaseException) -> str:
    """The error in one line: torchvision lists every mirror it tried ("Tried URL, got: ERROR"), here the
    distinct errors once."""
    text = " ".join(str(err).split()) or type(err).__name__
    head, _, tried = text.partition(" Tried ")
    errors = re.findall(r"got: (.*?)(?= Tried |$)", tried)
    return f"{head} {' / '.join(dict.fromkeys(errors))}" if errors else text


def _remove_new(root: str, folder: str, before: set[str]) -> None:
    """Remove what a failed download made: the paths that were not there before, deepest first."""
    for path in sorted(_entries(root, folder) - before, key=lambda p: p.count(os.sep), reverse=True):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)


@DATASETS.register("mnist", description="torchvision MNIST, 28x28 grayscale digits (60k train / 10k test)")
class MNIST(TorchvisionSource):
    tv_class, folder, files, shape = "MNIST", "MNIST", "MNIST/raw", (1, 28, 28)
    classes = [str(i) for i in range(10)]


@DATASETS.register("fashion_mnist", description="torchvision Fashion-MNIST, 28x28 grayscale clothing (60k / 10k)")
class FashionMNIST(TorchvisionSource):
    tv_class, folder, files, shape = "FashionMNIST", "FashionMNIST", "FashionMNIST/raw", (1, 28, 28)
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@DATASETS.register("cifar10", description="torchvision CIFAR-10, 32x32 color, 10 classes (50k / 10k)")
class CIFAR10(TorchvisionSource):
    tv_class, folder, files, shape = "CIFAR10", "cifar-10-batches-py", "cifar-10-batches-py", (3, 32, 32)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@DATASETS.register("cifar100", description="torchvision CIFAR-100, 32x32 color, 100 classes (50k / 10k)")
class CIFAR100(TorchvisionSource):
    tv_class, folder, files, shape = "CIFAR100", "cifar-100-python", "cifar-100-python", (3, 32, 32)
    classes = [str(i) for i in range(100)]  # the real names come with the data


@DATASETS.register(
    "image_folder",
    aliases=("folder",),
    description="image files: train/ val/ [test/] with a folder per class, or label-prefixed names",
)
class ImageFolder(FileSource):
    """``layout: class_dirs`` → ``root/train/<class>/*.jpg``; ``label_prefix`` → ``root/train/3_120.jpg``.

    ``splits`` names the split folders (default train, val, test); test is optional. ``num_classes``
    lets tools that read no data (``describe``) know the class count; if given it must match.
    ``image_size`` and ``channels`` default to the images' own, read from the training files' headers
    when they agree (28×28 grayscale digits stay 1×28×28); photos of mixed sizes are resized to 64×64.
    """

    FALLBACK_SIZE, FALLBACK_CHANNELS = 64, 3

    def __init__(
        self,
        root: str,
        layout: str = "class_dirs",
        image_size: int | list[int] | None = None,
        channels: int | None = None,
        splits: dict[str, str] | None = None,
        num_classes: int | None = None,
    ):
        if layout not in ("class_dirs", "label_prefix"):
            raise DataError(f"image_folder: layout must be class_dirs or label_prefix, got {layout!r}")
        if channels not in (None, 1, 3):
            raise DataError(f"image_folder: channels must be 1 or 3, got {channels}")
        self.root, self.layout = root, layout
        self.size = _size_pair(image_size) if image_size is not None else None
        self.channels = channels
        self.folders = {"train": "train", "val": "val", "test": "test", **(splits or {})}
        self.num_classes = num_classes
        self._notes: list[str] = []

    def notes(self) -> list[str]:
        said, self._notes = self._notes, []
        return said

    def cache_root(self) -> str:
        return self.root

    def label_rule(self, class_names: list[str]) -> LabelRule:
        """As the training files were laid out: in a folder named after the class, or named ``<label>_...``."""
        if self.layout == "class_dirs":
            return self.labels_by_folder(class_names)
        index = {name: i for i, name in enumerate(class_names)}
        shown = ", ".join(class_names[:4]) + (", ..." if len(class_names) > 4 else "")
        return (
            (lambda path: index.get(Path(path).name.split("_", 1)[0], -1) if "_" in Path(path).name else -1),
            f"no true labels: no file is named <class>_... after one of the model's classes ({shown})",
        )

    def _shape(self, train_files: list[tuple[str, int]] | None) -> tuple[int, int, int]:
        """(channels, height, width): as configured, else the images' own (said in one line), else 3×64×64."""
        if self.size is not None and self.channels is not None:
            return (self.channels, *self.size)

        headers = image_headers([path for path, _ in (train_files or [])[:64]])
        sizes = {size for size, _ in headers}
        inferred = []
        if self.size is None:
            if len(sizes) == 1:
                ((width, height),) = sizes
                self.size = (height, width)
                inferred.append(f"{height}x{width} pixels")
            else:
                self.size = _size_pair(self.FALLBACK_SIZE)
                seen = (
                    f"sizes differ ({', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:2])}, ...)"
                    if sizes
                    else "no image to read"
                )
                inferred.append(f"{seen}: resized to {self.FALLBACK_SIZE}x{self.FALLBACK_SIZE}")
        if self.channels is None:
            modes = {channels for _, channels in headers}
            self.channels = modes.pop() if len(modes) == 1 else self.FALLBACK_CHANNELS
            inferred.append(
                ("grayscale" if self.channels == 1 else "color")
                if headers
                else f"no image to read: {self.channels} channels"
            )
        self._notes.append(
            f"image_folder '{self.root}': {', '.join(inferred)} → input "
            f"{self.channels}x{self.size[0]}x{self.size[1]} (set data.dataset.image_size / channels "
            f"to change)"
        )
        return (self.channels, *self.size)

    def _list(self, split: str, class_names: list[str] | None):
        lister = list_class_dirs if self.layout == "class_dirs" else list_label_prefix
        return lister(os.path.join(self.root, self.folders[split]), class_names)

    def info(self) -> DataInfo:
        if self.num_classes is not None:  # no data needed, but the images' own shape if they are there
            folder = os.path.join(self.root, self.folders["train"])
            files = self._list("train", None)[1] if os.path.isdir(folder) else None
            return DataInfo.of(self._shape(files), [str(i) for i in range(self.num_classes)])
        return dataset_info(self.load())

    def load(self) -> DatasetSplits:
        if not os.path.isdir(self.root):
            raise DataError(
                f"image_folder: data root '{self.root}' does not exist; set data.dataset.root to your image folder"
            )
        for split in ("train", "val"):
            if not os.path.isdir(os.path.join(self.root, self.folders[split])):
                raise DataError(
                    f"image_folder: no '{self.folders[split]}' folder under '{self.root}' (the {split} "
                    f"split); set data.dataset.splits.{split} to its folder name"
                )
        class_names, train_files = self._list("train", None)
        if self.num_classes is not None and self.num_classes != len(class_names):
            raise DataError(
                f"image_folder: data.dataset.num_classes={self.num_classes} but "
                f"'{os.path.join(self.root, self.folders['train'])}' has {len(class_names)} classes; "
                f"fix num_classes or the folders"
            )
        _, val_files = self._list("val", class_names)
        has_test = os.path.isdir(os.path.join(self.root, self.folders["test"]))
        test_files = self._list("test", class_names)[1] if has_test else None

        channels, height, width = self._shape(train_files)

        def files(split: str, items):
            return ImageFiles(items, (height, width), channels, split) if items is not None else None

        return DatasetSplits(
            train=files("train", train_files),
            val=files("val", val_files),
            test=files("test", test_files),
            input_shape=(channels, height, width),
            class_names=class_names,
        )


def dataset_info(splits: DatasetSplits) -> dict[str, Any]:
    """What a model needs from its data, as plain data (stored in checkpoints)."""
    return DataInfo.of(splits.input_shape, splits.class_names)
