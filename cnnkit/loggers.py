"""The run's loggers: a CSV file that survives resumption, and Weights & Biases when asked for."""

from __future__ import annotations

import csv
import netrc
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from .config import to_plain


def read_metric_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger writing ``<run>/metrics.csv``, keeping history when a run resumes.

    Lightning deletes an existing metrics.csv; on resume this keeps the rows logged before the
    checkpoint's step (later ones belong to the part of the run being redone) and appends.
    """

    def __init__(self, run_dir: Path, keep_before_step: Optional[int] = None):
        super().__init__(save_dir=str(run_dir), name="", version="")
        self.keep_before_step = keep_before_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None and rank_zero_only.rank == 0:
            path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
            header, rows = [], []
            if self.keep_before_step is not None and path.is_file():
                header, rows = read_metric_rows(path)
                rows = [r for r in rows if r.get("step", "") != "" and int(float(r["step"])) < self.keep_before_step]
            with warnings.catch_warnings():  # the run directory is meant to hold other files
                warnings.filterwarnings("ignore", message="Experiment logs directory")
                writer = super().experiment  # creates the writer, which removes the old file
            if header:
                with open(path, "w", newline="", encoding="utf-8") as handle:
                    out = csv.DictWriter(handle, fieldnames=header)
                    out.writeheader()
                    out.writerows(rows)
                writer.metrics_keys = sorted(header)
            return writer
        return super().experiment


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(configured: str) -> str:
    """``auto``: WANDB_MODE if set, else online with credentials and offline without."""
    if configured != "auto":
        return configured
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if _has_wandb_credentials() else "offline"


def make_wandb_logger(cfg: Any, run_dir: Path) -> Any:
    """Lightning's WandbLogger for this run, or None when W&B is disabled."""
    wb = cfg.logger.wandb
    mode = wandb_mode(to_plain(wb.mode))
    if mode == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(
        project=wb.project, entity=wb.entity, group=wb.group or cfg.name, name=f"{cfg.name}/{cfg.variant}",
        tags=list(wb.tags), save_dir=str(run_dir), mode=mode, log_model=wb.log_model,
        config=to_plain(cfg), job_type="fit",
    )
    if mode == "offline" and rank_zero_only.rank == 0:
        print(f"cnnkit: W&B is offline (no credentials found); the run is saved under {run_dir}/wandb - "
              f"upload it later with: wandb sync {run_dir}/wandb/offline-run-*", file=sys.stderr)
    return logger


def finish_wandb(logger: Any, failed: bool) -> None:
    """Lightning's finalize() does not end the W&B run; a second run in this process would reuse it."""
    if logger is None or rank_zero_only.rank != 0:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
