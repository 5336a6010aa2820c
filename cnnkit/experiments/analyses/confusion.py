"""The test confusion matrix of the best finished run (by ``report.metric``; the fit writes confusion.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cnnkit.experiments.analyses._unit import Analysis, pyplot, report_setting, save_figure


class Confusion(Analysis):
    files = ("confusion.json",)
    order = 2

    def figures(self, runs, groups, out: Path) -> list[Optional[str]]:
        metric = report_setting(runs, "metric", "test/acc")
        finished = [r for r in runs if r.status.get("status") == "finished" and r.final(metric) is not None]
        if not finished:
            return []
        best = max(finished, key=lambda r: r.final(metric))
        confusion = self.of(best)["confusion"]
        plt = pyplot()
        names = confusion["class_names"]
        fig, ax = plt.subplots(figsize=(5.5, 5))
        image = ax.imshow(confusion["matrix"], cmap="Blues")
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"test confusion: {best.variant}", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
        matrix = confusion["matrix"]
        if len(names) <= 12:  # the counts themselves, where they fit: a few errors are visible then
            peak = max(max(row) for row in matrix) or 1
            for i, row in enumerate(matrix):
                for j, count in enumerate(row):
                    if count:
                        ax.text(
                            j,
                            i,
                            str(int(count)),
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="white" if count > peak / 2 else "black",
                        )
        return [save_figure(fig, out / "confusion.png")]


ANALYSIS = Confusion()
