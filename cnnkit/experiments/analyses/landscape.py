"""Loss-landscape probes along the gradient (Santurkar et al. 2018, course E6).

Every ``every_n_steps`` steps, on the current training batch: g = ∇L(θ); for each step size
η = multiplier·lr the loss L(θ − ηg) and the gradient ∇L(θ − ηg) are evaluated. Recorded: the range
of those losses (loss landscape), of ‖∇L(θ − ηg) − g‖ (gradient predictiveness), and the
effective β-smoothness max_η ‖∇L(θ − ηg) − g‖ / ‖ηg‖. Parameters and BN buffers are restored, so
training is unchanged.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable, Optional, Sequence

import lightning as L
import torch

from cnnkit.experiments.analyses._unit import (
    Analysis,
    by_label,
    listed,
    mean_std,
    pyplot,
    readable_log_axis,
    save_figure,
    table,
    variant_styles,
)
from cnnkit.training.callbacks.output import RowLog


def probe_along_gradient(
    loss_and_grad: Callable[[], tuple[torch.Tensor, list[torch.Tensor]]],
    params: Sequence[torch.Tensor],
    lr: float,
    multipliers: Sequence[float],
) -> dict[str, float]:
    """Probe L along −g from the current ``params`` (restored afterwards)."""
    saved = [p.detach().clone() for p in params]
    loss, grads = loss_and_grad()
    g = torch.cat([t.flatten() for t in grads])
    g_norm = float(g.norm())
    losses, changes, betas = [], [], []
    try:
        for multiplier in multipliers:
            eta = multiplier * lr
            with torch.no_grad():
                for p, s, d in zip(params, saved, grads):
                    p.copy_(s - eta * d)
            new_loss, new_grads = loss_and_grad()
            change = float((torch.cat([t.flatten() for t in new_grads]) - g).norm())
            losses.append(float(new_loss))
            changes.append(change)
            betas.append(change / (eta * g_norm) if g_norm > 0 else 0.0)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    return {
        "loss": float(loss),
        "loss_min": min(losses),
        "loss_max": max(losses),
        "grad_change_min": min(changes),
        "grad_change_max": max(changes),
        "beta": max(betas),
        "grad_norm": g_norm,
    }


class LandscapeProbes(L.Callback):
    def __init__(self, every_n_steps: int = 50, multipliers: Sequence[float] = (0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4)):
        self.every, self.multipliers = every_n_steps, [float(m) for m in multipliers]
        self.rows = RowLog("landscape.csv")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.start(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if trainer.global_step % self.every:
            return
        x, y = batch
        params = [p for p in pl_module.model.parameters() if p.requires_grad]
        buffers = [b.detach().clone() for b in pl_module.model.buffers()]
        lr = trainer.optimizers[0].param_groups[0]["lr"]

        def loss_and_grad():
            loss = pl_module.loss(pl_module.model(x), y)  # the objective training minimizes
            return loss.detach(), list(torch.autograd.grad(loss, params))

        try:
            row = probe_along_gradient(loss_and_grad, params, lr, self.multipliers)
        finally:
            with torch.no_grad():
                for b, s in zip(pl_module.model.buffers(), buffers):
                    b.copy_(s)
        self.rows.add(step=trainer.global_step, **row)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.flush(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.flush(trainer)


Callback = LandscapeProbes


def _finite_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if all(v is not None and math.isfinite(v) for v in r.values())]


class LandscapeReport(Analysis):
    files = ("landscape.csv",)

    def means(self, run) -> Optional[dict[str, float]]:
        finite = _finite_rows(self.of(run).get("landscape", []))
        if not finite:
            return None
        return {
            "loss_range": statistics.mean(r["loss_max"] - r["loss_min"] for r in finite),
            "grad_change": statistics.mean(r["grad_change_max"] for r in finite),
            "beta": statistics.mean(r["beta"] for r in finite),
        }

    def answer(self, runs, groups, labels) -> str:
        measures = {
            key: by_label(groups, labels, lambda r, key=key: (self.means(r) or {}).get(key))
            for key in ("loss_range", "grad_change", "beta")
        }
        if not measures["loss_range"]:
            return ""
        mean = {key: {label: statistics.mean(v) for label, v in found.items()} for key, found in measures.items()}
        order = sorted(mean["loss_range"], key=mean["loss_range"].get)
        shown = {key: listed([f"{mean[key][label]:.3g}" for label in order]) for key in ("grad_change", "beta")}
        return (
            "Probed along the gradient, the loss varies over the step sizes by "
            + listed([f"{mean['loss_range'][label]:.3g} with {label}" for label in order])
            + (
                f"; the gradient changes by up to {shown['grad_change']} and the effective β-smoothness is "
                f"{shown['beta']}, in the same order"
                if len(order) > 1
                else f"; the gradient changes by up to {shown['grad_change']}, the effective β-smoothness is "
                f"{shown['beta']}"
            )
            + " (means over the probes and seeds)."
        )

    def tables(self, runs, groups) -> list[str]:
        scapes = [(g, [self.means(r) for r in rs]) for g, rs in groups.items() if any(self.means(r) for r in rs)]
        if not scapes:
            return []
        rows = []
        for group, values in scapes:
            values = [v for v in values if v]
            rows.append(
                [group] + [mean_std([v[key] for v in values], True) for key in ("loss_range", "grad_change", "beta")]
            )
        return table(
            "Landscape probes, averaged over the run (mean ± std over seeds, then each seed)",
            ["variant", "loss range along −g", "max gradient change", "effective β"],
            rows,
        )

    def figures(self, runs, groups, out: Path) -> list[str]:
        plt = pyplot()
        styles = variant_styles(groups)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for group, group_runs in groups.items():
            rows = _finite_rows(self.of(group_runs[0])["landscape"])
            if not rows:
                continue
            steps = [r["step"] for r in rows]
            color, style = styles[group]["color"], styles[group]["linestyle"]
            axes[0].fill_between(
                steps,
                [r["loss_min"] for r in rows],
                [r["loss_max"] for r in rows],
                alpha=0.35,
                color=color,
                linestyle=style,
                label=group,
            )
            axes[1].fill_between(
                steps,
                [r["grad_change_min"] for r in rows],
                [r["grad_change_max"] for r in rows],
                alpha=0.35,
                color=color,
                linestyle=style,
                label=group,
            )
            marker = "o" if len(steps) < 3 else None  # a probe or two: a line would not show
            axes[2].plot(steps, [r["beta"] for r in rows], color=color, linestyle=style, marker=marker, label=group)
        for ax, title, label in zip(
            axes,
            (
                "loss along the gradient (range over step sizes)",
                "gradient predictiveness: ‖∇L(θ−ηg) − ∇L(θ)‖",
                "effective β-smoothness",
            ),
            (
                "training-batch loss L(θ − ηg)",
                "gradient change ‖∇L(θ − ηg) − ∇L(θ)‖",
                "β = max over η of ‖∇L(θ − ηg) − ∇L(θ)‖ / ‖ηg‖",
            ),
        ):
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel(label, fontsize=8)
            if ax.has_data():
                ax.set_yscale("log")
                readable_log_axis(ax)
                ax.legend(fontsize=7)
        return [save_figure(fig, out / "landscape.png")]


ANALYSIS = LandscapeReport()
