"""One owner of a run's lifecycle: its status.json, divergence, interrupts and failures.

``running`` → ``finished`` | ``diverged`` | ``failed`` | ``interrupted``. The owner is a callback
(in the spirit of Lightning's ``SaveConfigCallback``) present on every rank: each rank decides the
same way, rank 0 writes. The module only signals a divergence (``training.divergence.WatchesDivergence``);
the owner records it, keeps a diverged state out of every checkpoint, and says where the run stopped.
Whether a new fit may reuse or continue the directory is ``RunDir.verdict``, read before anything
heavy is imported.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cnnkit.errors import own_message
from cnnkit.messages import first_process
from cnnkit.runs.atomic import atomic_write_text
from cnnkit.runs.checkpoint_io import AtomicCheckpointIO
from cnnkit.runs.divergence import Divergence, WatchesDivergence
from cnnkit.runs.run_dir import RunDir

STATUSES = ("running", "finished", "diverged", "failed", "interrupted")


class RunInterrupted(Exception):
    """A run stopped by SIGINT or SIGTERM: status ``interrupted``, exit code 128 + the signal."""

    def __init__(self, run: RunDir, signum: int, step: int):
        self.run, self.signum, self.step = run, signum, step
        self.exit_code = 128 + signum
        saved = run.last_checkpoint.is_file()
        how = (
            "resume it from its last checkpoint with the same command and --ckpt last"
            if saved
            else "no checkpoint was saved yet: the same command starts it over"
        )
        super().__init__(f"{run.where} interrupted by {signal.Signals(signum).name} at step {step}; {how}")


def interrupt_signal(err: BaseException) -> Optional[int]:
    """The signal behind an exception: Ctrl-C (Lightning turns it into ``sys.exit(1)`` after its
    ``on_exception`` hooks) or SIGTERM (Lightning raises ``SIGTERMException`` at a batch boundary)."""
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(err, SIGTERMException):
        return signal.SIGTERM
    return None


class RunLifecycle(L.Callback):
    """Writes status.json and keeps a diverged state out of checkpoints; the module is a ``WatchesDivergence``."""

    def __init__(self, run: RunDir, checkpoint_io: AtomicCheckpointIO, init_from: Optional[str] = None):
        self.run = run
        self.checkpoint_io = checkpoint_io
        self.init_from = init_from  # recorded: a rerun keeps this run only when it starts from the same weights
        self.divergence: Optional[Divergence] = None
        self.interrupted: Optional[int] = None  # the signal, once one stopped the run
        self.wandb_run_id: Optional[str] = None  # saved in checkpoints so a resumed run continues it
        self.parameters = 0

    # -- status.json (rank 0 writes) ------------------------------------------------------------
    def _write(self, status: str, **details: Any) -> None:
        assert status in STATUSES, status
        if first_process():
            record = {
                "status": status,
                **details,
                "init_from": self.init_from,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_text(self.run.status_file, json.dumps(record, indent=2) + "\n")

    def start(self, step: int) -> None:
        """``running``, with this process's id and host so another fit can tell whether it is alive."""
        self._write("running", step=step, pid=os.getpid(), host=socket.gethostname())

    def finish(
        self,
        step: int,
        metrics: dict[str, float],
        best: Optional[Path],
        best_epoch: Optional[int] = None,
        epochs: Optional[int] = None,
    ) -> None:
        """``best_epoch`` (counted from 1, as printed) is the one the test metrics are of; ``epochs`` trained."""
        self._write(
            "finished",
            step=step,
            metrics=metrics,
            best_checkpoint=str(best) if best else None,
            best_epoch=best_epoch,
            epochs=epochs,
        )
        if first_process():  # a requeued job's pre-emption checkpoints are spent
            for stale in self.run.path.glob("hpc_ckpt_*.ckpt"):
                stale.unlink(missing_ok=True)

    def record_divergence(self, last_good: Optional[Path]) -> None:
        d = self.divergence
        self._write("diverged", step=d.step, lr=d.lr, reason=d.reason, last_good=str(last_good) if last_good else None)

    def fail(self, err: BaseException, step: int) -> None:
        """An exception ended the run: ``interrupted`` for SIGINT/SIGTERM, else ``failed`` with its reason."""
        signum = self.interrupted or interrupt_signal(err)
        if signum is not None:
            self.interrupted = signum
            self._write("interrupted", step=step, signal=signal.Signals(signum).name)
            return
        reason = f"{type(err).__name__}: {own_message(err)}".strip().splitlines()[0]
        self._write("failed", step=step, reason=reason)

    @contextmanager
    def recording_failures(self, trainer: L.Trainer) -> Iterator[None]:
        """An exception out of the block is recorded (``fail``); a signal's comes out as ``RunInterrupted``."""
        try:
            yield
        except BaseException as err:
            self.fail(err, int(trainer.global_step))
            if self.interrupted:
                raise RunInterrupted(self.run, self.interrupted, int(trainer.global_step)) from err
            raise

    # -- Lightning hooks --------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, WatchesDivergence):
            raise TypeError(
                f"{type(pl_module).__name__} does not signal divergence (training.divergence."
                f"WatchesDivergence): the run's lifecycle cannot tell a diverged run"
            )
        self.parameters = sum(p.numel() for p in pl_module.model.parameters())

    def on_train_batch_end(self, trainer, pl_module: WatchesDivergence, outputs, batch, batch_idx) -> None:
        if self.divergence is None and pl_module.divergence is not None:
            self.divergence = pl_module.divergence

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning replaces a Ctrl-C by sys.exit(1) after this hook: it is the one place that sees the signal
        self.interrupted = self.interrupted or interrupt_signal(exception)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("cnnkit", {})["wandb_run_id"] = self.wandb_run_id
        if not self._good_to_save(trainer, pl_module):
            self.checkpoint_io.refuse()

    def _good_to_save(self, trainer: L.Trainer, pl_module: WatchesDivergence) -> bool:
        """False once the run diverged or any weight or buffer is non-finite, so last.ckpt stays the last
        good state: an update can overflow the weights a step before the loss shows it, and a diverged
        forward pass leaves NaN in BN's running statistics. Decided on every rank alike."""
        pl_module.check_divergence()  # with the step guard, its device flag is read back here
        if self.divergence is None and pl_module.divergence is not None:
            self.divergence = pl_module.divergence
        if self.divergence is not None:
            return False
        floats = [t for t in pl_module.state_dict().values() if t.is_floating_point()]
        finite = bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()) if floats else True
        if trainer.strategy.reduce_boolean_decision(not finite, all=False):
            self.divergence = pl_module.stop_diverged("weights")
            return False
        return True


def run_of(trainer: Any) -> Optional[RunDir]:
    """The run a trainer trains (None when it only evaluates): callbacks write their files there."""
    for callback in getattr(trainer, "callbacks", None) or []:
        if isinstance(callback, RunLifecycle):
            return callback.run
    return None
