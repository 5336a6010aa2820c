"""The error surface of a two-parameter model and the path descent takes on it (course E1).

The weights are recorded after every step (``trajectory.csv``, with the full-batch loss) and, at
the end, the loss on a grid around the path (``surface.json``), for the contour plot. With
``hessian_lr`` in the same run the plot's title shows the condition number of the Hessian at the
start point (marked): away from it the loss is not quadratic, so the contours need not match it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch

from cnnkit.experiments.analyses._full_batch import loss_of_flat, train_tensors
from cnnkit.experiments.analyses._unit import Analysis, pyplot, save_figure
from cnnkit.training.callbacks.output import RowLog, write_json


class LossSurface(L.Callback):
    def __init__(self, grid: int = 61, margin: float = 0.3):
        self.grid, self.margin = grid, margin
        self.path = RowLog("trajectory.csv")

    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: float) -> None:
        w = torch.cat([p.detach().flatten() for p in pl_module.model.parameters() if p.requires_grad]).cpu()
        self.path.add(step=trainer.global_step, w1=float(w[0]), w2=float(w[1]), loss=loss)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        size = sum(p.numel() for p in pl_module.model.parameters() if p.requires_grad)
        if size != 2:
            raise ValueError(f"loss_surface: needs a model with exactly 2 trainable parameters, this one has {size}")
        self.path.start(trainer)
        self.data = train_tensors(trainer, pl_module.device)
        self._record_current(trainer, pl_module)

    @torch.no_grad()
    def _record_current(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss, flat = loss_of_flat(pl_module.model, pl_module.loss, *self.data)
        self._record(trainer, pl_module, float(loss(flat)))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self._record_current(trainer, pl_module)

    @torch.no_grad()
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.path.flush(trainer)
        w1 = torch.tensor([float(r["w1"]) for r in self.path.rows])
        w2 = torch.tensor([float(r["w2"]) for r in self.path.rows])
        finite = torch.isfinite(w1) & torch.isfinite(w2) & (w1.abs() < 1e6) & (w2.abs() < 1e6)
        w1, w2 = w1[finite], w2[finite]
        axes = []
        for w in (w1, w2):
            low, high = float(w.min()), float(w.max())
            pad = self.margin * max(high - low, 1e-3)
            axes.append(torch.linspace(low - pad, high + pad, self.grid))
        loss, _ = loss_of_flat(pl_module.model, pl_module.loss, *self.data)
        grid = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1).reshape(-1, 2)
        values = torch.stack([loss(point.to(pl_module.device)) for point in grid]).reshape(self.grid, self.grid)
        write_json(
            trainer, "surface.json", {"w1": axes[0].tolist(), "w2": axes[1].tolist(), "loss": values.cpu().tolist()}
        )


Callback = LossSurface


class LossSurfaceReport(Analysis):
    files = ("trajectory.csv", "surface.json", "hessian.json")

    def training_loss(self, data: dict[str, Any]) -> Optional[list[tuple[float, float]]]:
        return [(r["step"], r["loss"]) for r in data.get("trajectory", [])] or None

    def figures(self, runs, groups, out: Path) -> list[str]:
        runs = [r for r in runs if self.of(r).get("surface") and self.of(r).get("trajectory")]
        if not runs:
            return []
        plt = pyplot()
        fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.8), squeeze=False)
        for ax, run in zip(axes[0], runs):
            data = self.of(run)
            surface = data["surface"]
            contours = ax.contour(surface["w1"], surface["w2"], surface["loss"], levels=25, cmap="viridis")
            ax.clabel(contours, fontsize=6)
            path = data["trajectory"]
            ax.plot([r["w1"] for r in path], [r["w2"] for r in path], "r.-", ms=2, lw=0.8, label="descent path")
            ax.plot(path[0]["w1"], path[0]["w2"], "o", color="black", ms=6, label="start", zorder=3)
            kappa = (data.get("hessian") or {}).get("condition_number")
            # the Hessian is taken at the start: away from it the loss is not quadratic and the contours bend
            shown = "" if not kappa else f"{kappa:,.0f}" if kappa >= 100 else f"{kappa:.3g}"
            ax.set_title(
                f"{run.variant}" + (f"\ncondition number of the Hessian at the start (●): {shown}" if kappa else ""),
                fontsize=9,
            )
            ax.set_xlabel("w1")
            ax.set_ylabel("w2")
            ax.legend(fontsize=7)
        return [save_figure(fig, out / "surface.png")]


ANALYSIS = LossSurfaceReport()
