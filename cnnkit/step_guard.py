"""No update from a non-finite loss, decided on the device: no host synchronization per step.

Checking ``torch.isfinite(loss).item()`` every step stalls a GPU until the step's work is done. With
a fused torch optimizer (SGD, Adam, AdamW with ``fused=True``) the decision stays on the device: the
optimizer's ``found_inf`` (the path torch's GradScaler uses) skips the whole update when the loss is
not finite, and BatchNorm's running buffers, which the diverged forward pass has already written,
are put back from a copy taken before it. The first non-finite step is kept on the device too and
read back only at logging steps, at the end of an epoch and before a checkpoint is saved; the run
then stops as diverged at that step, with its weights those of the last finite one.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` can skip an update from a device-side flag (its fused implementation)."""
    return bool(optimizer.param_groups) and all(group.get("fused") for group in optimizer.param_groups)


class StepGuard:
    """Per batch: ``before_forward``, ``after_loss``, then (on optimizer steps) ``before_optimizer_step``,
    and ``after_batch``; ``first_bad_step`` reads the flag back (one host synchronization, so only where
    the step is logged anyway)."""

    def __init__(self, model: torch.nn.Module, step: int, device: torch.device):
        self.buffers = [b for m in model.modules() if isinstance(m, _BatchNorm) for b in m.buffers()]
        self.saved: list[torch.Tensor] = []
        self.counter = torch.tensor(step, device=device)  # the optimizer step's number, counted on the device
        self.first_bad = torch.tensor(-1, device=device)
        self.finite = torch.tensor(True, device=device)  # this batch's loss
        self.step_finite = torch.tensor(True, device=device)  # every batch accumulated into this step

    def before_forward(self) -> None:
        self.saved = [b.detach().clone() for b in self.buffers]

    def after_loss(self, loss: torch.Tensor) -> None:
        self.finite = torch.isfinite(loss.detach())
        self.step_finite = self.step_finite & self.finite
        self.first_bad = torch.where(~self.finite & (self.first_bad < 0), self.counter, self.first_bad)

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.grad_scale = None
        optimizer.found_inf = (~self.step_finite).float()
        self.step_finite = torch.ones_like(self.step_finite)
        self.counter += 1

    def after_batch(self) -> None:
        """Put BN's running buffers back where this batch's loss was not finite (after the backward pass,
        which may read them)."""
        for buffer, saved in zip(self.buffers, self.saved):
            buffer.copy_(torch.where(self.finite, buffer, saved))

    def first_bad_step(self) -> Optional[int]:
        step = int(self.first_bad.item())
        return None if step < 0 else step
