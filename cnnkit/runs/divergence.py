"""A divergence: what the training module signals when training goes non-finite, and how it is read.

The module decides (it sees the loss and owns the step guard); the run's owner (``runs.lifecycle``)
records it. ``WatchesDivergence`` is the one declaration of what the owner may ask the module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable


@dataclass(frozen=True)
class Divergence:
    """The module's signal that training went non-finite; the update of that step was skipped."""

    step: int
    lr: float
    what: str  # "training loss" | "weights"

    @property
    def reason(self) -> str:
        return f"non-finite {self.what} at step {self.step} (lr {self.lr:g})"


@runtime_checkable
class WatchesDivergence(Protocol):
    """A training module whose divergence the run's owner reads (``ClassifierModule`` is one)."""

    divergence: Optional[Divergence]  # None until training goes non-finite

    def check_divergence(self) -> bool:
        """Whether training went non-finite (may read a device flag back: a host sync)."""
        ...

    def stop_diverged(self, what: str, step: Optional[int] = None) -> Divergence:
        """Record that ``what`` went non-finite and stop training; the first divergence stays."""
        ...
