"""The run's loggers: a CSV file that survives resumption, and Weights & Biases when asked for."""

from __future__ import annotations

import csv
import functools
import importlib
import netrc
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from cnnkit.config.plain import as_data
from cnnkit.console import command_path, verbose
from cnnkit.errors import first_line
from cnnkit.messages import first_process, say

WANDB_ID_FILE = "wandb_id"


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
        if self._experiment is None and first_process():
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


def make_wandb_logger(cfg: Any, run_dir: Path, run_id: Optional[str] = None) -> Any:
    """Lightning's WandbLogger for this run (``run_id`` continues an earlier one), or None.

    The W&B run starts here, on rank 0, so a W&B that cannot start within ``init_timeout``
    (no network, bad key, service down) costs a warning, not the training run.
    """
    wb = cfg.logger.wandb
    mode = wandb_mode(wb.mode)
    if mode == "disabled":
        return None
    try:  # importable, not only installed: a broken install is reported here too (wandb loads in seconds: only now)
        importlib.import_module("wandb")
    except ImportError as err:
        say(f"W&B logging is off: wandb cannot be imported ({err}); metrics stay in metrics.csv")
        return None

    logger = ResilientWandbLogger(
        project=wb.project,
        entity=wb.entity,
        group=wb.group or cfg.name,
        name=f"{cfg.name}/{cfg.variant}",
        tags=list(wb.tags),
        save_dir=str(run_dir),
        mode=mode,
        log_model=wb.log_model,
        id=run_id,
        config=as_data(cfg),
        job_type="fit",
        settings=wandb_settings(wb.init_timeout),
    )
    if first_process():
        try:
            run = logger.experiment
        except Exception as err:  # wandb raises its own types for network, auth and timeout failures
            reason = first_line(err)
            say(
                f"W&B logging is off for this run: it could not start (init_timeout "
                f"{wb.init_timeout:g} s; {type(err).__name__}: {reason}); metrics stay in {run_dir}/metrics.csv"
            )
            return None
        (run_dir / WANDB_ID_FILE).write_text(run.id + "\n", encoding="utf-8")
    return logger


def wandb_settings(init_timeout: float) -> Any:
    """W&B's banner, run history and summary only with ``--verbose`` (cnnkit's summary says what matters)."""
    # startup: wandb only when this runs
    import wandb

    return wandb.Settings(init_timeout=init_timeout, silent=not verbose())


def offline_sync_command(logger: Any) -> Optional[str]:
    """``wandb sync <run's offline directory>`` for an offline W&B run (None when online)."""
    try:
        settings = logger.experiment.settings
        return f"wandb sync {command_path(settings.sync_dir)}" if settings.mode in ("offline", "dryrun") else None
    except Exception:  # W&B failed: the logger turned itself off, and nothing waits to be uploaded
        return None


def _shielded(method):
    """Call ``method``; if W&B fails (its service died, the network broke), turn W&B off with one warning."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.broken:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as err:
            self.broken = True
            say(
                f"W&B logging stopped mid-run ({type(err).__name__}: {first_line(err)}); training goes "
                f"on and metrics stay in {self.save_dir}/metrics.csv"
            )
            return None

    return call


class ResilientWandbLogger(WandbLogger):
    """Lightning's WandbLogger whose every call into W&B is shielded: W&B never ends a training run."""

    broken = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # Lightning always passes wandb.init(anonymous=None), which wandb >= 0.19 warns about on every run
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    log_metrics = _shielded(WandbLogger.log_metrics)
    log_hyperparams = _shielded(WandbLogger.log_hyperparams)
    log_table = _shielded(WandbLogger.log_table)
    log_text = _shielded(WandbLogger.log_text)
    log_image = _shielded(WandbLogger.log_image)
    after_save_checkpoint = _shielded(WandbLogger.after_save_checkpoint)
    finalize = _shielded(WandbLogger.finalize)


def stored_wandb_id(run_dir: Path, checkpoint: Optional[dict[str, Any]]) -> Optional[str]:
    """The W&B run id a resumed run continues: from its checkpoint, else from its run directory."""
    stored = ((checkpoint or {}).get("cnnkit") or {}).get("wandb_run_id")
    if stored:
        return stored
    path = run_dir / WANDB_ID_FILE
    return path.read_text(encoding="utf-8").strip() or None if path.is_file() else None


def finish_wandb(logger: Any, failed: bool) -> None:
    """Lightning's finalize() does not end the W&B run; a second run in this process would reuse it."""
    if logger is None or not first_process():
        return
    # startup: wandb only when this runs
    import wandb

    try:
        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed or logger.broken else 0)
    except Exception as err:  # W&B's service is gone: what it had is in the run directory
        if not logger.broken:
            say(f"W&B could not finish the run ({type(err).__name__}: {first_line(err)}); metrics stay in metrics.csv")
        logger.broken = True
    if logger.broken:  # drop the dead service now: its exit hook would print a traceback at exit
        try:
            wandb.teardown(exit_code=1)
        except Exception:
            pass


@contextmanager
def wandb_run(cfg: Any, run_dir: Path, run_id: Optional[str] = None) -> Iterator[Optional[Any]]:
    """The run's W&B logger (None when W&B is off) for the block's length: started on entry, finished on exit,
    as failed when the block raised."""
    logger = make_wandb_logger(cfg, run_dir, run_id)
    failed = True
    try:
        yield logger
        failed = False
    finally:
        finish_wandb(logger, failed)
