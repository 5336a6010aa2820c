"""``checkpoints/last.ckpt``: the state at the end of every epoch (and every N steps when asked).

Since Lightning 2.6 a ``ModelCheckpoint(save_last=True)`` writes ``last`` only at a step where it
also saved a top-k checkpoint, so a run whose monitored metric stopped improving kept an old
``last.ckpt``. This callback writes ``last.ckpt`` itself, whatever the monitored metric does. It
is a ModelCheckpoint (monitor none, one file named ``last``) so Lightning runs it after the
module's epoch-end hooks and after the best-checkpoint callback, whose updated state then goes
into ``last.ckpt`` too. An epoch instance and a step instance may both run: the newest save wins.
"""

from __future__ import annotations

from typing import Optional

from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    def __init__(self, dirpath: str, every_n_steps: Optional[int] = None):
        """Every epoch's end (after validation), or every ``every_n_steps`` optimizer steps."""
        triggers = (
            dict(every_n_train_steps=every_n_steps)
            if every_n_steps
            else dict(every_n_epochs=1, save_on_train_epoch_end=True)
        )
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            **triggers,
        )
        self.every_n_steps = every_n_steps

    @property
    def state_key(self) -> str:  # unique beside the best-checkpoint callback, whatever its triggers
        return f"LastCheckpoint[every_n_steps={self.every_n_steps}]" if self.every_n_steps else "LastCheckpoint"
