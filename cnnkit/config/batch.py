"""The batch each process loads, from the config's global batch: checked by validation, used by the loaders."""

from __future__ import annotations

import math

from cnnkit.errors import ConfigError


def per_device_batch(global_batch: int, world_size: int, accumulate: int) -> int:
    """The batch each process loads: global / (world size × gradient-accumulation steps)."""
    parts = world_size * accumulate
    if global_batch % parts:
        raise ConfigError(
            f"data.batch_size={global_batch} is the global batch: it must divide evenly by world size "
            f"{world_size} x trainer.accumulate_grad_batches {accumulate} = {parts}; "
            f"use a multiple of {parts}, e.g. {math.ceil(global_batch / parts) * parts}"
        )
    return global_batch // parts
