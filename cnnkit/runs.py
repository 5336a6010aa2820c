"""The run directory: runs/<name>/<variant>/ with config.yaml, status.json, metrics.csv, checkpoints/.

The path is a pure function of the config, so resuming and reports find a run again, and every
DDP rank computes the same one. Only rank 0 writes here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CnnkitError

STATUSES = ("running", "finished", "diverged", "failed")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it into place: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def for_config(cls, cfg: Any) -> "RunDir":
        return cls(Path(cfg.runs_dir) / cfg.name / cfg.variant)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    def has_contents(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse, before anything is built, to mix a new run into an old one's files."""
        for parent in [self.path, *self.path.parents]:
            if parent.exists() and not parent.is_dir():
                raise CnnkitError(f"run directory '{self.path}': '{parent}' exists and is a file; "
                                  f"remove it or set runs_dir/name elsewhere")
        if self.has_contents() and not resume and not overwrite:
            status = self.read_status().get("status")
            raise CnnkitError(
                f"run directory '{self.path}' already holds a{f' {status}' if status else ''} run; resume it with "
                f"--ckpt last, start over with --overwrite, or pick another name/variant"
            )

    def prepare(self, resume: bool, overwrite: bool) -> None:
        """Create the directory (emptied first with ``overwrite``)."""
        self.check(resume, overwrite)
        if self.has_contents() and not resume:
            shutil.rmtree(self.path)
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def write_status(self, status: str, **details: Any) -> None:
        assert status in STATUSES, status
        record = {"status": status, **details, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(self.status_file, json.dumps(record, indent=2) + "\n")

    def write_running(self, step: int) -> None:
        """``running``, with this process's id and host so another ``fit --ckpt last`` can tell it is alive."""
        self.write_status("running", step=step, pid=os.getpid(), host=socket.gethostname())

    def resume_verdict(self, cfg: Any, first_rank: bool = True) -> str:
        """What ``fit --ckpt last`` should do with this run, from its status.json: ``resume`` or ``done``.

        A killed or failed run resumes; a finished run whose training limits are unchanged has nothing
        left to do; a diverged run, or one another live process is training, is refused. Only the
        first rank checks for a live process: the others find the status it wrote for this very job.
        """
        status = self.read_status()
        state = status.get("status")
        if state == "diverged":
            weights = f"--init-from {status['last_good']} " if status.get("last_good") else ""
            raise CnnkitError(
                f"run '{self.path}' diverged ({status.get('reason', 'non-finite loss')}); resuming it would "
                f"diverge again: change the config (e.g. a lower optim.lr) and start over with {weights}--overwrite"
            )
        if state == "running" and first_rank and _alive_elsewhere(status):
            raise CnnkitError(f"run '{self.path}' is being trained right now by process {status['pid']}; "
                              f"wait for it to end or stop it, then resume with --ckpt last")
        if state == "finished" and _same_limits(self.config_file, cfg):
            return "done"
        return "resume"

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


def _alive_elsewhere(status: dict[str, Any]) -> bool:
    """Whether the process that wrote ``running`` still runs (same host; a reused pid must be cnnkit's)."""
    pid = status.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or status.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.parent.is_dir():  # no /proc on this system: trust the pid
        return True
    try:
        return b"cnnkit" in cmdline.read_bytes()
    except OSError:  # it ended a moment ago
        return False


def _same_limits(stored_config: Path, cfg: Any) -> bool:
    """Whether ``cfg`` has the same max_epochs and max_steps as the finished run's stored config."""
    from omegaconf import OmegaConf

    try:
        stored = OmegaConf.load(stored_config).trainer
    except Exception:  # no readable record: let the checkpoint decide
        return False
    return stored.get("max_epochs") == cfg.trainer.max_epochs and stored.get("max_steps") == cfg.trainer.max_steps
