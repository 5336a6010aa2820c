"""Image files on disk, decoded and resized on access (for data too large to hold in memory)."""

from __future__ import annotations

import os
from typing import Optional

import torch

from cnnkit.data.file_samples import FileSamples
from cnnkit.errors import DataError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_class_dirs(folder: str, class_names: Optional[list[str]]) -> tuple[list[str], list[tuple[str, int]]]:
    """``folder/<class>/<image>``: torchvision's ImageFolder conventions; classes sorted by name."""
    # startup: torchvision only when this runs
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        found, _ = find_classes(folder)
    except FileNotFoundError as err:
        raise DataError(f"image_folder: '{folder}' has no class folders") from err
    if class_names is not None and found != class_names:
        extra = sorted(set(found) - set(class_names))
        raise (
            DataError(
                f"image_folder: '{folder}' has class folders {extra or found} that the train split does not have; "
                f"every split needs the train split's classes"
            )
            if extra
            else DataError(
                f"image_folder: '{folder}' lacks class folder(s) "
                f"{sorted(set(class_names) - set(found))} of the train split"
            )
        )
    names = class_names or found
    for name in names:
        class_dir = os.path.join(folder, name)
        if not any(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, fs in os.walk(class_dir) for f in fs):
            raise DataError(
                f"image_folder: class folder '{class_dir}' has no images "
                f"({', '.join(IMAGE_EXTENSIONS)}); remove it or add images"
            )
    items = make_dataset(folder, {n: i for i, n in enumerate(names)}, extensions=IMAGE_EXTENSIONS)
    return names, items


def list_label_prefix(folder: str, class_names: Optional[list[str]]) -> tuple[list[str], list[tuple[str, int]]]:
    """``folder/<label>_<anything>.<ext>`` (the course's food-11 layout); classes are the labels."""
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"image_folder: '{folder}' has no images ({', '.join(IMAGE_EXTENSIONS)})")
    labels = []
    for name in files:
        label = name.split("_", 1)[0]
        if "_" not in name or not label:
            raise DataError(
                f"image_folder: '{os.path.join(folder, name)}' does not start with '<label>_' "
                f"as layout label_prefix needs (e.g. 3_120.jpg)"
            )
        labels.append(label)
    found = sorted(set(labels), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    names = class_names or found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DataError(f"image_folder: '{folder}' has labels {unknown} that the train split does not have")
    index = {n: i for i, n in enumerate(names)}
    return names, [(os.path.join(folder, f), index[label]) for f, label in zip(files, labels)]


def image_headers(paths: list[str]) -> list[tuple[tuple[int, int], int]]:
    """((width, height), channels) of each readable image, from its header alone (no decoding)."""
    # startup: PIL only when this runs
    from PIL import Image

    headers = []
    for path in paths:
        try:
            with Image.open(path) as image:
                headers.append((image.size, 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3))
        except (OSError, ValueError):  # an unreadable file is reported when it is decoded
            continue
    return headers


class UnreadableImage(DataError):
    """An image file the decoder refuses; ``path`` and ``reason`` let a caller name a better reason.

    Constructed from its message alone too: torch re-raises a DataLoader worker's error that way.
    """

    def __init__(self, message: str, path: str = "", reason: str = ""):
        super().__init__(message)
        self.path, self.reason = path, reason

    @classmethod
    def of(cls, path: str, reason: str) -> "UnreadableImage":
        return cls(f"image_folder: cannot read image '{path}' ({reason}); replace or remove the file", path, reason)

    def __reduce__(self):  # raised in a decoding process, re-raised in the main one
        return type(self), (str(self), self.path, self.reason)


class ImageFiles(FileSamples):
    """Image files; each is decoded, converted to ``channels`` and resized to ``size``."""

    extensions = IMAGE_EXTENSIONS

    def decode(self, index: int) -> torch.Tensor:
        """The image as uint8 (channels, height, width), converted and resized."""
        # startup: torchvision only when this runs
        from torchvision.io import ImageReadMode, decode_image
        from torchvision.transforms.v2 import functional as TF

        path = self.items[index][0]
        mode = ImageReadMode.RGB if self.channels == 3 else ImageReadMode.GRAY
        try:
            image = decode_image(path, mode=mode)
        except Exception as err:
            raise UnreadableImage.of(path, _decoder_reason(err)) from err
        if tuple(image.shape[-2:]) == tuple(self.size):  # already the size: resizing would copy it unchanged
            return image
        return TF.resize(image, list(self.size), antialias=True)


def _decoder_reason(err: Exception) -> str:
    """torchvision's decoder message without its C++ function and source location
    (``operator(), .../decode_png.cpp:79, Out of bound read ...`` → ``Out of bound read ...``)."""
    text = first_line(err)
    parts = [part.strip() for part in text.split(", ")]
    located = [i for i, part in enumerate(parts) if ".cpp:" in part]
    if located:
        parts = parts[located[-1] + 1 :] or [p for p in parts if ".cpp:" not in p]
    return ", ".join(parts) or text
