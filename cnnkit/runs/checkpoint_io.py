"""Checkpoints that are never half-written.

Each checkpoint is written through ``atomic.atomic_file`` (a temporary file beside it, flushed to
disk, renamed into place), so a run killed during a save (or a disk that fills up) leaves the
previous ``last.ckpt`` intact. ``CNNKIT_FAULT_KILL_IN_SAVE=N`` kills the
process halfway through writing its N-th checkpoint: the fault-injection hook the tests use.
"""

from __future__ import annotations

import errno
import io
import os
import signal
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cnnkit.errors import CheckpointError
from cnnkit.runs.atomic import atomic_file

FAULT_ENV = "CNNKIT_FAULT_KILL_IN_SAVE"


class AtomicCheckpointIO(TorchCheckpointIO):
    def __init__(self) -> None:
        super().__init__()
        self.saves = 0
        self.refused = False  # a diverged state was offered: from then on nothing on disk is replaced or removed

    def refuse(self) -> None:
        """The run diverged (``RunLifecycle``'s verdict): no later save replaces or removes a good file."""
        self.refused = True

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str, storage_options: Optional[Any] = None) -> None:
        if self.refused:
            return
        self.saves += 1
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        try:
            with atomic_file(path) as handle:
                if os.environ.get(FAULT_ENV) == str(self.saves):
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                handle.write(data)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise CheckpointError(
                    f"could not save checkpoint '{path}': the disk is full or a file-size limit "
                    f"was reached ({os.strerror(err.errno)}); the previous checkpoint is intact - "
                    f"free space and resume with --ckpt last"
                ) from err
            raise

    def remove_checkpoint(self, path: str) -> None:
        if not self.refused:  # ModelCheckpoint rotates on saves that were skipped: keep the good files
            super().remove_checkpoint(path)
