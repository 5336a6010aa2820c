"""BatchNorm and evaluation data across processes.

- ``AllReduceBatchNorm``: synchronized BN for any device. torch's SyncBatchNorm refuses CPU
  tensors; this one all-reduces the per-channel sum, sum of squares and count with autograd
  (``torch.distributed.nn``), so its outputs, running statistics and gradients equal those of
  plain BN over the global batch — on gloo too, which makes it testable on a laptop.
- ``convert_sync_bn``: torch's SyncBatchNorm on CUDA, ``AllReduceBatchNorm`` elsewhere.
- ``average_bn_buffers``: without sync, each rank's running statistics describe its own shard;
  averaging them before evaluation (timm's ``distribute_bn`` "reduce") makes eval-mode BN use all
  of the data, not rank 0's shard alone (DDP's buffer broadcast copies rank 0's).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cnnkit.nn.layers import bn_math


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum of the processes' gradients (every rank's loss
    depends on every rank's inputs through the shared statistics)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the batch across all processes."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_distributed()):
            return super().forward(x)
        moments = bn_math.Moments.of(x).all_reduce(_AllReduceSum.apply)
        mean, var = moments.mean, moments.var()
        if self.track_running_stats:
            bn_math.update_running_stats(self, mean, var, moments.count)
        return bn_math.layer_normalize(self, x, mean, var)


def convert_sync_bn(module: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm (any ``_BatchNorm``) by a synchronized one, keeping its state."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, (AllReduceBatchNorm, nn.SyncBatchNorm)):
        synced = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert_sync_bn(child, device_type))
    return module


@torch.no_grad()
def average_bn_buffers(model: nn.Module) -> int:
    """Average every BN layer's running mean and variance over the processes; returns the layer count."""
    if not is_distributed():
        return 0
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    world = dist.get_world_size()
    for layer in layers:
        for buffer in (layer.running_mean, layer.running_var):
            dist.all_reduce(buffer)
            buffer.div_(world)
    return len(layers)
