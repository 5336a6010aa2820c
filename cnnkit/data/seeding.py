"""Every seed cnnkit derives from the config's ``seed``, in one place.

Each random stream is a pure function of (seed, epoch[, sample]), never of how far a process has
got: that is what makes a resumed run draw exactly what an uninterrupted one would. The
multipliers are distinct primes so that the streams of nearby seeds and epochs do not coincide.
"""

from __future__ import annotations


def order_seed(seed: int, epoch: int) -> int:
    """The training samples' order in ``epoch``."""
    return seed * 1_000_003 + epoch


def batch_augment_seed(seed: int, epoch: int) -> int:
    """Batched (on-device) augmentation of ``epoch``: one generator for the epoch's batches."""
    return seed * 7_919 + epoch


def sample_augment_seed(seed: int, epoch: int, index: int) -> int:
    """Per-sample augmentation in a DataLoader worker: sample ``index`` of ``epoch``."""
    return order_seed(seed, epoch) * 10_000_019 + index
