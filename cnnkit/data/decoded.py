"""Image folders decoded once: their uint8 images held in memory, or in a cache file later runs map.

``data.cache`` decides, per run:
- ``none``: the DataLoader path decodes every image each time an epoch uses it;
- ``memory``: each process decodes the folder once (in parallel over the cores) and holds it;
- ``disk``: the first process decodes it into ``<root>/.cnnkit-cache/<split>-<key>.npy`` (or the user
  cache directory when the folder is read-only); every later run, and every other process, maps
  that file instead of decoding. The key covers the file list, each file's size and modification
  time, and the decoded shape, so a changed, added or removed image rebuilds it. A file lock makes
  processes that start together (torchrun, SLURM) build it once;
- ``auto``: ``memory`` when the decoded images fit ``data.cache_budget`` (GiB), else ``none``.

Decoded images are exactly what the DataLoader path would compute (same decoder, same resize), so
the data set is the same; an unreadable image is found here, before training, with its file named.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import multiprocessing
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from cnnkit.data.file_samples import FileSamples
from cnnkit.data.image_files import UnreadableImage
from cnnkit.data.splits import TensorImages
from cnnkit.errors import DataError
from cnnkit.messages import relay
from cnnkit.runs.atomic import atomic_file

try:
    import fcntl  # POSIX only
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

CACHE_FOLDER = ".cnnkit-cache"
FORMAT = 1  # part of the key: a cache written by another layout is never read


def decoded_bytes(files: FileSamples) -> int:
    return len(files) * files.channels * files.size[0] * files.size[1]


def workers(count: int) -> int:
    """Processes to decode ``count`` images with: one per core (shared by the processes of this machine
    that decode at once, e.g. torchrun's), when there are enough images to pay for starting them
    (decoding holds the GIL, so threads would not help)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, min((os.cpu_count() or 1) // max(1, local), 16, count // 1000))


# What the decoding processes share: set before they fork, so each inherits it (no pickling).
_job: Optional[tuple[FileSamples, torch.Tensor]] = None


def _start_worker() -> None:
    torch.set_num_threads(1)  # each process decodes on one core


def _decode_range(bounds: tuple[int, int]) -> int:
    files, images = _job
    for index in range(*bounds):
        images[index] = files.decode(index)
    return bounds[1] - bounds[0]


def _shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor in an anonymous shared mapping: forked processes write into it in place (and,
    unlike /dev/shm, it is not bounded by a container's small shared-memory mount)."""
    buffer = mmap.mmap(-1, max(1, math.prod(shape)))
    return torch.frombuffer(buffer, dtype=torch.uint8, count=math.prod(shape)).view(shape)


DECODER_NOISE = (
    "libpng ",
    "libjpeg",
    "Corrupt JPEG",
    "Premature end of JPEG",
    "Not a JPEG",
    "Invalid SOS",
    "Huffman",
    "Unsupported marker",
    "Warning: ",
)


@contextmanager
def native_messages() -> Iterator[list[str]]:
    """Collect what the C decoders write straight to the process's stderr (libpng's "bad header", its
    iCCP warnings) while decoding, so a broken image is one line of cnnkit's naming their reason; any
    other line written meanwhile is passed on to stderr afterwards."""
    collected: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield collected
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode(errors="replace").splitlines():
                if not line.strip():
                    continue
                if line.strip().startswith(DECODER_NOISE):
                    collected.append(line.strip())
                else:
                    relay(line)


def _reason(files: FileSamples, err: UnreadableImage) -> UnreadableImage:
    """The decoder's own reason for ``err``'s file: decoded again alone, its library's message caught."""
    if err.reason.rstrip(".").lower() not in ("internal error", ""):
        return err
    index = next((i for i, (path, _) in enumerate(files.items) if path == err.path), None)
    if index is None:
        return err
    with native_messages() as messages:
        try:
            files.decode(index)
        except UnreadableImage:
            pass
    errors = [m for m in messages if "error" in m.lower()]
    return UnreadableImage.of(err.path, errors[0]) if errors else err


def decode(files: FileSamples, what: str, show_progress: bool = False) -> torch.Tensor:
    """Every image of ``files`` as one uint8 tensor (N, C, H, W), decoded by a process per core; with
    ``show_progress`` (a terminal) and many images, under a bar."""
    global _job
    shape = (len(files), files.channels, *files.size)
    processes = workers(len(files)) if "fork" in multiprocessing.get_all_start_methods() else 1
    images = _shared_uint8(shape) if processes > 1 else torch.empty(shape, dtype=torch.uint8)
    bar = None
    if show_progress and len(files) > 1000:
        bar = tqdm(total=len(files), desc=f"decoding {what}", unit="img", leave=False, file=sys.stdout)
    step = 256
    ranges = [(start, min(start + step, len(files))) for start in range(0, len(files), step)]
    _job = (files, images)
    try:
        with native_messages():
            if processes > 1:
                _decode_range((0, 1))  # loads the decoders here once, before the processes fork
                with ProcessPoolExecutor(
                    processes, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker
                ) as pool:
                    for done in pool.map(_decode_range, ranges):
                        if bar is not None:
                            bar.update(done)
            else:
                for bounds in ranges:
                    done = _decode_range(bounds)
                    if bar is not None:
                        bar.update(done)
    except UnreadableImage as err:
        raise _reason(files, err) from err
    except BrokenProcessPool as err:
        raise DataError(
            f"image_folder: a process decoding the {what} images died (out of memory?); "
            f"use data.cache=none to decode them as batches are made"
        ) from err
    finally:
        _job = None
        if bar is not None:
            bar.close()
    return images


# -- the cache file ---------------------------------------------------------------------------------
def cache_name(files: FileSamples, split: str) -> str:
    """``<split>-<C>x<H>x<W>-<key>.npy``: the key is a digest of the files (path, label, size, mtime), so
    another version of the folder has another name, while other shapes of it keep their own files."""
    digest = hashlib.sha1(json.dumps([FORMAT, files.channels, list(files.size)]).encode())
    for path, label in files.items:
        try:
            stat = os.stat(path)
        except OSError as err:
            raise DataError(
                f"image_folder: cannot read image '{path}' ({err.strerror}); replace or remove the file"
            ) from err
        digest.update(f"{os.path.abspath(path)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return f"{split}-{files.channels}x{files.size[0]}x{files.size[1]}-{digest.hexdigest()[:20]}.npy"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def cache_folder(root: str) -> Path:
    """``<root>/.cnnkit-cache``, or the user's cache directory when the data folder cannot be written."""
    beside = Path(root) / CACHE_FOLDER
    if _writable(beside):
        return beside
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = home / "cnnkit" / "decoded" / hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:12]
    if not _writable(folder):
        raise DataError(f"data.cache=disk: neither '{beside}' nor '{folder}' can be written; use data.cache=memory")
    return folder


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held across processes (POSIX ``flock``; elsewhere, none)."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def from_disk_cache(
    files: FileSamples, folder: Path, split: str, show_progress: bool = False
) -> tuple[torch.Tensor, bool]:
    """The decoded images of ``files`` mapped from their cache file in ``folder``, and whether this call
    built it (decoding them) or found it."""
    name = cache_name(files, split)
    path = folder / name
    built = False
    with file_lock(folder / f"{split}.lock"):
        for partial in folder.glob(f".{split}-*.tmp"):  # left by a process killed while writing
            partial.unlink(missing_ok=True)
        if not path.is_file():
            images = decode(files, split, show_progress)
            for stale in folder.glob(name.rsplit("-", 1)[0] + "-*.npy"):  # another version of these files
                stale.unlink(missing_ok=True)
            with atomic_file(path) as handle:
                np.save(handle, images.numpy())
            built = True
        mapped = np.load(path, mmap_mode="c")  # mapped under the lock: no other process removes it meanwhile
    return torch.from_numpy(mapped), built  # copy-on-write: the file is never written


def choose(mode: str, budget_gib: float, total_bytes: int) -> str:
    """``memory``, ``disk`` or ``none`` for ``data.cache``, given the decoded size of every split."""
    if mode != "auto":
        return mode
    return "memory" if total_bytes <= budget_gib * 2**30 else "none"


def size_text(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def decoded_split(files: FileSamples, split: str, folder: Optional[Path] = None, show_progress: bool = False):
    """``files`` as in-memory images (``TensorImages``): decoded now, or mapped from the cache in
    ``folder``; and whether images were decoded."""
    images, built = (
        from_disk_cache(files, folder, split, show_progress)
        if folder is not None
        else (decode(files, split, show_progress), True)
    )
    labels = torch.tensor([label for _, label in files.items], dtype=torch.long)
    return TensorImages(images, labels, split, names=files.names()), built
