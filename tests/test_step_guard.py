"""A non-finite loss updates nothing, decided on the device (no host sync per step), and stops the run
at the same step, with the same last good state, as the per-step check it replaces."""

from __future__ import annotations

import json

import torch
from torch import nn

import cnnkit
from cnnkit.step_guard import StepGuard, skips_on_device
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
    guard.before_optimizer_step(optimizer)
    optimizer.step()
    guard.after_batch()


def _state(model, optimizer):
    return ([t.clone() for t in model.state_dict().values()],
            [v.clone() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)])


def test_a_non_finite_step_changes_no_weight_no_optimizer_state_and_no_bn_buffer():
    for make in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, fused=True),
                 lambda p: torch.optim.AdamW(p, lr=0.01, fused=True)):
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
        _step(model, optimizer, guard, x)  # later finite steps train on; the first bad one stays recorded
        assert not torch.equal(model[0].weight, weights[0]) and guard.first_bad_step() == 2
    assert not skips_on_device(torch.optim.SGD(_model().parameters(), lr=0.1))


DIVERGE = ["model.norm=bn_pre", "optim.lr=1e30", "optim.scheduler=constant", "trainer.max_epochs=3",
           "trainer.limit_train_batches=null", "trainer.log_every_n_steps=50", "checkpoint.every_n_steps=1"]


def test_the_guard_stops_where_the_per_step_check_stops_with_the_same_last_good_state(tmp_path):
    results = {}
    for name, optimizer in (("guard", "{name: sgd, fused: true}"), ("check", "{name: sgd, fused: false}")):
        cfg = cnnkit.load_config([QUICKSTART, SMOKE], [*DIVERGE, f"optim.optimizer={optimizer}",
                                                       f"runs_dir={tmp_path / name}"])
        result = cnnkit.fit(cfg)
        status = json.loads((result.run_dir / "status.json").read_text())
        last = torch.load(result.last_checkpoint, weights_only=True)
        results[name] = (result.status, status["step"], status["lr"], last["global_step"], last["state_dict"])
    guard, check = results["guard"], results["check"]
    assert guard[0] == check[0] == "diverged"
    assert guard[1:4] == check[1:4]  # the step it diverged at, its lr, the last good checkpoint's step
    assert guard[1] < 50  # read back before the first logging step
    for key, value in check[4].items():
        assert torch.equal(guard[4][key], value), key


def test_a_default_run_trains_with_the_fused_optimizer_and_the_guard():
    result = cnnkit.fit(cnnkit.load_config([QUICKSTART, SMOKE]))
    groups = torch.load(result.last_checkpoint, weights_only=True)["optimizer_states"][0]["param_groups"]
    assert [g["fused"] for g in groups] == [True, True]  # the quickstart's two groups (norms and biases undecayed)
