"""The course-experiment machinery: recipe matrices, analysis callbacks, reports, and every recipe."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.config.load import load_config
from cnnkit.errors import ConfigError
from cnnkit.experiments.analyses.activation_percentiles import ActivationPercentiles
from cnnkit.experiments.analyses.landscape import probe_along_gradient
from cnnkit.experiments.matrix import combinations, group_name
from cnnkit.experiments.report import build_report
from cnnkit.nn.layers.batch_stats import batch_statistics
from cnnkit.nn.layers.bn_scratch import ScratchBatchNorm
from cnnkit.registry import NORMS
from cnnkit.training.callbacks.precise_bn import recompute_bn_statistics

from .conftest import QUICKSTART, REPO, SMOKE

RECIPES = sorted(p.name[: -len(".cpu.yaml")] for p in (REPO / "recipes").glob("*.cpu.yaml"))


def write(path, text):
    path.write_text(text)
    return str(path)


def test_matrix_combinations_are_ordered_named_and_narrowed(tmp_path):
    recipe = write(
        tmp_path / "m.yaml",
        "matrix:\n  model.act: [sigmoid, relu]\n  optim.lr: [0.1, 0.5]\n"
        "  model.norm: [none, {name: bn_pre, momentum: 0.01}]\n",
    )
    cfg = load_config([recipe])
    names = [name for name, _, _ in combinations(cfg)]
    assert names[:3] == [
        "act=sigmoid+lr=0.1+norm=none",
        "act=sigmoid+lr=0.1+norm=bn_pre-momentum0.01",
        "act=sigmoid+lr=0.5+norm=none",
    ]
    assert len(names) == 8
    only = combinations(cfg, ["act=relu", "norm=none"])
    assert [n for n, _, _ in only] == ["act=relu+lr=0.1+norm=none", "act=relu+lr=0.5+norm=none"]
    assert only[0][1] == ["model.act=relu", "optim.lr=0.1", "model.norm=none"]
    with pytest.raises(ConfigError, match="'depth' is not a matrix key"):
        combinations(cfg, ["depth=3"])
    assert group_name("act=relu+seed=2+lr=0.1") == "act=relu+lr=0.1"


def test_matrix_key_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(
        ConfigError, match="matrix: key 'model.nrom' does not exist in the config \\(did you mean 'model.norm'\\?\\)"
    ):
        load_config([write(tmp_path / "m.yaml", "matrix:\n  model.nrom: [none]\n")])


def test_a_diverged_variant_is_recorded_and_the_matrix_goes_on(tmp_path):
    recipe = write(
        tmp_path / "d.yaml",
        "name: diverge\nmodel: {norm: none, act: identity}\n"
        "optim: {scheduler: constant}\nmatrix:\n  optim.lr: [1.0e+30, 0.01]\n",
    )
    results = cnnkit.fit_recipe([QUICKSTART, SMOKE, recipe], ["trainer.limit_train_batches=10"])
    assert [r.status for r in results] == ["diverged", "finished"]
    assert json.loads((results[0].run_dir / "status.json").read_text())["status"] == "diverged"
    again = cnnkit.fit_recipe([QUICKSTART, SMOKE, recipe], ["trainer.limit_train_batches=10"])
    assert [r.status for r in again] == ["diverged", "finished"]  # kept, not redone


def test_precise_bn_equals_the_exact_full_pass_statistics():
    torch.manual_seed(0)
    batches = [torch.randn(32, 4) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 5 for _ in range(6)]
    for layer in (nn.BatchNorm1d(4), ScratchBatchNorm(4)):
        model = nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 2))
        assert recompute_bn_statistics(model, iter(batches), num_batches=6) == 6
        data = torch.cat(batches)
        torch.testing.assert_close(layer.running_mean, data.mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.running_var, data.var(0, unbiased=True), atol=1e-4, rtol=1e-5)
        assert model.training  # mode restored
    plain = nn.Sequential(nn.Linear(4, 2))
    assert recompute_bn_statistics(plain, iter(batches), 6) == 0


def test_precise_bn_and_eval_modes_callbacks_in_a_fit():
    cfg = load_config(
        [QUICKSTART, SMOKE],
        [
            "model.backbone={name: mlp, hidden: [32, 32]}",
            "trainer.limit_test_batches=1.0",
            "trainer.limit_train_batches=20",
            "trainer.max_epochs=3",
            "callbacks=[{name: precise_bn, num_batches: 5}, {name: eval_modes, modes: [running, "
            "{stats: batch, batch_size: 1}, {stats: batch, batch_size: 256}, precise]}]",
        ],
    )
    result = cnnkit.fit(cfg)
    modes = json.loads((result.run_dir / "eval_modes.json").read_text())
    assert [(m["stats"], m["batch_size"]) for m in modes] == [
        ("running", 64),
        ("batch", 1),
        ("batch", 256),
        ("precise", 64),
    ]
    accuracy = {f"{m['stats']}@{m['batch_size']}": m["accuracy"] for m in modes}
    # a batch of one normalizes every feature to beta: one class for every image, i.e. that class's share
    test_labels = [int(y) for _, y in cnnkit.build_datamodule(cfg).load().test]
    shares = {round(test_labels.count(c) / len(test_labels), 6) for c in set(test_labels)}
    assert round(accuracy["batch@1"], 6) in shares
    assert accuracy["running@64"] > 0.8 and accuracy["batch@256"] > 0.8  # a trained model, large batches
    assert abs(accuracy["precise@64"] - accuracy["running@64"]) < 0.05  # the same statistics, recomputed


def test_options_that_do_nothing_without_bn_warn_and_go_on():
    cfg = load_config(
        [QUICKSTART, SMOKE],
        ["model.norm=none", "callbacks=[precise_bn]", "eval_stats=batch", "distributed.sync_bn=true"],
    )
    with pytest.warns(UserWarning) as record:
        assert cnnkit.fit(cfg).status == "finished"
    messages = {str(w.message) for w in record}
    assert "precise_bn: the model has no BatchNorm layer; nothing to recompute" in messages
    assert "cnnkit: eval_stats: batch (the model has no BatchNorm layer) has no effect here" in messages
    assert "cnnkit: distributed.sync_bn (the model has no BatchNorm layer) has no effect here" in messages


def test_bn_at_eval_batch_one_predicts_a_constant():
    model = cnnkit.build_model(load_config([], ["model.backbone=mlp", "model.norm=bn_pre"]))
    model.train()
    model(torch.rand(64, 1, 8, 8))  # some running statistics
    model.eval()
    inputs = torch.rand(5, 1, 8, 8)
    with batch_statistics(model):
        outputs = torch.cat([model(x[None]) for x in inputs])
    assert torch.allclose(outputs, outputs[:1].expand_as(outputs), atol=1e-5)
    assert not torch.allclose(model(inputs), model(inputs)[:1].expand(5, -1))


def test_landscape_probe_on_a_quadratic_with_known_beta():
    curvature = torch.tensor([1.0, 10.0])
    theta = torch.tensor([0.0, 1.0], requires_grad=True)  # the gradient points along the stiff axis

    def loss_and_grad():
        loss = 0.5 * (curvature * theta * theta).sum()
        return loss.detach(), list(torch.autograd.grad(loss, [theta]))

    lr, multipliers = 0.01, [0.5, 1.0, 2.0]
    result = probe_along_gradient(loss_and_grad, [theta], lr, multipliers)
    assert result["beta"] == pytest.approx(10.0, rel=1e-5)
    losses = [0.5 * 10 * (1 - 10 * m * lr) ** 2 for m in multipliers]
    assert result["loss_min"] == pytest.approx(min(losses)) and result["loss_max"] == pytest.approx(max(losses))
    assert result["grad_change_max"] == pytest.approx(10 * 10 * 2.0 * lr, rel=1e-5)
    assert torch.equal(theta.detach(), torch.tensor([0.0, 1.0]))  # restored


def test_activation_percentiles_of_a_known_distribution():
    class Probe(nn.Module):
        device = torch.device("cpu")

        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Identity())

        def forward(self, x):
            return self.model(x)

    callback = ActivationPercentiles(module="model.0", unit=0)
    callback.probe = torch.arange(101.0).reshape(101, 1)
    trainer = SimpleNamespace(global_step=7, default_root_dir=None, ckpt_path=None)
    callback._record(trainer, Probe())
    (row,) = callback.rows.rows
    assert row["step"] == 7
    assert [row["p15"], row["p50"], row["p85"]] == pytest.approx([15.0, 50.0, 85.0], abs=1e-5)


def test_hessian_lr_and_loss_surface_on_logistic_regression():
    cfg = load_config(
        [str(REPO / "recipes" / "error_surface.cpu.yaml"), SMOKE],
        ["model.norm=none", "trainer.max_epochs=3", "matrix={}"],
    )
    result = cnnkit.fit(cfg)
    hessian = json.loads((result.run_dir / "hessian.json").read_text())
    train = cnnkit.build_datamodule(cfg).load().train.images
    expected = torch.linalg.eigvalsh(0.25 * train.T.double() @ train.double() / len(train))  # p = 1/2 at w = 0
    assert hessian["lambda_max"] == pytest.approx(float(expected.max()), rel=1e-4)
    assert hessian["condition_number"] > 1000 and hessian["lr"] == pytest.approx(0.9 * 2 / hessian["lambda_max"])
    surface = json.loads((result.run_dir / "surface.json").read_text())
    assert len(surface["loss"]) == len(surface["w2"]) == 61 and len(surface["loss"][0]) == 61
    first = (result.run_dir / "trajectory.csv").read_text().splitlines()[1].split(",")
    assert float(first[3]) == pytest.approx(math.log(2), rel=1e-5)  # w = 0: p = 1/2 for every sample


def test_noisy_bn_is_noisy_in_training_only():
    torch.manual_seed(0)
    layer = NORMS.build("noisy_bn").make(4, 2)
    x = torch.randn(8, 4, 3, 3)
    assert not torch.allclose(layer(x), layer[0](x))
    layer.eval()
    assert torch.allclose(layer(x), layer[0](x))


def test_report_renders_from_a_small_run(tmp_path):
    recipe = write(
        tmp_path / "r.yaml",
        "name: tiny\nmodel: {backbone: {name: mlp, hidden: [16]}, act: sigmoid}\n"
        "callbacks: [{name: activation_percentiles, every_n_steps: 1}, "
        "{name: landscape, every_n_steps: 1, multipliers: [1, 2]}]\n"
        "matrix:\n  model.norm: [none, bn_pre]\n  seed: [0, 1]\n",
    )
    cnnkit.fit_recipe([QUICKSTART, SMOKE, recipe])
    report = build_report(Path("runs/smoke/tiny"))
    text = report.read_text()
    assert "| norm=none [limited] | 2 |" in text and "| norm=bn_pre [limited] | 2 |" in text
    assert "range of the median" in text and "Landscape probes" in text
    for figure in ("curves.png", "final.png", "confusion.png", "activations.png", "landscape.png"):
        assert (report.parent / figure).stat().st_size > 1000, figure


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_full_scale_recipe_loads_and_its_model_builds_without_data(recipe):
    cfg = load_config([str(REPO / "recipes" / f"{recipe}.yaml")])
    assert cfg.name == recipe and cfg.matrix
    for _, overrides, _ in combinations(cfg)[:4]:
        variant = load_config([str(REPO / "recipes" / f"{recipe}.yaml")], overrides)
        assert cnnkit.describe(variant)["totals"]["params"] > 0


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_runs_under_the_smoke_overlay(recipe):
    files = [str(REPO / "recipes" / f"{recipe}.cpu.yaml"), SMOKE]
    cfg = load_config(files)
    overrides = ["matrix.seed=[0]"] if "seed" in cfg.matrix else []
    results = cnnkit.fit_recipe(files, overrides)
    # no recipe diverges in 3 smoke batches (E3/E5's large learning rates need the full reduced run)
    assert results and [r.status for r in results] == ["finished"] * len(results)
    assert build_report(Path("runs/smoke") / recipe).is_file()


def test_report_adds_its_figures_to_the_runs_wandb_runs_only_when_asked_and_once(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    recipe = write(
        tmp_path / "w.yaml", "name: wb\nlogger: {wandb: {mode: offline}}\nmatrix:\n  model.norm: [none, bn_pre]\n"
    )
    results = cnnkit.fit_recipe([QUICKSTART, SMOKE, recipe], ["logger.wandb.mode=offline"])

    def offline(result):
        return sorted((result.run_dir / "wandb").glob("offline-run-*"))

    build_report(Path("runs/smoke/wb"))  # the default: local files only, no W&B session
    assert [len(offline(r)) for r in results] == [1, 1]
    for _ in range(2):  # asked twice with nothing new: the second call starts no W&B run
        build_report(Path("runs/smoke/wb"), log_to_wandb=True)
    for result in results:
        run_id = (result.run_dir / "wandb_id").read_text().strip()
        # training, then the report's figures, under the same run id (wandb names offline directories by
        # second and id, adding "-1" when two start within one second)
        assert len(offline(result)) == 2 and all(f"-{run_id}" in p.name for p in offline(result))
        assert any(list(p.glob("files/media/images/report/*.png")) for p in offline(result))
