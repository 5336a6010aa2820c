"""Evaluate the trained weights under several BatchNorm statistics and eval batch sizes (course E4).

After the fit's test, the test split is evaluated again for each mode: ``running`` (moving
averages, as deployed), ``batch`` (each eval batch's own statistics — a prediction then depends on
the rest of its batch) and ``precise`` (exact statistics recomputed over training batches), each
at its ``batch_size``. Results go to ``<run>/eval_modes.json`` and the loggers.
"""

from __future__ import annotations

import copy
import json
import statistics
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from cnnkit.experiments.analyses._unit import (
    LINE_STYLES,
    Analysis,
    listed,
    matrix_values,
    mean_std,
    pyplot,
    readable_log_axis,
    save_figure,
    table,
)
from cnnkit.experiments.matrix import format_value
from cnnkit.nn.layers.batch_stats import batch_statistics
from cnnkit.training.callbacks.output import run_path, write_json
from cnnkit.training.callbacks.precise_bn import recompute_bn_statistics

STATS = ("running", "batch", "precise")
# running and precise statistics often give the same accuracy: a filled circle inside a larger hollow triangle
STAT_STYLES = {
    "running": {"linestyle": "-", "marker": "o", "ms": 4},
    "batch": {"linestyle": "--", "marker": "s", "ms": 4},
    "precise": {"linestyle": ":", "marker": "^", "ms": 9, "markerfacecolor": "none", "mew": 1.3},
}


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader, num_classes: int, stats: str, device: torch.device) -> float:
    model.eval()
    predictions, targets = [], []
    context = batch_statistics(model) if stats == "batch" else nullcontext()
    with context:
        for x, y in loader:
            predictions.append(model(x.to(device)).argmax(-1).cpu())
            targets.append(y)
    return float(
        multiclass_accuracy(torch.cat(predictions), torch.cat(targets), num_classes=num_classes, average="micro")
    )


class EvalModes(L.Callback):
    def __init__(
        self,
        modes: Sequence[Any] = (
            "running",
            {"stats": "batch", "batch_size": 1},
            {"stats": "batch", "batch_size": 8},
            {"stats": "batch", "batch_size": 256},
            "precise",
        ),
        precise_batches: int = 100,
    ):
        self.modes = [self._parse(m) for m in modes]
        self.precise_batches = precise_batches
        self.results: list[dict[str, Any]] = []

    @staticmethod
    def _parse(mode: Any) -> dict[str, Any]:
        spec = {"stats": mode} if isinstance(mode, str) else dict(mode)
        if spec.get("stats") not in STATS or set(spec) - {"stats", "batch_size"}:
            raise ValueError(
                f"eval_modes: each mode is one of {', '.join(STATS)} or {{stats: ..., batch_size: N}}, got {mode!r}"
            )
        return spec

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if run_path(trainer) is None:
            return
        datamodule = trainer.datamodule
        test_set = datamodule.load().get("test")
        default_batch = datamodule.cfg.eval_batch_size or datamodule.cfg.batch_size
        num_classes = len(pl_module.class_names)
        precise_model: Optional[torch.nn.Module] = None
        self.results = []
        for mode in self.modes:
            batch_size = int(mode.get("batch_size") or default_batch)
            model = pl_module.model
            if mode["stats"] == "precise":
                if precise_model is None:
                    precise_model = copy.deepcopy(pl_module.model)
                    batches = (b[0].to(pl_module.device) for b in datamodule.train_dataloader())
                    recompute_bn_statistics(precise_model, batches, self.precise_batches)
                model = precise_model
            loader = DataLoader(test_set, batch_size=batch_size, shuffle=False)
            value = accuracy(model, loader, num_classes, mode["stats"], pl_module.device)
            self.results.append({"stats": mode["stats"], "batch_size": batch_size, "accuracy": value})
        write_json(trainer, "eval_modes.json", self.results)
        for logger in trainer.loggers:
            logger.log_metrics(
                {f"eval_modes/{r['stats']}@{r['batch_size']}": r["accuracy"] for r in self.results},
                step=trainer.global_step,
            )


