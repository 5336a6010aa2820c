"""A non-finite loss updates nothing, decided on the device (no host sync per step), and stops the run
at the same step, with the same last good state, as the per-step check it replaces."""

from __future__ import annotations

import json

import torch
from torch import nn

import cnnkit
from cnnkit.training.step_guard import StepGuard, skips_on_device
from tests.conftest import QUICKSTART, SMOKE


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _step(model, optimizer, guard, x):
    guard.before_forward()
    loss = model(x).logsumexp(-1).mean()
    guard.after_loss(loss)
    optimizer.zero_grad()
    loss.backward()
    guard.after_backward()
    guard.before_optimizer_step(optimizer)
    optimizer.step()


def _state(model, optimizer):
    return (
        [t.clone() for t in model.state_dict().values()],
        [v.clone() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)],
    )


def test_a_non_finite_step_changes_no_weight_no_optimizer_state_and_no_bn_buffer():
    # the first step bad too: fused SGD would leave its momentum buffers uninitialized; nothing may use them
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    guard = StepGuard(model, step=0, device=torch.device("cpu"))
    before = [t.clone() for t in model.state_dict().values()]
    bad = torch.randn(16, 4)
    bad[0, 0] = float("inf")
    for batch in (bad, torch.randn(16, 4), torch.randn(16, 4)):
        _step(model, optimizer, guard, batch)
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values()))
    assert guard.first_bad_step() == 0
    for make in (
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True),
        lambda p: torch.optim.AdamW(p, lr=0.01, fused=True),
    ):
        model = _model()
        optimizer = make(model.parameters())
        assert skips_on_device(optimizer)
        guard = StepGuard(model, step=0, device=torch.device("cpu"))
        x = torch.randn(16, 4)
        _step(model, optimizer, guard, x)  # a finite step: everything moves
        weights, states = _state(model, optimizer)
        _step(model, optimizer, guard, x)
        assert not torch.equal(model[0].weight, weights[0])
        weights, states = _state(model, optimizer)
        bad = x.clone()
        bad[3, 1] = float("nan")
        _step(model, optimizer, guard, bad)  # the forward wrote NaN into BN's buffers: they are put back
        for before, after in zip(weights, model.state_dict().values()):
            assert torch.equal(before, after)
        for before, after in zip(states, _state(model, optimizer)[1]):
            assert torch.equal(before, after)
        assert guard.first_bad_step() == 2
        _step(model, optimizer, guard, x)  # nor does any later step: the run has diverged, it waits to stop
        for before, after in zip(weights, model.state_dict().values()):
            assert torch.equal(before, after)
        assert guard.first_bad_step() == 2
    assert not skips_on_device(torch.optim.SGD(_model().parameters(), lr=0.1))


NAN_AT = """
import torch
import lightning as L
from cnnkit import CALLBACKS

SEEN = {}


@CALLBACKS.register("nan_at")
class NanAt(L.Callback):
    \"\"\"Poison one input at step ``step``; keep the model's state just before it and at the end.\"\"\"

    def __init__(self, step: int = 25):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            SEEN["before"] = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
            SEEN["guarded"] = pl_module.step_guard is not None
            batch[0][0].fill_(float("nan"))

    def on_train_end(self, trainer, pl_module):
        SEEN["after"] = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
"""

RUN = [
    "optim.scheduler=constant",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=null",
    "trainer.log_every_n_steps=50",
    "checkpoint.every_n_steps=null",
    "imports=[nan_at.py]",
    "callbacks=[{name: nan_at, step: 25}]",
]


def test_the_guard_stops_where_the_per_step_check_stops_and_updates_nothing_after(tmp_path, monkeypatch):
    (tmp_path / "nan_at.py").write_text(NAN_AT)
    monkeypatch.chdir(tmp_path)
    import importlib
    import sys

    results = {}
    for name, optimizer in (
        ("guard", "{name: sgd, momentum: 0.9, fused: true}"),
        ("check", "{name: sgd, momentum: 0.9, fused: false}"),
    ):
        cfg = cnnkit.load_config([QUICKSTART, SMOKE], [*RUN, f"optim.optimizer={optimizer}", f"runs_dir={name}"])
        result = cnnkit.fit(cfg)
        seen = next(m for k, m in sys.modules.items() if k.startswith("cnnkit_user_") and k.endswith("nan_at_py")).SEEN
        status = json.loads((result.run_dir / "status.json").read_text())
        last = torch.load(result.last_checkpoint, weights_only=True)
        results[name] = (result.status, status["step"], status["lr"], last["global_step"], dict(seen))
        importlib.invalidate_caches()
    guard, check = results["guard"], results["check"]
    assert guard[4]["guarded"] and not check[4]["guarded"]
    assert guard[0] == check[0] == "diverged"
    assert guard[1:4] == check[1:4] == (25, 0.05, 19)  # the bad step, its lr, epoch 0's last checkpoint
    for key, value in guard[4]["before"].items():  # no update, and BN's buffers as they were, from the bad step on
        assert torch.equal(guard[4]["after"][key], value), key
    for key, value in check[4]["before"].items():  # the per-step check skips the update (no BN restore)
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(check[4]["after"][key], value), key


def test_a_default_run_trains_with_the_fused_optimizer_and_the_guard():
    result = cnnkit.fit(cnnkit.load_config([QUICKSTART, SMOKE]))
    groups = torch.load(result.last_checkpoint, weights_only=True)["optimizer_states"][0]["param_groups"]
    assert [g["fused"] for g in groups] == [True, True]  # the quickstart's two groups (norms and biases undecayed)


def test_bf16_and_32_bit_runs_are_guarded_16_bit_mixed_ones_are_not():
    from cnnkit.training.module import SCALED_PRECISIONS

    assert "bf16-mixed" not in SCALED_PRECISIONS and "32-true" not in SCALED_PRECISIONS
    assert "16-mixed" in SCALED_PRECISIONS
