"""The recipe's headline metric per variant (``report.metric``, default test/acc; every run holds status.json).

Mean ± std over each variant's finished seeds (the bar cut where the metric ends: an accuracy's at 1); a
variant whose runs diverged is a hatched bar labelled with the step, so it never reads as a score of zero.
Values within a tenth of the axis are points on an axis fitted to them, and models of different
sizes show their parameter counts.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Optional

from cnnkit.experiments.analyses._unit import (
    Analysis,
    diverged_at,
    metric_bounds,
    pyplot,
    report_setting,
    save_figure,
    sizes_differ,
)
from cnnkit.experiments.answer import short_names
from cnnkit.runs.run_dir import STATUS_FILE


def wrapped(label: str, width: int = 36) -> str:
    """A long variant name on several lines, broken after its ``+``/``,`` separators."""
    parts, line = [], ""
    for piece in re.split(r"(?<=[+,])", label):
        if line and len(line) + len(piece) > width:
            parts.append(line)
            line = ""
        line += piece
    return "\n".join(parts + [line])


class FinalMetric(Analysis):
    name = "final"
    files = (STATUS_FILE,)
    order = 1

    def figures(self, runs, groups, out: Path) -> list[Optional[str]]:
        plt = pyplot()
        metric = report_setting(runs, "metric", "test/acc")
        low_bound, high_bound = metric_bounds(metric)
        names, means, errors, notes, params = _per_variant(groups, metric, low_bound, high_bound)
        if all(m is None for m in means) and not any(notes):
            return []
        bottom, top, fitted = _axis(means, errors, low_bound, high_bound)
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.8))
        _draw_values(ax, means, errors, notes, bottom, top, fitted)
        height = top - bottom
        for i, note in enumerate(notes):
            if means[i] is None:  # nothing to score: a hatched, empty bar over the whole axis
                ax.bar(i, height, bottom=bottom, color="none", edgecolor="tab:red", hatch="//", lw=0.8)
            if note:
                ax.text(
                    i,
                    (means[i] + errors[i][1] + 0.02 * height) if means[i] is not None else bottom + height / 2,
                    note,
                    rotation=90,
                    ha="center",
                    va="bottom" if means[i] is not None else "center",
                    fontsize=7,
                    color="tab:red",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5},
                )

        short = short_names(groups)
        labels = [wrapped(short[name]) for name in names]
        if sizes_differ(params):  # models of different sizes (a CNN against a fully-connected net): part of the point
            labels = [label + (f"\n{count:,} parameters" if count else "") for label, count in zip(labels, params)]
        ax.set_xticks(range(len(names)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.set_ylim(bottom, top)
        seeds = max(len(group_runs) for group_runs in groups.values())
        ax.set_title(
            f"{metric} per variant"
            + (" (mean ± std over seeds)" if seeds > 1 else "")
            + (f"; the axis starts at {bottom:.3g}, not 0" if fitted else ""),
            fontsize=10,
        )
        return [save_figure(fig, out / "final.png")]


def _per_variant(groups, metric: str, low_bound: float, high_bound: Optional[float]) -> tuple[list, ...]:
    """Per variant: its name, mean over seeds, error bar (below, above), a note on divergence, its parameters."""
    names, means, errors, notes, params = [], [], [], [], []
    for group, group_runs in groups.items():
        values = [r.final(metric) for r in group_runs if r.status.get("status") == "finished"]
        values = [v for v in values if v is not None and math.isfinite(v)]
        diverged = sorted(int(s) for s in (diverged_at(r) for r in group_runs) if s is not None)
        names.append(group)
        mean = statistics.mean(values) if values else None
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        means.append(mean)
        # the spread over seeds, cut where the metric ends: no accuracy bar reaches past 1
        errors.append(
            (0.0, 0.0)
            if mean is None
            else (min(std, mean - low_bound), std if high_bound is None else min(std, high_bound - mean))
        )
        params.append(next((int(r.final("params")) for r in group_runs if r.final("params")), 0))
        if diverged and not values:
            notes.append(
                "diverged at step " + (str(diverged[0]) if len(set(diverged)) == 1 else f"{diverged[0]}–{diverged[-1]}")
            )
        elif diverged:
            notes.append(f"{len(diverged)} of {len(group_runs)} runs diverged")
        else:
            notes.append("")
    return names, means, errors, notes, params


def _axis(means: list, errors: list, low_bound: float, high_bound: Optional[float]) -> tuple[float, float, bool]:
    """(bottom, top, fitted): values within a tenth of the axis (0.977–0.989 of 0–1) are points on an axis
    fitted to them, as bars from zero would all look alike; otherwise bars from zero."""
    scored = [i for i, m in enumerate(means) if m is not None]
    lows = [means[i] - errors[i][0] for i in scored]
    highs = [means[i] + errors[i][1] for i in scored]
    span = (max(highs) - min(lows)) if scored else 0.0
    top = 1.05 if high_bound == 1.0 or not scored else max(highs) * 1.15
    if 0 < span < 0.1 * top:
        return max(low_bound, min(lows) - 0.25 * span), max(highs) + 0.45 * span, True
    return 0.0, top, False


def _draw_values(ax, means: list, errors: list, notes: list, bottom: float, top: float, fitted: bool) -> None:
    """The scored variants: points with their values on a fitted axis, else bars with the value on each."""
    scored = [i for i, m in enumerate(means) if m is not None]
    yerr = [[errors[i][0] for i in scored], [errors[i][1] for i in scored]]
    if fitted:
        ax.errorbar(scored, [means[i] for i in scored], yerr=yerr, fmt="o", color="tab:blue", capsize=3)
        for i in scored:
            ax.text(
                i,
                means[i] + errors[i][1] + 0.04 * (top - bottom),
                f"{means[i]:.4f}",
                rotation=90,
                ha="center",
                va="bottom",
                fontsize=7,
            )
        return
    ax.bar(scored, [means[i] for i in scored], yerr=yerr, capsize=3, color="tab:blue")
    for i in scored:
        if not notes[i]:  # the value on its bar, over the error bar (above the error bar if too short)
            inside = means[i] > 0.25 * top
            ax.text(
                i,
                means[i] / 2 if inside else means[i] + errors[i][1] + 0.02 * top,
                f"{means[i]:.3f}",
                rotation=90,
                ha="center",
                va="center" if inside else "bottom",
                fontsize=7,
                color="white" if inside else "black",
                zorder=3,
                bbox={"facecolor": "tab:blue" if inside else "white", "edgecolor": "none", "pad": 1},
            )


ANALYSIS = FinalMetric()
