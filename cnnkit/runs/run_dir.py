"""The run directory: runs/<name>/<variant>/ with config.yaml, status.json, metrics.csv, checkpoints/, and
the one reader of those files.

The path is a pure function of the config, so resuming and reports find a run again, and every
DDP rank computes the same one. ``RunDir.verdict`` reads the files (``RunDir.found``) and ``decide``,
a pure function of what they hold, says what a new ``fit`` may do with the directory, before torch is
imported; ``lifecycle.RunLifecycle`` is the one
writer of its status.
"""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from cnnkit.config.diff import LENGTH, RESULT_NEUTRAL, RESUME_FREE, describe, differences
from cnnkit.config.load import plain_stored
from cnnkit.config.plain import as_data, spec
from cnnkit.errors import CnnkitError
from cnnkit.registry import SCHEDULERS, RegistryError, split_spec

# What a fit does with its run directory: start it (emptied first if it held a run and --overwrite
# was given), continue it from a checkpoint, or keep the finished result that is already there.
NEW, CONTINUE, KEEP = "new", "continue", "keep"


# A run's own files, named here only: everyone else reads them through RunDir (tests/test_structure.py).
CONFIG_FILE, STATUS_FILE, METRICS_FILE = "config.yaml", "status.json", "metrics.csv"


def read_rows(path: Path) -> list[dict[str, Optional[float]]]:
    """A CSV of numbers as rows (a cell that is not a number reads None); [] when the file is absent."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = []
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value) if value not in ("", None) else None
                except ValueError:
                    parsed[key] = None
            rows.append(parsed)
        return rows


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def for_config(cls, cfg: Any) -> "RunDir":
        return cls(Path(cfg.runs_dir) / cfg.name / cfg.variant)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def status_file(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def where(self) -> str:
        """``name/variant``, as messages show a run."""
        return f"{self.path.parent.name}/{self.path.name}"

    def has_contents(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def is_run(self) -> bool:
        """Whether a fit has been here: every run writes its status first."""
        return self.status_file.is_file()

    def read_status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def read_config(self) -> Optional[dict[str, Any]]:
        """The run's config as it was stored (plain data, not filled up to the schema); None without one."""
        stored = yaml.safe_load(self.config_file.read_text(encoding="utf-8")) if self.config_file.is_file() else None
        return stored if isinstance(stored, dict) else None

    def read_metrics(self) -> list[dict[str, Optional[float]]]:
        """The logged metrics (``step``, ``train/loss``, ``val/acc``...), a row per logging step."""
        return read_rows(self.metrics_file)

    def stored_config(self) -> Optional[dict[str, Any]]:
        """The run's resolved config as plain data, filled up to the current schema; None if there is none."""
        try:
            stored = self.read_config()
            return plain_stored(stored) if stored is not None else None
        except Exception:  # unreadable or from an incompatible cnnkit: no basis to compare with
            return None

    def verdict(
        self, cfg: Any, resume: bool, overwrite: bool, first_rank: bool = True, init_from: Optional[str] = None
    ) -> str:
        """What a fit of ``cfg`` may do here (``decide``), from the directory's files as they are now."""
        for parent in [self.path, *self.path.parents]:
            if parent.exists() and not parent.is_dir():
                raise CnnkitError(
                    f"run directory '{self.path}': '{parent}' exists and is a file; "
                    f"remove it or set runs_dir/name elsewhere"
                )
        found = Found(self.path) if overwrite else self.found(cfg, resume)
        return decide(found, resume=resume, overwrite=overwrite, first_rank=first_rank, init_from=init_from)

    def found(self, cfg: Any, resume: bool) -> "Found":
        """What the directory holds, as ``decide`` weighs it against a fit of ``cfg`` (resumed or not)."""
        if not self.has_contents():
            return Found(self.path)
        status = self.read_status()
        stored = self.stored_config()
        diffs = differences(stored, as_data(cfg), RESULT_NEUTRAL) if stored is not None else []
        length_bound_by = None
        if resume and any(d[0] in LENGTH for d in diffs):  # only then: the registry's schedulers import torch
            try:
                length_bound_by = length_bound(spec(cfg, "optim.scheduler"))
            except RegistryError:  # an unknown scheduler: validation names it
                pass
        return Found(
            self.path,
            has_contents=True,
            status=status,
            has_last_checkpoint=self.last_checkpoint.is_file(),
            alive_elsewhere=status.get("status") == "running" and _alive_elsewhere(status),
            diffs=diffs,
            length_bound_by=length_bound_by,
        )

    def prepare(self, fresh: bool) -> None:
        """Create the directory; a fresh run first removes what an earlier one left (``--overwrite``)."""
        if fresh and self.has_contents():
            shutil.rmtree(self.path)
        self.checkpoints.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class Found:
    """A run directory's contents as the verdict weighs them (read by ``RunDir.found``)."""

    path: Path
    has_contents: bool = False
    status: dict[str, Any] = field(default_factory=dict)  # status.json
    has_last_checkpoint: bool = False
    alive_elsewhere: bool = False  # the process its ``running`` status names still runs
    diffs: list[tuple[str, Any, Any]] = field(default_factory=list)  # stored config vs wanted, RESULT_NEUTRAL aside
    length_bound_by: Optional[str] = None  # the scheduler laid out over the run's length, where one is


