"""No update from a non-finite loss, decided on the device: no host synchronization per step.

Checking ``torch.isfinite(loss).item()`` every step stalls a GPU until the step's work is done. With
a fused torch optimizer (SGD, Adam, AdamW with ``fused=True``) the decision stays on the device: the
optimizer's ``found_inf`` (the path torch's GradScaler uses) skips the whole update of a step whose
loss is not finite, and of every step after it, and BatchNorm's running buffers, which the diverged
forward pass has already written, are put back (after the backward pass, which may read them) from a
copy taken before it. The first non-finite step is kept on the device too and read back only at
logging steps, at the end of an epoch and before a checkpoint is saved; the run then stops as
diverged at that step, with its weights, optimizer state and buffers those of the last finite one.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm

# torch's optimizers whose fused implementation (CPU and CUDA) reads ``found_inf``
FUSED_CAPABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can skip an update from a device-side flag (its fused implementation)."""
    return bool(optimizer.param_groups) and all(group.get("fused") for group in optimizer.param_groups)


class StepGuard:
    """Per batch: ``before_forward``, ``after_loss`` (which says whether to count the batch in the
    training metrics), ``after_backward``, then on optimizer steps ``before_optimizer_step``;
    ``first_bad_step`` reads the flag back (one host synchronization, so only where the step is
    logged anyway)."""

    def __init__(self, model: torch.nn.Module, step: int, device: torch.device):
        self.buffers = [b for m in model.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]
        self.saved = [torch.empty_like(b) for b in self.buffers]
        self.counter = torch.tensor(step, device=device)  # the optimizer step's number, counted on the device
        self.first_bad = torch.tensor(-1, device=device)
        self.good = torch.tensor(True, device=device)  # this batch's loss is finite and none before it was not

    def before_forward(self) -> None:
        if self.buffers:
            torch._foreach_copy_(self.saved, self.buffers)  # one launch for every buffer

    def after_loss(self, loss: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(loss.detach())
        self.first_bad = torch.where(~finite & (self.first_bad < 0), self.counter, self.first_bad)
        self.good = finite & (self.first_bad < 0)
        return self.good

    def after_backward(self) -> None:
        """Put BN's running buffers back unless this batch was good."""
        for buffer, saved in zip(self.buffers, self.saved):
            torch.where(self.good, buffer, saved, out=buffer)

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.grad_scale = None
        optimizer.found_inf = (self.first_bad >= 0).float()  # from the first bad step on, nothing updates
        self.counter += 1

    def first_bad_step(self) -> Optional[int]:
        step = int(self.first_bad.item())
        return None if step < 0 else step
