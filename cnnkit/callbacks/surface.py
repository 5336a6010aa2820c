"""The error surface of a two-parameter model and the path descent takes on it (course E1).

``HessianLR`` computes the Hessian of the full-batch training loss at the start: its eigenvalues
give the condition number and the largest stable step of gradient descent, 2/λmax; it can set the
learning rate to ``factor``·2/λmax so each variant runs at its own largest stable step.
``LossSurface`` records the weights after every step and, at the end, the loss on a grid around
the path, for the contour plot the report draws.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch.func import functional_call

from .output import RowLog, write_json


def _train_tensors(trainer: L.Trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    train = trainer.datamodule.load().train
    xs, ys = zip(*(train[i] for i in range(len(train))))
    return torch.stack(xs).to(device), torch.stack(ys).to(device)


def _loss_of_flat(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Callable, torch.Tensor]:
    """loss(flat parameter vector) over (x, y), and the current flat vector."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        tensors, start = {}, 0
        for name, shape in zip(names, shapes):
            size = shape.numel()
            tensors[name] = flat[start:start + size].reshape(shape)
            start += size
        return F.cross_entropy(functional_call(model, tensors, (x,)), y)

    return loss, torch.cat([p.flatten() for p in params])


class HessianLR(L.Callback):
    def __init__(self, factor: float = 0.9, set_lr: bool = True, max_params: int = 5000):
        self.factor, self.set_lr, self.max_params = factor, set_lr, max_params

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if size > self.max_params:
            raise ValueError(f"hessian_lr: the model has {size} parameters; the full Hessian is for small "
                             f"models (max_params={self.max_params})")
        x, y = _train_tensors(trainer, pl_module.device)
        was_training = model.training
        model.eval()
        loss, flat = _loss_of_flat(model, x, y)
        hessian = torch.autograd.functional.hessian(loss, flat)
        model.train(was_training)
        eigenvalues = torch.linalg.eigvalsh(hessian.double())
        top, bottom = float(eigenvalues.max()), float(eigenvalues.min())
        lr = self.factor * 2.0 / top
        record = {"lambda_max": top, "lambda_min": bottom,
                  "condition_number": top / bottom if bottom > 0 else float("inf"),
                  "largest_stable_lr": 2.0 / top, "lr": lr if self.set_lr else None}
        if self.set_lr:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = lr
                    group["initial_lr"] = lr
        write_json(trainer, "hessian.json", record)


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
        self.data = _train_tensors(trainer, pl_module.device)
        self._record_current(trainer, pl_module)

    @torch.no_grad()
    def _record_current(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss, flat = _loss_of_flat(pl_module.model, *self.data)
        self._record(trainer, pl_module, float(loss(flat)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
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
        loss, _ = _loss_of_flat(pl_module.model, *self.data)
        grid = torch.stack(torch.meshgrid(axes[0], axes[1], indexing="xy"), -1).reshape(-1, 2)
        values = torch.stack([loss(point.to(pl_module.device)) for point in grid]).reshape(self.grid, self.grid)
        write_json(trainer, "surface.json", {"w1": axes[0].tolist(), "w2": axes[1].tolist(),
                                            "loss": values.cpu().tolist()})
