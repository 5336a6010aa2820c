"""Percentiles of one unit's pre-activation input over training (Ioffe & Szegedy Fig. 1, course E2).

Every ``every_n_steps`` steps the model is run on a fixed probe batch from the validation split,
and the 15th/50th/85th percentiles of the input to the chosen activation module (by default the
last hidden layer's) are recorded for one unit (or the whole layer). BN layers normalize with the
probe batch's statistics, as in training (their running buffers are neither used nor changed), so
the numbers show the distribution training sees, not the moving averages' lag; dropout is off.
Without BN the percentiles drift in mean and spread; with BN they stay put.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional, Sequence

import lightning as L
import torch

from cnnkit.experiments.analyses._unit import Analysis, by_label, listed, pyplot, save_figure, table
from cnnkit.nn.layers.batch_stats import batch_statistics
from cnnkit.nn.layers.blocks import WeightNormAct
from cnnkit.training.callbacks.output import RowLog


def default_activation(model: torch.nn.Module) -> str:
    """The activation of the last block that has one (the last hidden layer)."""
    names = [
        f"{name}.act"
        for name, module in model.named_modules()
        if isinstance(module, WeightNormAct) and hasattr(module, "act")
    ]
    if not names:
        raise ValueError("activation_percentiles: the model has no block with an activation; set module:")
    return names[-1]


class ActivationPercentiles(L.Callback):
    def __init__(
        self,
        module: Optional[str] = None,
        unit: Optional[int] = 0,
        every_n_steps: int = 10,
        percentiles: Sequence[float] = (15, 50, 85),
        probe_size: int = 256,
    ):
        self.module_name, self.unit, self.every = module, unit, every_n_steps
        self.percentiles = [float(p) for p in percentiles]
        self.probe_size = probe_size
        self.rows = RowLog("activations.csv")
        self.probe: Optional[torch.Tensor] = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.start(trainer)
        model = pl_module.model
        self.module_name = self.module_name or "model." + default_activation(model)
        modules = dict(pl_module.named_modules())
        if self.module_name not in modules:
            raise ValueError(f"activation_percentiles: no module '{self.module_name}' in the model")
        val = trainer.datamodule.load().val
        count = min(self.probe_size, len(val))
        self.probe = torch.stack([val[i][0] for i in range(count)])
        self._record(trainer, pl_module)

    @torch.no_grad()
    def _record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        captured = {}
        module = dict(pl_module.named_modules())[self.module_name]
        handle = module.register_forward_pre_hook(lambda m, inputs: captured.setdefault("x", inputs[0].detach()))
        was_training = pl_module.training
        pl_module.eval()
        try:
            with batch_statistics(pl_module):
                pl_module(self.probe.to(pl_module.device))
        finally:
            handle.remove()
            pl_module.train(was_training)
        x = captured["x"]
        values = x[:, self.unit].flatten() if self.unit is not None else x.flatten()
        q = torch.quantile(values.float().cpu(), torch.tensor(self.percentiles) / 100)
        self.rows.add(step=trainer.global_step, **{f"p{p:g}": float(v) for p, v in zip(self.percentiles, q)})

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every == 0:
            self._record(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.flush(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.flush(trainer)


Callback = ActivationPercentiles


class ActivationPercentilesReport(Analysis):
    files = ("activations.csv",)

    def median_range(self, run) -> Optional[float]:
        """How far the 50th percentile of the probed unit's input moved over training (E2)."""
        values = [r["p50"] for r in self.of(run).get("activations", []) if r.get("p50") is not None]
        return max(values) - min(values) if values else None

    def answer(self, runs, groups, labels) -> str:
        drift = by_label(groups, labels, self.median_range)
        if not drift:
            return ""
        order = sorted(drift, key=lambda label: statistics.mean(drift[label]))

        def span(values: list[float]) -> str:
            return f"{min(values):.2f}–{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"

        text = "Over training, the median of the probed unit's input moved by " + listed(
            [f"{span(drift[label])} with {label}" for label in order]
        )
        if len(order) > 1:
            others = [v for label in order[1:] for v in drift[label]]
            if max(drift[order[0]]) < min(others):
                text += f": every run with {order[0]} moved less than every " + (
                    f"run with {order[1]}" if len(order) == 2 else "other run"
                )
            else:
                text += f": the runs overlap (not every run with {order[0]} moved less)"
        return text + "."

    def tables(self, runs, groups) -> list[str]:
        ranges = [(r.variant, self.median_range(r)) for r in runs if self.median_range(r) is not None]
        if not ranges:
            return []
        return table(
            "Drift of the median pre-activation input over training (max − min of the 50th percentile)",
            ["run", "range of the median"],
            [[variant, f"{value:.4f}"] for variant, value in ranges],
        )

    def figures(self, runs, groups, out: Path) -> list[str]:
        firsts = [group_runs[0] for group_runs in groups.values()]
        plt = pyplot()
        fig, axes = plt.subplots(1, len(firsts), figsize=(5 * len(firsts), 4), squeeze=False, sharey=True)
        for ax, run in zip(axes[0], firsts):
            rows = self.of(run)["activations"]
            steps = [r["step"] for r in rows]
            keys = sorted((k for k in rows[0] if k.startswith("p")), key=lambda k: float(k[1:]))
            ax.fill_between(
                steps,
                [r[keys[0]] for r in rows],
                [r[keys[-1]] for r in rows],
                alpha=0.3,
                label=f"{keys[0][1:]}–{keys[-1][1:]}th percentile",
            )
            ax.plot(steps, [r["p50"] for r in rows], label="median")
            ax.set_title(run.variant, fontsize=9)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("input to one unit's activation")
        return [save_figure(fig, out / "activations.png")]


ANALYSIS = ActivationPercentilesReport()
