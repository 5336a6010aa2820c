"""What every analysis shares: the ``Analysis`` base and the helpers its table and figure use."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Optional

from cnnkit.runs.run_dir import read_rows


def read_csv(path: Path) -> list[dict[str, Optional[float]]]:
    """Rows of numbers (a cell that is not a number reads None); [] when the file is absent."""
    return read_rows(path)


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


def diverged_at(run) -> Optional[float]:
    """The step a run diverged at (None: it did not)."""
    return run.status.get("step") if run.status.get("status") == "diverged" else None


def report_setting(runs: list, key: str, default: Any) -> Any:
    """A ``report:`` key of the recipe the runs came from."""
    return ((runs[0].config.get("report") or {}) if runs else {}).get(key, default)


def by_label(groups: dict[str, list], labels: dict[str, str], measure) -> dict[str, list[float]]:
    """``measure(run)`` of every run that has one, gathered by the compared value it belongs to."""
    found: dict[str, list[float]] = {}
    for group, runs in groups.items():
        values = [v for v in (measure(r) for r in runs) if v is not None and math.isfinite(v)]
        if values:
            found.setdefault(labels.get(group, group), []).extend(values)
    return found


def metric_bounds(metric: str) -> tuple[float, Optional[float]]:
    """The range a metric's values can take: an accuracy's [0, 1], anything else's [0, ∞)."""
    return (0.0, 1.0) if "acc" in metric.rsplit("/", 1)[-1] else (0.0, None)


def sizes_differ(counts: list[int]) -> bool:
    """Whether models' parameter counts differ enough to be part of a comparison (by half or more)."""
    counts = [c for c in counts if c]
    return bool(counts) and max(counts) >= 1.5 * min(counts)


def listed(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


LINE_STYLES = ("-", "--", ":", "-.")


def select(config: dict[str, Any], key: str) -> Any:
    """A dotted key's value in a stored config (None where it is absent)."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def matrix_values(run) -> dict[str, Any]:
    """The run's value of each matrix key but the seed, from its stored config (its place in the matrix),
    as JSON text to compare."""
    config = run.config or {}
    return {
        key: json.dumps(select(config, key), sort_keys=True) for key in (config.get("matrix") or {}) if key != "seed"
    }


MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h")  # no x: a curve's × marks where it diverged


def variant_styles(groups: dict[str, list]) -> dict[str, dict[str, Any]]:
    """A colour, a line style and a marker per variant, no two variants alike: the matrix key with the
    fewest values (at most four) picks the line style and the marker, the other keys together the colour,
    from a qualitative palette of ten clearly different colours; past ten colours, the line style and the
    marker cycle with each round of the palette."""
    plt = pyplot()
    values = {group: matrix_values(runs[0]) for group, runs in groups.items()}
    if len({json.dumps(v, sort_keys=True) for v in values.values()}) < len(values):
        values = {group: {"variant": group} for group in groups}  # not told apart by the matrix: by their names
    keys = [
        k for k in dict.fromkeys(k for v in values.values() for k in v) if len({v.get(k) for v in values.values()}) > 1
    ]
    styled = (
        min(
            (k for k in keys if len({v.get(k) for v in values.values()}) <= len(LINE_STYLES)),
            key=lambda k: len({v.get(k) for v in values.values()}),
            default=None,
        )
        if len(keys) > 1
        else None
    )
    colour_keys = [k for k in keys if k != styled]
    colours = list(dict.fromkeys(tuple(v.get(k) for k in colour_keys) for v in values.values()))
    styles = list(dict.fromkeys(v.get(styled) for v in values.values())) if styled else [None]
    palette = plt.get_cmap("tab10").colors
    out = {}
    for group, v in values.items():
        c = colours.index(tuple(v.get(k) for k in colour_keys))
        shape = styles.index(v.get(styled)) if styled else 0
        turn = c // len(palette)  # which round of the palette: the same colour again, drawn otherwise
        out[group] = {
            "color": palette[c % len(palette)],
            "linestyle": LINE_STYLES[(shape + turn) % len(LINE_STYLES)],
            "marker": MARKERS[(shape + turn * len(styles)) % len(MARKERS)]
            if styled or len(colours) > len(palette)
            else None,
        }
    return out


def readable_log_axis(ax, axis: str = "y") -> None:
    """Log-axis tick labels as plain numbers (0.02, 2, 300), not 2×10^0."""
    # startup: matplotlib only when this runs
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    target.set_major_formatter(plain)
    target.set_minor_locator(LogLocator(subs=(2, 5)))
    # minor labels only where there is room: a span of two decades or less
    target.set_minor_formatter(plain if low > 0 and high / low <= 100 else NullFormatter())


def pyplot():
    # startup: matplotlib only when this runs
    import matplotlib

    matplotlib.use("Agg")
    # startup: matplotlib only when this runs
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Optional[str]:
    """Write ``fig``; a figure with nothing drawn on any axes is not written (None), and the report says so."""
    if not any(ax.has_data() for ax in fig.axes):
        pyplot().close(fig)
        path.unlink(missing_ok=True)
        return None
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # legends placed beside the axes stay in
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
    order: int = 100  # where its figures and tables come in the report (the run's own curves first)

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

    def figures(self, runs: list, groups: dict[str, list], out: Path) -> list[Optional[str]]:
        """File names of the figures written into ``out`` (None for one with no data to draw)."""
        return []

    def answer(self, runs: list, groups: dict[str, list], labels: dict[str, str]) -> str:
        """A sentence for the answer REPORT.md opens with: this analysis's measure compared across the
        question's values (``labels``: each variant's value of the compared key, as the answer names it)."""
        return ""

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