Callback = EvalModes


class EvalModesReport(Analysis):
    files = ("eval_modes.json",)

    def _modes(self, run) -> list[dict[str, Any]]:
        return self.of(run).get("eval_modes") or []

    def answer(self, runs, groups, labels) -> str:
        """Modes of one eval batch size each (E4): ranked over every run. Modes whose batch follows the
        training batch (E7): per compared value, the largest change from the first mode to another."""
        entries = [(group, item) for group, rs in groups.items() for r in rs for item in self._modes(r)]
        if not entries:
            return ""
        width = max(len(self._modes(r)) for rs in groups.values() for r in rs)
        fixed = all(
            len({self._modes(r)[i]["batch_size"] for rs in groups.values() for r in rs if len(self._modes(r)) > i}) == 1
            for i in range(width)
        )

        if fixed:
            scores: dict[tuple[str, int], list[float]] = {}
            for _, item in entries:
                mode = (item["stats"], item["batch_size"] if item["stats"] == "batch" else 0)
                scores.setdefault(mode, []).append(item["accuracy"])
            order = sorted(scores, key=lambda mode: -statistics.mean(scores[mode]))
            parts = []
            for i, (stats, size) in enumerate(order):
                if stats != "batch":
                    name = f"{stats} statistics"
                elif i and order[i - 1][0] == "batch":  # the same kind as the one before: its batch size says it
                    name = f"at batch {size}"
                else:
                    name = f"each eval batch's own statistics at batch {size}"
                parts.append(f"{name} {statistics.mean(scores[(stats, size)]):.4f}")
            return "Evaluated on the same weights, test accuracy from highest to lowest: " + ", ".join(parts) + "."
        changes: dict[str, tuple[float, str, float, float, str]] = {}
        for group, rs in groups.items():
            modes = [self._modes(r) for r in rs if self._modes(r)]
            if not modes:
                continue
            for i in range(1, min(len(m) for m in modes)):
                before = statistics.mean(m[0]["accuracy"] for m in modes)
                after = statistics.mean(m[i]["accuracy"] for m in modes)
                label = labels.get(group, group)
                if label not in changes or abs(after - before) > abs(changes[label][0]):
                    changes[label] = (
                        after - before,
                        group,
                        before,
                        after,
                        "the training batch's own statistics"
                        if modes[0][i]["stats"] == "batch"
                        else f"{modes[0][i]['stats']} statistics",
                    )
        if not changes:
            return ""
        first = entries[0][1]["stats"]
        return (
            f"Evaluated with other statistics than the {first} ones, test accuracy changes most by "
            + listed(
                [
                    f"{change:+.4f} with {label} ({mode}, at {group}: {before:.4f} → {after:.4f})"
                    for label, (change, group, before, after, mode) in changes.items()
                ]
            )
            + "."
        )

    def tables(self, runs, groups) -> list[str]:
        # columns by position: a mode whose batch size follows data.batch_size differs per variant
        width = max(len(self._modes(r)) for rs in groups.values() for r in rs)
        labels = []
        for i in range(width):
            entries = [self._modes(r)[i] for rs in groups.values() for r in rs if len(self._modes(r)) > i]
            sizes = {e["batch_size"] for e in entries}
            labels.append(f"{entries[0]['stats']} @ " + (str(sizes.pop()) if len(sizes) == 1 else "training batch"))
        rows = [
            [group]
            + [
                mean_std([self._modes(r)[i]["accuracy"] for r in group_runs if len(self._modes(r)) > i])
                for i in range(width)
            ]
            for group, group_runs in groups.items()
        ]
        return table("Test accuracy by BN statistics and eval batch size", ["variant", *labels], rows)

    def _series(self, groups) -> dict[tuple[str, str], dict[int, list[float]]]:
        """(line, BN statistics) → eval batch size → accuracies; variants that differ only in the training
        batch (evaluated at it) share one line."""
        series: dict[tuple[str, str], dict[int, list[float]]] = {}
        for group, group_runs in groups.items():
            values = {k: v for k, v in matrix_values(group_runs[0]).items() if k != "data.batch_size"}
            named = "+".join(f"{k.rsplit('.', 1)[-1]}={format_value(json.loads(v))}" for k, v in values.items())
            base = (named or group) if "data.batch_size" in matrix_values(group_runs[0]) else group
            for run in group_runs:
                for item in self._modes(run):
                    points = series.setdefault((base, item["stats"]), {})
                    points.setdefault(item["batch_size"], []).append(item["accuracy"])
        return series

    def figures(self, runs, groups, out: Path) -> list[str]:
        """Test accuracy against the eval batch size: a line per variant and BN statistics. Variants that
        differ only in their training batch size (evaluated at it) are one line over those sizes."""
        plt = pyplot()
        series = self._series(groups)
        bases = list(dict.fromkeys(base for base, _ in series))
        palette = plt.get_cmap("tab10").colors
        sizes_shown = sorted({size for points in series.values() for size in points})
        lines = []  # (variant, x, y, style, label) once, drawn on each panel
        for (base, stats), points in series.items():
            sizes = sorted(points)
            style = {**STAT_STYLES[stats], "color": palette[bases.index(base) % len(palette)]}
            turn = bases.index(base) // len(palette)  # past ten variants the colours repeat: the line style moves on
            if turn:
                style["linestyle"] = LINE_STYLES[(LINE_STYLES.index(style["linestyle"]) + turn) % len(LINE_STYLES)]
            if len(sizes) == 1 and stats != "batch":  # eval mode normalizes each sample alone: any batch size
                value = statistics.mean(points[sizes[0]])
                lines.append(
                    (base, sizes_shown, [value] * len(sizes_shown), style, f"{base}: {stats} (any eval batch)")
                )
            else:
                lines.append((base, sizes, [statistics.mean(points[s]) for s in sizes], style, f"{base}: {stats}"))
        fixed = [y[0] for _, _, y, _, label in lines if "any eval batch" in label]
        everything = [v for _, _, y, _, _ in lines for v in y]
        zoom = None
        if fixed:  # running and precise close together far above the rest: a second panel zoomed on them
            pad = max(0.005, 0.6 * (max(fixed) - min(fixed)))
            if min(everything) < min(fixed) - 8 * pad:
                zoom = (min(fixed) - pad, max(fixed) + pad)
        fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(13 if zoom else 8.5, 4.8), squeeze=False)
        for ax in axes[0]:
            for base, x, y, style, label in lines:
                # variants side by side around each eval batch size: equal values do not hide one another
                shift = 1.07 ** (bases.index(base) - (len(bases) - 1) / 2)
                ax.plot([size * shift for size in x], y, lw=1.2, label=label, **style)
            ax.set_xscale("log")
            readable_log_axis(ax, "x")
            ax.set_xlabel("eval batch size")
            ax.set_ylabel("test accuracy")
        axes[0][0].set_ylim(0, 1.02)
        axes[0][0].set_title(
            "test accuracy by BN statistics (line style and marker) and eval batch size "
            "(mean over seeds; variants side by side)",
            fontsize=9,
        )
        if zoom:
            axes[0][1].set_ylim(*zoom)
            axes[0][1].set_title(f"the same, zoomed on {zoom[0]:.3f}–{zoom[1]:.3f}", fontsize=9)
        fig.legend(
            *axes[0][0].get_legend_handles_labels(),
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=7,
            frameon=False,
        )
        return [save_figure(fig, out / "eval_modes.png")]


ANALYSIS = EvalModesReport()
