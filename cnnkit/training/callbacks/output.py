"""Where analysis callbacks put their numbers: small CSV/JSON files in the run directory (rank 0)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Optional

from cnnkit.messages import first_process
from cnnkit.runs.atomic import atomic_write_text


def run_path(trainer: Any) -> Optional[Path]:
    """The run directory of a fit (None when evaluating outside a run), as the run's owner knows it."""
    # startup: torch only when this runs
    from cnnkit.runs.lifecycle import run_of

    run = run_of(trainer)
    return run.path if run is not None else None


class RowLog:
    """Rows of numbers written to ``<run>/<name>.csv``; on resume keeps the rows before the restart step."""

    def __init__(self, name: str):
        self.name = name
        self.rows: list[dict[str, Any]] = []

    def start(self, trainer: Any) -> None:
        self.rows = []
        path = run_path(trainer)
        if path is not None and trainer.ckpt_path and (path / self.name).is_file():
            with open(path / self.name, newline="", encoding="utf-8") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(float(r["step"])) < trainer.global_step]

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def flush(self, trainer: Any) -> None:
        path = run_path(trainer)
        if path is None or not self.rows or not first_process():
            return
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[-1]))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(path / self.name, buffer.getvalue())


def write_json(trainer: Any, name: str, data: Any) -> None:
    """``<run>/<name>`` of the trainer's fit, if it is one."""
    path = run_path(trainer)
    if path is not None:
        write_json_file(path / name, data)


def write_json_file(path: Path, data: Any) -> None:
    if first_process():
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
