"""What a dataset entry is: ``info`` and ``load``, and the traits the rest of cnnkit asks it about.

Nothing outside an entry knows which entry it is: the config's validation asks ``in_memory`` whether
the tensor path can serve it, the data module asks ``decodable`` whether ``data.cache`` may decode its
files once, and ``predict`` asks ``input_files`` how to read a user's files and ``label_rule`` how
their true labels are known. A new format is one subclass that overrides the traits it differs in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from cnnkit.data.file_samples import FileSamples
from cnnkit.data.image_files import ImageFiles
from cnnkit.data.info import DataInfo
from cnnkit.data.splits import DatasetSplits

# How a file's true label is known (-1: it is not), and what predict says when no file had one.
LabelRule = tuple[Callable[[str], int], str]


class DatasetSource:
    """A dataset entry whose ``load`` holds every image in memory (one tensor a split); the defaults fit it."""

    def info(self) -> DataInfo:
        """What its samples look like (shape, classes), reading as little data as it can."""
        raise NotImplementedError

    def load(self) -> DatasetSplits:
        raise NotImplementedError

    def notes(self) -> list[str]:
        """What the source decided for the user while reading (an inferred image size), for its caller to
        say once: the data layer prints nothing itself."""
        return []

    # -- traits ---------------------------------------------------------------------------------
    @classmethod
    def in_memory(cls, cache: str) -> Optional[bool]:
        """Whether ``load`` gives its images as tensors in memory under ``data.cache=cache`` (the
        tensor-resident loader serves only those); None: known only once loaded. Asked of the class,
        before anything is read."""
        return True

    @classmethod
    def decodable(cls) -> bool:
        """Whether its splits are ``FileSamples`` that ``data.cache`` may decode once (into memory or a
        cache file) instead of every epoch."""
        return False

    def cache_root(self) -> Optional[str]:
        """The folder ``data.cache=disk`` writes its cache under (None: the folder its files share)."""
        return None

    def input_files(self) -> type[FileSamples]:
        """How ``predict --input`` reads a user's files for a model trained on this source (which file
        names it takes: the class's ``extensions``): image files unless the source has a format of its own."""
        return ImageFiles

    def label_rule(self, class_names: list[str]) -> Optional[LabelRule]:
        """How an input file's true label is known from its path, for a model with these classes; None:
        it is not (a folder named "3" says nothing of a digit a model trained on MNIST sees)."""
        return None


class FileSource(DatasetSource):
    """A dataset entry whose splits are ``FileSamples``: files decoded as batches are made, or once
    when ``data.cache`` says so (then they are in memory and the tensor path can serve them)."""

    @classmethod
    def in_memory(cls, cache: str) -> Optional[bool]:
        return {"memory": True, "disk": True, "none": False}.get(cache)  # auto: decided by their size

    @classmethod
    def decodable(cls) -> bool:
        return True

    @staticmethod
    def labels_by_folder(class_names: list[str]) -> LabelRule:
        """A file's label is the name of the folder it sits in (``<class>/<file>``), when it is a class."""
        index = {name: i for i, name in enumerate(class_names)}
        shown = ", ".join(class_names[:4]) + (", ..." if len(class_names) > 4 else "")
        return (
            (lambda path: index.get(Path(path).parent.name, -1)),
            f"no true labels: no file sits in a folder named after one of the model's classes ({shown})",
        )
