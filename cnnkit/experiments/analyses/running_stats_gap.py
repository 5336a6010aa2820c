"""How far BN's running statistics are from the population's, per layer over training (course E4).

At test time BN uses moving averages of batch statistics taken while the weights were changing.
At each validation this measures, for every BN layer, the gap between its running mean/variance
and the population statistics under the current weights: every training sample once, as loaded
(no augmentation), with every BN normalizing by its batch's statistics as in training (batches of
the training batch size). The gaps are ``mean_gap`` = mean over channels of |μ̄ − μ| / σ (in units
of the population std) and ``var_gap`` = mean over channels of |σ̄² / σ² − 1| (unbiased variances).
The pass reads and writes no BN buffer and draws no random number (the model is in eval mode,
BN layers swapped to batch statistics), so every other number of the run stays as it is.
Written to ``running_stats_gap.csv``, one row per validation, two columns per layer.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Callable, Iterable, Optional

import lightning as L
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.experiments.analyses._unit import (
    Analysis,
    by_label,
    listed,
    mean_std,
    pyplot,
    readable_log_axis,
    save_figure,
    table,
)
from cnnkit.nn.layers import bn_math
from cnnkit.nn.layers.batch_stats import batch_statistics
from cnnkit.training.callbacks.output import RowLog

MIN_STD = 1e-5  # a channel that is constant over the data (a dead ReLU's output) has no scale to divide by


@torch.no_grad()
def population_moments(
    model: nn.Module, batches: Iterable[torch.Tensor], forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
) -> dict[str, bn_math.Moments]:
    """Per BN layer of ``model`` (by name), the moments of its input over ``batches`` in a forward pass
    (``forward``, default ``model``) where every BN normalizes with its batch's statistics."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats}
    moments = {
        name: bn_math.Moments.zeros(layer.num_features, device=layer.running_mean.device)
        for name, layer in layers.items()
    }
    handles = [
        layer.register_forward_pre_hook(lambda m, inputs, name=name: moments[name].add(inputs[0]))
        for name, layer in layers.items()
    ]
    was_training = model.training
    model.eval()  # dropout and noise layers off: nothing random is drawn
    try:
        with batch_statistics(model):
            for x in batches:
                (forward or model)(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return moments


def gaps(layer: _BatchNorm, population: bn_math.Moments) -> tuple[float, float]:
    """(mean gap in population stds, relative variance gap), each averaged over the channels."""
    mean = population.mean
    var = bn_math.unbiased(population.var(), population.count)
    running_mean = layer.running_mean.to(mean.dtype)
    running_var = layer.running_var.to(var.dtype)
    mean_gap = ((running_mean - mean).abs() / var.sqrt().clamp_min(MIN_STD)).mean()
    var_gap = (running_var / var.clamp_min(MIN_STD**2) - 1).abs().mean()
    return float(mean_gap), float(var_gap)


class RunningStatsGap(L.Callback):
    def __init__(self) -> None:
        self.rows = RowLog("running_stats_gap.csv")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.start(trainer)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        batch_size = datamodule.per_device(datamodule.cfg.batch_size)
        batches = (x.to(pl_module.device) for x in datamodule.load().train.inputs(batch_size))
        model = pl_module.model
        population = population_moments(model, batches, forward=pl_module)  # its forward sets the memory layout
        if not population:
            return
        layers = dict(model.named_modules())
        row = {"step": trainer.global_step}
        for name, moments in population.items():
            row[f"{name}/mean_gap"], row[f"{name}/var_gap"] = gaps(layers[name], moments)
        self.rows.add(**row)
        self.rows.flush(trainer)


Callback = RunningStatsGap


def _layers(rows: list[dict]) -> list[str]:
    return [key[: -len("/mean_gap")] for key in rows[0] if key.endswith("/mean_gap")]


def _final_average(rows: list[dict], kind: str) -> float:
    return statistics.mean(rows[-1][f"{layer}/{kind}"] for layer in _layers(rows))


class RunningStatsGapReport(Analysis):
    files = ("running_stats_gap.csv",)

    def _rows(self, run) -> list[dict]:
        return self.of(run).get("running_stats_gap", [])

    def answer(self, runs, groups, labels) -> str:
        gap = {
            kind: by_label(
                groups, labels, lambda r, kind=kind: _final_average(self._rows(r), kind) if self._rows(r) else None
            )
            for kind in ("mean_gap", "var_gap")
        }
        if not gap["mean_gap"]:
            return ""
        mean = {kind: {label: statistics.mean(v) for label, v in found.items()} for kind, found in gap.items()}
        order = sorted(mean["mean_gap"], key=mean["mean_gap"].get)
        return (
            "At the last validation, BN's running means are off the population's by "
            + listed(
                [
                    f"{mean['mean_gap'][label]:.4f}{' population stds' if i == 0 else ''} with {label}"
                    for i, label in enumerate(order)
                ]
            )
            + ", its running variances by "
            + listed([f"{mean['var_gap'][label]:.4f}" for label in order])
            + (" in the same order" if len(order) > 1 else "")
            + " (relative; averages over the BN layers)."
        )

    def tables(self, runs, groups) -> list[str]:
        cells = []
        for group, group_runs in groups.items():
            rows = self._rows(group_runs[0])
            worst = max(_layers(rows), key=lambda layer: rows[-1][f"{layer}/var_gap"])
            averages = [
                mean_std([_final_average(self._rows(r), kind) for r in group_runs]) for kind in ("mean_gap", "var_gap")
            ]
            cells.append([group, *averages, f"{worst}: {rows[-1][f'{worst}/var_gap']:.4f}"])
        return table(
            "BN running statistics vs the population at the last validation (average over layers)",
            ["variant", "mean gap (population stds)", "variance gap (relative)", "worst layer (variance gap)"],
            cells,
        )

    def figures(self, runs, groups, out: Path) -> list[str]:
        plt = pyplot()
        fig, axes = plt.subplots(2, len(groups), figsize=(4.5 * len(groups) + 1, 6.5), squeeze=False, sharey="row")
        for column, group_runs in enumerate(groups.values()):
            rows = self._rows(group_runs[0])
            steps = [r["step"] for r in rows]
            for row, (kind, label) in enumerate(
                (
                    ("mean_gap", "|running mean − population mean| / std"),
                    ("var_gap", "|running var / population var − 1|"),
                )
            ):
                ax = axes[row][column]
                for layer in _layers(rows):
                    ax.plot(steps, [r[f"{layer}/{kind}"] for r in rows], "o-", ms=3, lw=1, label=layer)
                ax.set_yscale("log")
                readable_log_axis(ax)
                ax.set_xlabel("step")
                if column == 0:
                    ax.set_ylabel(label, fontsize=8)
                if row == 0:
                    ax.set_title(group_runs[0].variant, fontsize=9)
        axes[0][-1].legend(fontsize=7, title="BN layer", title_fontsize=7)
        fig.suptitle("BN running statistics vs the population under the current weights (per layer)", fontsize=10)
        return [save_figure(fig, out / "running_stats_gap.png")]


ANALYSIS = RunningStatsGapReport()
