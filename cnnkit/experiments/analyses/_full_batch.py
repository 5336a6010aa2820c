"""The full-batch training loss as a function of a flat parameter vector (two-parameter analyses)."""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch.func import functional_call


def train_tensors(trainer: L.Trainer, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    train = trainer.datamodule.load().train
    xs, ys = zip(*(train[i] for i in range(len(train))))
    return torch.stack(xs).to(device), torch.stack(ys).to(device)


def loss_of_flat(
    model: torch.nn.Module,
    objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> tuple[Callable, torch.Tensor]:
    """loss(flat parameter vector) = ``objective(model(x), y)`` with those parameters, and the current flat vector.

    ``objective`` is the module's training loss (``ClassifierModule.loss``), so the analyses measure the
    function training minimizes."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p.detach() for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for p in params]

    def loss(flat: torch.Tensor) -> torch.Tensor:
        tensors, start = {}, 0
        for name, shape in zip(names, shapes):
            size = shape.numel()
            tensors[name] = flat[start : start + size].reshape(shape)
            start += size
        return objective(functional_call(model, tensors, (x,)), y)

    return loss, torch.cat([p.flatten() for p in params])