def decide(
    found: Found, resume: bool, overwrite: bool, first_rank: bool = True, init_from: Optional[str] = None
) -> str:
    """What a fit may do with a run directory: ``NEW``, ``CONTINUE`` or ``KEEP``; refusals raise one line.

    A finished (or diverged) run is kept only when the config asked for now, and the weights it
    starts from (``--init-from``), give the same result (keys in ``config_diff.RESULT_NEUTRAL``
    aside); ``--ckpt last`` continues a killed, failed or interrupted run, or trains a finished one
    longer, when nothing but how to run it (``RESUME_FREE``) and its length differ. A run that
    stopped before its first checkpoint starts over. Every rank decides alike from the same files;
    a rank other than the first skips the live-process check and follows a ``running`` status
    (the first rank wrote it for this very job).
    """
    if overwrite or not found.has_contents:
        return CONTINUE if resume and not overwrite else NEW
    status, path = found.status, found.path
    state = status.get("status")
    if state == "running" and not first_rank:
        return CONTINUE if resume else NEW
    if state == "running" and found.alive_elsewhere:
        raise CnnkitError(
            f"run '{path}' is being trained right now by process {status['pid']}; "
            f"wait for it to end or stop it, then resume with --ckpt last"
        )
    unfinished = state not in ("finished", "diverged")
    if unfinished and not resume and not found.has_last_checkpoint:
        return NEW  # it stopped before its first checkpoint: nothing to resume, nothing to keep
    diffs = list(found.diffs)
    if not unfinished and not resume:
        started_from = status.get("init_from")
        if started_from != (str(init_from) if init_from else None):
            diffs.append(("--init-from", started_from, init_from))
        if diffs:
            raise _changed(path, state, diffs)
        return KEEP
    if state == "diverged":
        weights = f"--init-from {status['last_good']} " if status.get("last_good") else ""
        raise CnnkitError(
            f"run '{path}' diverged ({status.get('reason', 'non-finite loss')}); resuming it would "
            f"diverge again: change the config (e.g. a lower optim.lr) and start over with {weights}--overwrite"
        )
    if not resume:
        label = {"running": " killed", "failed": " failed", "interrupted": "n interrupted"}.get(state, "")
        raise CnnkitError(
            f"run directory '{path}' already holds a{label} run; resume it with --ckpt last, "
            f"keep it and start a new run with name=<new name>, or replace it with --overwrite"
        )
    return _resumed(found, state, unfinished, diffs)


def _resumed(found: Found, state: Optional[str], unfinished: bool, diffs: list) -> str:
    """``--ckpt last``: continue (or keep a finished run asked for no longer) when only how to run it and
    its length differ, and another length leaves its schedule's learning rates alone."""
    path = found.path
    changed = [d for d in diffs if d[0] not in RESUME_FREE + LENGTH]
    if changed:
        raise _changed(path, state or "unfinished", changed, resuming=True)
    length = [d for d in diffs if d[0] in LENGTH]
    if not unfinished:
        length = [d for d in length if _limit(d[2]) > _limit(d[1])]  # a finished run only trains longer
        if not length:
            return KEEP
    if length and found.length_bound_by:  # another length would jump the learning rate of its schedule
        raise CnnkitError(
            f"run '{path}': optim.scheduler={found.length_bound_by} is laid out over the run's length "
            f"({describe(length)}), so changing the length would jump its learning rate; train a run of the "
            f"length you want without --ckpt last (a run's length names its directory)"
        )
    return CONTINUE


def _changed(path: Path, state: str, diffs: list, resuming: bool = False) -> CnnkitError:
    action = "resume it with" if resuming else "reuse it for"
    return CnnkitError(
        f"run '{path}' ({state}) was made with another config, so cnnkit will not {action} this one: "
        f"{describe(diffs)}; keep it and train this config as a new run with name=<new name>, or replace it "
        f"with --overwrite (which deletes it)"
    )


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
        # cnnkit's own command (``-m cnnkit``, the ``cnnkit`` script), not any path that contains the word
        return any(os.path.basename(arg) == b"cnnkit" for arg in cmdline.read_bytes().split(b"\0"))
    except OSError:  # it ended a moment ago
        return False


def length_bound(scheduler_spec: Any) -> Optional[str]:
    """The scheduler's name when its schedule follows the run's length (its builder takes ``total_steps``)."""

    name = split_spec(scheduler_spec, "schedulers")[0]
    return name if "total_steps" in inspect.signature(SCHEDULERS.get(name)).parameters else None


def _limit(value: Any) -> float:
    """A training limit as a number: -1 or None (``max_steps``' default) is no limit."""
    return float("inf") if value is None or value < 0 else float(value)
