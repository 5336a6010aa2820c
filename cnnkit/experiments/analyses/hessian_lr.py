"""Hessian of the full-batch training loss at the start: condition number and lr = factor·2/λmax (E1).

Its eigenvalues give the condition number and the largest stable step of gradient descent,
2/λmax; with ``set_lr`` the learning rate becomes ``factor``·2/λmax, so each variant runs at its
own largest stable step. Recorded in ``hessian.json``.
"""

from __future__ import annotations

import lightning as L
import torch

from cnnkit.experiments.analyses._full_batch import loss_of_flat, train_tensors
from cnnkit.experiments.analyses._unit import Analysis, by_label, listed, table
from cnnkit.training.callbacks.output import write_json


class HessianLR(L.Callback):
    def __init__(self, factor: float = 0.9, set_lr: bool = True, max_params: int = 5000):
        self.factor, self.set_lr, self.max_params = factor, set_lr, max_params

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if size > self.max_params:
            raise ValueError(
                f"hessian_lr: the model has {size} parameters; the full Hessian is for small "
                f"models (max_params={self.max_params})"
            )
        x, y = train_tensors(trainer, pl_module.device)
        was_training = model.training
        model.eval()
        loss, flat = loss_of_flat(model, pl_module.loss, x, y)
        hessian = torch.autograd.functional.hessian(loss, flat)
        model.train(was_training)
        eigenvalues = torch.linalg.eigvalsh(hessian.double())
        top, bottom = float(eigenvalues.max()), float(eigenvalues.min())
        lr = self.factor * 2.0 / top
        record = {
            "lambda_max": top,
            "lambda_min": bottom,
            "condition_number": top / bottom if bottom > 0 else float("inf"),
            "largest_stable_lr": 2.0 / top,
            "lr": lr if self.set_lr else None,
        }
        if self.set_lr:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                    group["initial_lr"] = lr
        write_json(trainer, "hessian.json", record)


Callback = HessianLR


class HessianReport(Analysis):
    files = ("hessian.json",)

    def answer(self, runs, groups, labels) -> str:
        kappa = by_label(groups, labels, lambda r: self.of(r)["hessian"]["condition_number"])
        step = by_label(groups, labels, lambda r: self.of(r)["hessian"]["largest_stable_lr"])
        if not kappa:
            return ""
        order = sorted(kappa, key=lambda label: -max(kappa[label]))

        def number(value: float) -> str:
            return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"

        return (
            "The Hessian of the training loss at the start has condition number "
            + listed([f"{number(max(kappa[label]))} with {label}" for label in order])
            + "; the largest stable step of gradient descent, 2/λmax, is "
            + listed([f"{min(step[label]):.3g}" for label in order])
            + (" in the same order." if len(order) > 1 else ".")
        )

    def tables(self, runs, groups) -> list[str]:
        rows = []
        for run in runs:
            h = self.of(run)["hessian"]
            lr = str(h["lr"]) if h["lr"] is None else format(h["lr"], ".4g")
            rows.append(
                [run.variant, f"{h['lambda_max']:.4g}", f"{h['lambda_min']:.4g}", f"{h['condition_number']:,.1f}", lr]
            )
        return table("Hessian at the start", ["run", "λmax", "λmin", "condition number", "lr used"], rows)


ANALYSIS = HessianReport()
