"""Random-number-generator state in every checkpoint, so a resumed run draws what it would have drawn.

Lightning checkpoints carry no RNG state. This callback stores Python's, NumPy's and torch's
(CPU and every CUDA device) generators as tensors and plain lists — loadable with
``torch.load(weights_only=True)`` — and restores them when a run resumes. Under DDP each rank
restores its own states.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def _rank() -> int:
    distributed = torch.distributed
    return distributed.get_rank() if distributed.is_available() and distributed.is_initialized() else 0


class RngState(L.Callback):
    @property
    def state_key(self) -> str:
        return "RngState"

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        rank = _rank()
        return {
            f"rank{rank}": {
                "python": [version, list(internal), gauss],
                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        rank = _rank()
        state = state_dict.get(f"rank{rank}") or next(iter(state_dict.values()), None)
        if not state:
            return
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
