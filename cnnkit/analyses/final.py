"""The recipe's headline metric per variant (``report.metric``, default test/acc; every run holds status.json).

Mean ± std over each variant's finished seeds; a variant whose runs diverged is a hatched bar labelled
with the step, so it never reads as a score of zero.
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Optional

from ._unit import Analysis, diverged_at, pyplot, report_setting, save_figure


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
    files = ("status.json",)
    order = 1

    def figures(self, runs, groups, out: Path) -> list[Optional[str]]:
        plt = pyplot()
        metric = report_setting(runs, "metric", "test/acc")
        names, means, stds, notes = [], [], [], []
        for group, group_runs in groups.items():
            values = [r.final(metric) for r in group_runs if r.status.get("status") == "finished"]
            values = [v for v in values if v is not None and math.isfinite(v)]
            diverged = sorted(int(s) for s in (diverged_at(r) for r in group_runs) if s is not None)
            names.append(group)
            means.append(statistics.mean(values) if values else None)
            stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
            if diverged and not values:
                notes.append("diverged at step " + (str(diverged[0]) if len(set(diverged)) == 1 else
                                                     f"{diverged[0]}–{diverged[-1]}"))
            elif diverged:
                notes.append(f"{len(diverged)} of {len(group_runs)} runs diverged")
            else:
                notes.append("")
        if all(m is None for m in means) and not any(notes):
            return []
        scores = [m for m in means if m is not None]
        top = 1.05 if metric.endswith("acc") or not scores else max(scores) * 1.15
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.8))
        scored = [i for i, m in enumerate(means) if m is not None]
        ax.bar(scored, [means[i] for i in scored], yerr=[stds[i] for i in scored], capsize=3, color="tab:blue")
        for i in scored:
            if not notes[i]:  # the value on its bar, over the error bar (above the error bar if too short)
                inside = means[i] > 0.25 * top
                ax.text(i, means[i] / 2 if inside else means[i] + stds[i] + 0.02 * top, f"{means[i]:.3f}",
                        rotation=90, ha="center", va="center" if inside else "bottom", fontsize=7,
                        color="white" if inside else "black", zorder=3,
                        bbox={"facecolor": "tab:blue" if inside else "white", "edgecolor": "none", "pad": 1})
        for i, note in enumerate(notes):
            if means[i] is None:  # nothing to score: a hatched, empty bar over the whole axis
                ax.bar(i, top, color="none", edgecolor="tab:red", hatch="//", lw=0.8)
            if note:
                ax.text(i, (means[i] or 0) + 0.02 * top if means[i] is not None else top / 2, note, rotation=90,
                        ha="center", va="bottom" if means[i] is not None else "center", fontsize=7, color="tab:red",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})
        ax.set_xticks(range(len(names)), [wrapped(name) for name in names], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(metric)
        ax.set_ylim(0, top)
        seeds = max(len(group_runs) for group_runs in groups.values())
        ax.set_title(f"{metric} per variant" + (" (mean ± std over seeds)" if seeds > 1 else ""), fontsize=10)
        return [save_figure(fig, out / "final.png")]


ANALYSIS = FinalMetric()
