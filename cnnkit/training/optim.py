"""Optimizers and learning-rate schedules by name.

Schedules are stepped every optimizer step and get their length from the datamodule
(``total_steps``), not from Lightning's estimate, which builds the loader before a resumed
loop's state is restored.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cnnkit.errors import ConfigError
from cnnkit.registry import OPTIMIZERS, SCHEDULERS

OPTIMIZERS.register_lazy("sgd", "torch.optim:SGD", "stochastic gradient descent (momentum, nesterov, dampening)")
OPTIMIZERS.register_lazy("adam", "torch.optim:Adam", "Adam (Kingma & Ba 2015); weight decay is L2 in the gradient")
OPTIMIZERS.register_lazy("adamw", "torch.optim:AdamW", "Adam with decoupled weight decay (Loshchilov & Hutter 2019)")


def parameter_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict[str, Any]]:
    """One group, or two when norm parameters and biases are exempt from weight decay."""
    if not no_decay_norm_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = not isinstance(module, (nn.Conv2d, nn.Linear))
        for name, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                (no_decay if is_norm or name == "bias" or param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_lr(lr: float, rule: str, global_batch: int, reference: int) -> float:
    """The learning rate for ``global_batch`` under a scaling rule (none, linear, sqrt)."""
    ratio = global_batch / reference
    return {"none": lr, "linear": lr * ratio, "sqrt": lr * math.sqrt(ratio)}[rule]


def _per_step(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


# A schedule whose builder takes ``total_steps`` is laid out over the run's length: a finished run
# cannot train on with it (``runs.length_bound``); the others continue where they were.
@SCHEDULERS.register("constant", description="the same learning rate throughout")
def constant(optimizer: torch.optim.Optimizer) -> None:
    return None


@SCHEDULERS.register("step", description="multiply the lr by gamma every step_epochs epochs")
def step(
    optimizer: torch.optim.Optimizer, steps_per_epoch: int, step_epochs: int = 30, gamma: float = 0.1
) -> dict[str, Any]:
    if step_epochs < 1:
        raise ConfigError(f"step scheduler: step_epochs must be >= 1, got {step_epochs}")
    return _per_step(torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_epochs * steps_per_epoch, gamma=gamma))


@SCHEDULERS.register("cosine", description="cosine decay to min_lr over the run, optional linear warm-up")
def cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0
) -> dict[str, Any]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return _per_step(torch.optim.lr_scheduler.LambdaLR(optimizer, factor))


@SCHEDULERS.register(
    "onecycle", aliases=("one_cycle",), description="Smith's one-cycle: warm up to optim.lr, then anneal (per step)"
)
def onecycle(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    lr: float,
    pct_start: float = 0.25,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> dict[str, Any]:
    return _per_step(
        torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=lr,
            total_steps=total_steps,
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
    )
