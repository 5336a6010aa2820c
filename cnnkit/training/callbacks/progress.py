"""What a run shows while it trains: one live bar on a terminal, one line per epoch elsewhere.

Lightning's own bars add a sanity-check bar, a validation bar per epoch and every logged metric;
these subclasses keep the training bar alone with epoch, step, loss and val/acc on it. Output that
is not a terminal (CI, a pipe, a SLURM log) gets no carriage-return bars: one line per epoch.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

from cnnkit.console import active_matrix, epoch_label, interactive
from cnnkit.messages import first_process, show

SHOWN = (("train/loss_step", "loss"), ("val/acc", "val/acc"))  # logged key → label on the bar


def shown_metrics(trainer: L.Trainer, validated: bool = True) -> dict[str, Any]:
    """The few numbers a person follows during training (Lightning's bar shows every logged one);
    val/acc only once ``validated`` (the sanity check's value is of the untrained model)."""
    metrics = trainer.progress_bar_metrics
    shown: dict[str, Any] = {"step": int(trainer.global_step)}
    shown.update(
        {
            label: float(metrics[key])
            for key, label in SHOWN
            if key in metrics and (validated or not key.startswith("val/"))
        }
    )
    return shown


class _Validated:
    """Remembers whether a validation of this fit ran (not the sanity check)."""

    validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validated = self.validated or not trainer.sanity_checking
        parent = getattr(super(), "on_validation_end", None)
        if parent is not None:
            parent(trainer, pl_module)


class TqdmBar(_Validated, TQDMProgressBar):
    """Lightning's tqdm bar with the training bar alone; evaluation bars vanish when done."""

    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        bar = super().init_test_tqdm()
        bar.leave = False
        return bar

    def init_predict_tqdm(self) -> Tqdm:
        bar = super().init_predict_tqdm()
        bar.leave = False
        return bar

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description(epoch_label(trainer))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        return shown_metrics(trainer, self.validated)


class RichBar(_Validated, RichProgressBar):
    """Lightning's rich bar with the training bar alone (val/acc shows in its metrics column), the epoch
    counted from 1, and no bar left behind by a fit's final test."""

    def on_validation_batch_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=epoch_label(trainer))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None and self.test_progress_bar_id is not None:
            self.progress.update(self.test_progress_bar_id, visible=False)
        super().on_test_end(trainer, pl_module)

    def configure_columns(self, trainer: L.Trainer) -> list:
        """Lightning's columns with a shorter bar and without the it/s one: the metrics fit a 100-column line."""
        columns = [c for c in super().configure_columns(trainer) if type(c).__name__ != "ProcessingSpeedColumn"]
        for column in columns:
            if hasattr(column, "bar_width"):
                column.bar_width = 24
        return columns

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        shown = shown_metrics(trainer, self.validated)
        shown["step"] = str(shown["step"])  # rich formats every number as .3f
        return shown


class EpochLines(_Validated, L.Callback):
    """One line per epoch, for output that is not a terminal: the epoch's mean training loss (known once
    Lightning has gathered the epoch's metrics, so the line comes as the next epoch starts or training
    ends) and the latest val/acc."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.pending: Optional[tuple[str, int, float]] = None  # (epoch label, step, seconds) not yet printed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pending = (epoch_label(trainer), int(trainer.global_step), time.monotonic() - self.started)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def _flush(self, trainer: L.Trainer) -> None:
        if self.pending is None or not first_process():
            return
        label, step, seconds = self.pending
        self.pending = None
        parts = [label, f"step {step}"]
        metrics = trainer.callback_metrics
        if "train/loss_epoch" in metrics:
            parts.append(f"loss {float(metrics['train/loss_epoch']):.4g}")
        if self.validated and "val/acc" in metrics:
            parts.append(f"val/acc {float(metrics['val/acc']):.4f}")
        parts.append(f"{seconds:.1f} s")
        show("  ".join(parts))


class MatrixEpochs(_Validated, L.Callback):
    """A matrix variant's epochs, shown on the matrix's overall bar (``terminal.MatrixDisplay``)."""

    def __init__(self, display: Any):
        self.display = display

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if first_process():
            self.display.epoch_ended(trainer, shown_metrics(trainer, self.validated))


def progress_callbacks(setting: str) -> list[L.Callback]:
    """The callbacks that show a run's progress for ``trainer.progress_bar`` on this output."""
    matrix = active_matrix()
    if setting == "none":
        return []
    if matrix is not None:  # a matrix variant: its progress is one part of the matrix's bar
        return [MatrixEpochs(matrix)] if matrix.bar is not None else []
    if not interactive():
        return [EpochLines()]
    if setting == "rich" or (setting == "auto" and importlib.util.find_spec("rich") is not None):
        return [RichBar()]
    return [TqdmBar()]
