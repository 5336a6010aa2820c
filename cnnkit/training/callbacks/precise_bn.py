"""Precise BatchNorm (Wu & Johnson 2021): exact population statistics instead of moving averages.

Before each validation and test, the inputs of every ``_BatchNorm`` layer (torch's, SyncBatchNorm,
bn_scratch, anything registered that subclasses it) are accumulated over ``num_batches`` training
batches in one train-mode pass without gradients; the running mean and (unbiased) variance become
their exact mean and variance over that pass. Under DDP the sums are all-reduced, so every rank
gets the same statistics from the union of their shards.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import lightning as L
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.nn.layers import bn_math


def _sum_over_processes(packed: torch.Tensor) -> torch.Tensor:
    torch.distributed.all_reduce(packed)
    return packed


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, batches: Iterable[torch.Tensor], num_batches: int) -> int:
    """Set every BN layer's running statistics to the exact ones over ``num_batches`` batches.

    Returns the number of batches used. The model's train/eval mode is restored afterwards.
    """
    layers = bn_layers(model)
    if not layers:
        return 0
    moments = {layer: bn_math.Moments.zeros(layer.num_features, device=layer.running_mean.device) for layer in layers}

    def accumulate(layer: _BatchNorm, inputs: tuple[torch.Tensor, ...]) -> None:
        moments[layer].add(inputs[0].detach())

    handles = [layer.register_forward_pre_hook(accumulate) for layer in layers]
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    model.train()
    for layer in layers:
        layer.momentum = 0.0  # the pass must not move the buffers it is about to replace
    used = 0
    try:
        for x in batches:
            if used >= num_batches:
                break
            model(x)
            used += 1
    finally:
        for handle in handles:
            handle.remove()
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    for layer in layers:
        total = moments[layer].all_reduce(_sum_over_processes) if distributed else moments[layer]
        if total.count < 2:
            continue
        bn_math.set_running_stats(layer, total.mean, bn_math.unbiased(total.var(), total.count))
    return used


class PreciseBN(L.Callback):
    """Recompute exact BN statistics over ``num_batches`` training batches before validation and test."""

    def __init__(self, num_batches: int = 100):
        if num_batches < 1:
            raise ValueError(f"precise_bn: num_batches must be >= 1, got {num_batches}")
        self.num_batches = num_batches
        self._warned = False

    def _recompute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not bn_layers(pl_module):
            if not self._warned:
                warnings.warn("precise_bn: the model has no BatchNorm layer; nothing to recompute", stacklevel=2)
                self._warned = True
            return
        loader = trainer.datamodule.train_dataloader()
        inputs = (batch[0].to(pl_module.device) for batch in loader)
        recompute_bn_statistics(pl_module, inputs, self.num_batches)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._recompute(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._recompute(trainer, pl_module)
