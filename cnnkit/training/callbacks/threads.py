"""Re-checks a fit's thread count while it trains: fits start and end beside it (``cnnkit/training/threads.py``)."""

from __future__ import annotations

from typing import Any

import lightning as L

from cnnkit.training.threads import FitThreads


class ThreadShare(L.Callback):
    """``torch.set_num_threads`` again at the start of training and of every epoch, as the number of
    cnnkit fits running on the machine changes (with ``trainer.threads: auto``)."""

    def __init__(self, threads: FitThreads):
        self.threads = threads

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.threads.apply()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.threads.apply()
