"""Which loader ``data.loader`` (auto | tensor | dataloader) picks: a rule of the config, read before
torch by validation (a refusal comes before anything is built) and by the data module as it sets up.

The tensor-resident path (``data/tensor_loader.py``) needs the data set in memory and every training
transform batched (``apply_batch(x, generator)``); ``auto`` takes it exactly then.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from cnnkit.errors import ConfigError
from cnnkit.registry import TRANSFORMS


def batched(transform: Any) -> bool:
    """Whether ``transform`` (a class or an instance) has a batched version; an instance may say that
    its settings have none (``batchable``, e.g. color_jitter with hue)."""
    has_method = callable(getattr(transform, "apply_batch", None))
    settings = getattr(transform, "batchable", True) if not isinstance(transform, type) else True
    return has_method and bool(settings)


def supports_batches(transforms: Sequence[Any]) -> bool:
    return all(batched(t) for t in transforms)


def batched_names() -> str:
    """The registered training transforms that have a batched version, for messages."""
    return ", ".join(e.name for e in TRANSFORMS.entries() if batched(e.load()))


def uses_tensor_path(mode: str, in_memory: Optional[bool], transforms: Sequence[Any]) -> bool:
    """``data.loader`` (auto | tensor | dataloader) → whether batches come from device-resident tensors.

    ``transforms`` may be the transform classes (validation) or instances (the data module); an
    unknown ``in_memory`` (a user's dataset, before loading) defers that check to the data module.
    """
    every_one_batched = supports_batches(transforms)
    if mode == "tensor":
        if in_memory is False:
            raise ConfigError(
                "data.loader=tensor needs a data set held in memory, and this one's files are read "
                "as batches are made; set data.cache=memory or disk to decode them once, or use "
                "data.loader=dataloader"
            )
        if not every_one_batched:
            names = [getattr(t, "__name__", type(t).__name__) for t in transforms if not batched(t)]
            raise ConfigError(
                f"data.loader=tensor: transform(s) {', '.join(names)} have no batched version "
                f"(these do: {batched_names()}); use data.loader=dataloader"
            )
    return mode == "tensor" or (mode == "auto" and bool(in_memory) and every_one_batched)
