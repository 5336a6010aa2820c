"""What every analysis shares: the ``Analysis`` base and the helpers its table and figure use."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional


def read_csv(path: Path) -> list[dict[str, Optional[float]]]:
    """Rows of numbers (a cell that is not a number reads None); [] when the file is absent."""
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


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def mean_std(values: list[Optional[float]], each: bool = False) -> str:
    """mean ± std over seeds; ``each`` also lists the values (for claims that must hold in every seed)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    text = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    return text + f" ({', '.join(f'{v:.3g}' for v in values)})" if each else text


def table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    """A REPORT.md section: ``## title`` and a markdown table."""
    lines = ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path.name


class Analysis:
    """The report side of one analysis. ``name`` is its module's (and its callback's) name.

    ``files`` are read from every run directory into ``run.extras[name]`` as ``{stem: content}``
    (CSV → rows, JSON → data); a run holds the analysis when any of them is there. ``tables`` and
    ``figures`` get only the runs and variants that hold it.
    """

    name: str = ""
    files: tuple[str, ...] = ()

    def load(self, path: Path) -> Optional[dict[str, Any]]:
        found = {}
        for file in self.files:
            content = read_csv(path / file) if file.endswith(".csv") else read_json(path / file)
            if content:
                found[Path(file).stem] = content
        return found or None

    def tables(self, runs: list, groups: dict[str, list]) -> list[str]:
        """Markdown lines for REPORT.md (each table with its own ``## `` heading)."""
        return []

    def figures(self, runs: list, groups: dict[str, list], out: Path) -> list[str]:
        """File names of the figures written into ``out``."""
        return []

    def training_loss(self, data: dict[str, Any]) -> Optional[list[tuple[float, float]]]:
        """A per-step training-loss series finer than metrics.csv's, for "steps to target" (None: none)."""
        return None

    def of(self, run) -> dict[str, Any]:
        """This analysis's files of ``run`` (empty when the run does not hold it)."""
        return run.extras.get(self.name) or {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.name:
            cls.name = cls.__module__.rsplit(".", 1)[-1]
