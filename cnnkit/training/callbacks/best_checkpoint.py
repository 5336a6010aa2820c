"""``checkpoints/best-epoch…-step….ckpt``: the run's best state by ``checkpoint.monitor``, ties broken.

A small validation split makes the monitored accuracy tie often (180 images: steps of 1/180), and
Lightning's ModelCheckpoint keeps the *first* of equal scores, the least-trained of them: the
quickstart tested epoch 3 of 15 (seed 0) and epoch 1 of 15 (seed 2). Here a tie goes to the lower
``val/loss`` — a finer reading of the same validation images, so the choice stays "the best on
validation" and does not favour a state merely for training longer — and, where that ties too (or the
monitor is val/loss itself), to the later step. File names count epochs from 1, as every line cnnkit
prints does.

Lightning decides entry to the top k in ``check_monitor_top_k`` (public) but picks the best inside its
private ``_update_best_and_save``, overridden here to correct that pick; ``tests/test_best_checkpoint.py``
fails if Lightning renames it (a tie would then go to the latest epoch whatever its val/loss).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

TIE_BREAK = "val/loss"  # lower is better


class BestCheckpoint(ModelCheckpoint):
    def __init__(self, dirpath: str, monitor: str, mode: str, save_top_k: int, every_n_epochs: int):
        super().__init__(
            dirpath=dirpath,
            filename="best-epoch{epoch:03d}-step{step:06d}",
            auto_insert_metric_name=False,
            monitor=monitor,
            mode=mode,
            save_top_k=save_top_k,
            save_last=False,
            every_n_epochs=every_n_epochs,
            enable_version_counter=False,
        )
        self.ties: dict[str, tuple[float, int, int]] = {}  # path → (val/loss, step, epoch from 1) of a kept file

    @property
    def state_key(self) -> str:  # a plain ModelCheckpoint's: a run saved before this class resumes its state
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    @property
    def best_epoch(self) -> Optional[int]:
        """The epoch (from 1) of the best checkpoint; None before one is saved (or for an older run's)."""
        tie = self.ties.get(self.best_model_path)
        return tie[2] if tie else None

    def format_checkpoint_name(
        self,
        metrics: dict[str, Any],
        filename: Optional[str] = None,
        ver: Optional[int] = None,
        prefix: Optional[str] = None,
    ) -> str:
        shown = dict(metrics)
        if "epoch" in shown:
            shown["epoch"] = shown["epoch"] + 1
        return super().format_checkpoint_name(shown, filename, ver, prefix)

    # -- ranking ---------------------------------------------------------------------------------------
    def _order(self, score: Any, loss: Any, step: int) -> tuple[float, float, int]:
        """Larger is better: the monitored score (none or NaN: the worst), a lower val/loss, the later step."""
        score = _number(score, -math.inf if self.mode == "max" else math.inf)
        return (score if self.mode == "max" else -score), -_number(loss, math.inf), step

    def _rank(self, path: str) -> tuple[float, float, int]:
        loss, step, _ = self.ties.get(path, (math.inf, -1, 0))  # a file of an older run: below any equal score
        return self._order(self.best_k_models[path], loss, step)

    def _candidate(self, trainer: Any, current: Any) -> tuple[float, float, int]:
        return self._order(current, trainer.callback_metrics.get(TIE_BREAK), int(trainer.global_step))

    def _pick(self) -> None:
        """The best and the k-th (the next to drop) among the kept files, by the ranking above."""
        if not self.best_k_models:
            return
        self.best_model_path = max(self.best_k_models, key=self._rank)
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.save_top_k != -1 and len(self.best_k_models) >= self.save_top_k:
            self.kth_best_model_path = min(self.best_k_models, key=self._rank)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.ties = {path: tie for path, tie in self.ties.items() if path in self.best_k_models}

    # -- Lightning's hooks -------------------------------------------------------------------------------
    def check_monitor_top_k(self, trainer: Any, current: Optional[torch.Tensor] = None) -> bool:
        """Whether ``current`` enters the top k: as Lightning decides, but a tie can win."""
        if current is None:
            return False
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        better = self._candidate(trainer, current) > self._rank(self.kth_best_model_path)
        return trainer.strategy.reduce_boolean_decision(bool(better))  # every rank decides alike

    def _update_best_and_save(self, current: torch.Tensor, trainer: Any, monitor_candidates: dict[str, Any]) -> None:
        path = self.format_checkpoint_name(dict(monitor_candidates))  # Lightning's name (no version counter)
        self.ties[path] = (
            _number(monitor_candidates.get(TIE_BREAK), math.inf),
            int(trainer.global_step),
            int(trainer.current_epoch) + 1,
        )
        super()._update_best_and_save(current, trainer, monitor_candidates)
        self._pick()  # Lightning picks the first of equal scores

    def state_dict(self) -> dict[str, Any]:
        self._pick()  # called while the checkpoint is written, before Lightning's own pick is corrected
        return {**super().state_dict(), "ties": dict(self.ties)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.ties = {path: tuple(tie) for path, tie in (state_dict.get("ties") or {}).items()}


def _number(value: Any, missing: float) -> float:
    """A metric as a float; ``missing`` for none or NaN."""
    if value is None:
        return missing
    value = float(value)
    return missing if math.isnan(value) else value
