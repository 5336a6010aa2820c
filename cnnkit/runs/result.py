"""What a fit returns (``api.fit``, and a ``--jobs`` job read back from its run directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from cnnkit.runs.run_dir import RunDir


@dataclass
class FitResult:
    status: str  # finished | diverged
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: Optional[Path] = None
    best_by: Optional[str] = None  # checkpoint.monitor, which chose the best checkpoint
    best_epoch: Optional[int] = None  # the best checkpoint's epoch, counted from 1 (the one the test metrics are of)
    epochs: Optional[int] = None  # epochs trained
    last_checkpoint: Optional[Path] = None
    diverged: Optional[dict[str, Any]] = None  # step, lr, what, reason, last_good
    kept: bool = False  # an earlier run with the same config was kept, nothing trained
    seconds: Optional[float] = None  # wall time of this fit, start-up included
    wandb_sync: Optional[str] = None  # the command that uploads an offline W&B run
    limits: list[str] = field(default_factory=list)  # trainer.limit_* settings (e.g. the smoke overlay's)

    @classmethod
    def of(
        cls,
        run: RunDir,
        cfg: DictConfig,
        status: str,
        metrics: dict[str, float],
        best: Optional[Path],
        best_epoch: Optional[int],
        epochs: Optional[int],
        **details: Any,
    ) -> FitResult:
        """Every fit's result (trained now or kept): its numbers and what its run directory holds now."""
        return cls(
            status=status,
            run_dir=run.path,
            metrics=metrics,
            best_checkpoint=best,
            best_by=cfg.checkpoint.monitor,
            best_epoch=best_epoch,
            epochs=epochs,
            last_checkpoint=run.last_checkpoint if run.last_checkpoint.is_file() else None,
            **details,
        )

    @classmethod
    def recorded(cls, run: RunDir, cfg: DictConfig, status: dict[str, Any], state: str, **details: Any) -> FitResult:
        """A fit's result as its status.json recorded it (``state``: what it ended as), for one not trained
        here: a kept run, or a ``--jobs`` variant whose worker did not send one back."""
        best = status.get("best_checkpoint")
        diverged = {k: status.get(k) for k in ("step", "lr", "reason", "last_good")} if state == "diverged" else None
        return cls.of(
            run,
            cfg,
            state,
            status.get("metrics", {}),
            Path(best) if best else None,
            status.get("best_epoch"),
            status.get("epochs"),
            diverged=diverged,
            **details,
        )
