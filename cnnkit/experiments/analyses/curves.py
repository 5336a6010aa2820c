"""Training loss and validation accuracy over the steps, a line per variant (every run holds metrics.csv).

No two variants are drawn alike (a colour per matrix value, a line style and marker per the key
with the fewest values); a diverged run's line ends where it diverged, with a ×, and the loss axis keeps to
the runs that did not diverge, so one exploding run does not flatten every other curve.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from cnnkit.experiments.analyses._unit import (
    Analysis,
    diverged_at,
    pyplot,
    readable_log_axis,
    save_figure,
    variant_styles,
)
from cnnkit.runs.run_dir import METRICS_FILE


def finite_until(run, key: str) -> tuple[list[float], list[float]]:
    """A run's series up to its divergence: the finite points logged before it."""
    stop = diverged_at(run)
    points = [(s, v) for s, v in zip(*run.series(key)) if math.isfinite(v) and (stop is None or s < stop)]
    return [s for s, _ in points], [v for _, v in points]


def _linear_range(values: list[float]) -> tuple[float, float]:
    """0 to 1 (or the values' range beyond it), or, when every value lies within a tenth of that axis above
    0.1 (accuracies of 0.97–0.99), an axis fitted to them."""
    low, high = min([0.0, *values]), max([1.0, *values]) * 1.02
    if values and min(values) > 0.1 and max(values) - min(values) < 0.1 * (high - low):
        pad = max(0.25 * (max(values) - min(values)), 0.002)
        return min(values) - pad, max(values) + pad
    return low, high


class Curves(Analysis):
    files = (METRICS_FILE,)
    order = 0

    def figures(self, runs, groups, out: Path) -> list[Optional[str]]:
        plt = pyplot()
        styles = variant_styles(groups)
        keys = [("train/loss_step", "training loss", True), ("val/acc", "validation accuracy", False)]
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        for ax, (key, label, log) in zip(axes, keys):
            kept: list[float] = []  # the axis range: values of the runs that did not diverge
            lost: list[float] = []  # the finite values of those that did (the range when every run diverged)
            ends: list[tuple[Any, float, float]] = []  # (colour, step, value) where a run diverged
            for group, group_runs in groups.items():
                style = styles[group]
                for i, run in enumerate(group_runs):
                    steps, values = finite_until(run, key)
                    if not steps:
                        continue
                    ax.plot(
                        steps,
                        values,
                        color=style["color"],
                        linestyle=style["linestyle"],
                        marker=style["marker"] if i == 0 else None,
                        markersize=4,
                        markevery=max(1, len(steps) // 8),  # a few markers per line: they name it, not hide it
                        lw=1.3 if i == 0 else 0.6,
                        alpha=1.0 if i == 0 else 0.5,
                        label=group if i == 0 else None,
                    )
                    if diverged_at(run) is not None:
                        ends.append((style["color"], steps[-1], values[-1]))
                        lost += values
                    else:
                        kept += values
            kept = kept or lost
            ax.set_xlabel("step")
            ax.set_ylabel(label)
            positive = [v for v in kept if v > 0]
            if log and positive:
                ax.set_yscale("log")
                low, high = min(positive) / 1.5, max(positive) * 1.5
            else:
                low, high = _linear_range(kept)
                if low > 0:  # values within a tenth of 0–1 would be one flat line there
                    ax.set_title(f"the axis starts at {low:.3g}, not 0", fontsize=9)
            ax.set_ylim(low, high)
            for colour, step, value in ends:  # off the chart: the × sits on its edge
                ax.plot(step, min(max(value, low), high), "x", color=colour, markersize=8, mew=2, clip_on=False)
            if log and positive:
                readable_log_axis(ax)
        handles, labels = axes[0].get_legend_handles_labels()
        if not handles:
            handles, labels = axes[1].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
        seeds = max(len(group_runs) for group_runs in groups.values())
        notes = (
            ["× where a run diverged"] if any(diverged_at(r) is not None for rs in groups.values() for r in rs) else []
        )
        if seeds > 1:
            notes.insert(0, "thin lines: other seeds")
        fig.suptitle("curves per variant" + (f" ({'; '.join(notes)})" if notes else ""))
        return [save_figure(fig, out / "curves.png")]


ANALYSIS = Curves()
