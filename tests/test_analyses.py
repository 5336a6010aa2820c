"""Course analyses as units: found by module, drawn by the report, and the BN running-statistics gap."""

from __future__ import annotations

import copy
import csv
import importlib
import re

import pytest
import torch

import cnnkit
from cnnkit.experiments import analyses
from cnnkit.experiments.analyses.running_stats_gap import gaps, population_moments
from cnnkit.experiments.report import build_report
from cnnkit.registry import ANALYSES, CALLBACKS
from cnnkit.training.callbacks.precise_bn import recompute_bn_statistics

from .conftest import REPO, tiny_config

GAP = "callbacks=[{name: running_stats_gap}]"
SHORT = ("trainer.limit_train_batches=6", "trainer.max_epochs=2", "trainer.limit_val_batches=null")


@pytest.mark.parametrize("name", analyses.names())
def test_every_analysis_module_is_a_report_unit_and_its_callback_is_registered_under_its_name(name):
    import cnnkit.training.callbacks  # noqa: F401  (registers the callbacks)

    unit = ANALYSES.get(name)
    assert unit.name == name and unit.files and unit in analyses.units()
    module = importlib.import_module(f"cnnkit.experiments.analyses.{name}")
    assert unit is module.ANALYSIS
    assert analyses.has_callback(name) == hasattr(module, "Callback")  # read from the source: nothing imported
    if hasattr(module, "Callback"):  # the callback of a recipe's entry, by module name
        assert CALLBACKS.get(name) is module.Callback
    else:  # a unit of what every run writes: no callback to add
        assert name not in CALLBACKS


def test_the_report_opens_with_the_units_of_what_every_run_writes_and_names_no_analysis():
    assert [u.name for u in analyses.units()][:3] == ["curves", "final", "confusion"]
    report = (REPO / "cnnkit" / "experiments" / "report.py").read_text()
    assert not re.search(
        r"hessian|activations\.csv|landscape|eval_modes|percentile|surface|trajectory|curves\.png|"
        r"final\.png|confusion",
        report,
    )


def _fit(*overrides):
    result = cnnkit.fit(tiny_config(*SHORT, *overrides))
    assert result.status == "finished"
    return result


def _metrics(run_dir):
    return (run_dir / "metrics.csv").read_text()


def test_the_gap_analysis_changes_no_number_of_the_run(tmp_path):
    dropout = "model.backbone.dropout=0.3"  # a pass in train mode would draw from dropout's RNG
    plain = _fit("variant=plain", dropout)
    probed = _fit("variant=probed", dropout, GAP)
    assert _metrics(probed.run_dir) == _metrics(plain.run_dir)
    ours = torch.load(probed.run_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    theirs = torch.load(plain.run_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert ours.keys() == theirs.keys()
    for key in ours:  # parameters and every BN buffer, num_batches_tracked included
        assert torch.equal(ours[key], theirs[key]), key


def test_the_gap_is_measured_against_exact_population_statistics(tmp_path):
    cfg = tiny_config(*SHORT, GAP)
    result = cnnkit.fit(cfg)
    with open(result.run_dir / "running_stats_gap.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [6, 12]  # one row per validation, none for the sanity check
    datamodule = cnnkit.build_datamodule(cfg)
    model = cnnkit.build_module(cfg, cnnkit.data_info(cfg)).model
    state = torch.load(result.run_dir / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
    bn_names = [name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bn_names and set(rows[-1]) == {"step"} | {f"{n}/{k}" for n in bn_names for k in ("mean_gap", "var_gap")}
    # reference: precise BN on a copy over every training input (train mode, batches of the training batch)
    inputs = list(datamodule.load().train.inputs(cfg.data.batch_size))
    reference = copy.deepcopy(model)
    recompute_bn_statistics(reference, inputs, len(inputs))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    population = population_moments(model, inputs)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # no buffer moved
    layers, exact = dict(model.named_modules()), dict(reference.named_modules())
    for name in bn_names:
        torch.testing.assert_close(population[name].mean.float(), exact[name].running_mean)
        mean_gap, var_gap = gaps(layers[name], population[name])
        expected = (
            (layers[name].running_mean - exact[name].running_mean).abs() / exact[name].running_var.sqrt()
        ).mean()
        assert mean_gap == pytest.approx(float(expected), rel=1e-3)
        assert mean_gap == pytest.approx(float(rows[-1][f"{name}/mean_gap"]), rel=1e-6)
        assert var_gap == pytest.approx(float(rows[-1][f"{name}/var_gap"]), rel=1e-6)
        assert var_gap > 0


def test_the_report_draws_the_gap_per_layer_and_tables_it_per_variant(tmp_path):
    _fit("variant=a", GAP)
    _fit("variant=b", GAP, "model.norm={name: bn_pre, momentum: 0.5}")
    text = build_report(tmp_path / "runs/smoke/quickstart", log_to_wandb=False).read_text()
    table = text.split("## BN running statistics vs the population")[1]
    assert re.search(r"\| a \[limited\] \| \d\.\d{4} \| \d\.\d{4} \| [\w.]+norm: \d\.\d{4} \|", table)
    assert "| b [limited] |" in table
    assert (tmp_path / "runs/smoke/quickstart/running_stats_gap.png").stat().st_size > 10_000
    assert "![running_stats_gap.png](running_stats_gap.png)" in text


def test_the_loss_analyses_measure_the_training_objective_label_smoothing_included(monkeypatch):
    """Landscape probes, the Hessian and the error surface evaluate the loss training minimizes: with label
    smoothing on, their loss at the start point is the training loss on the same data, not plain cross-entropy."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from cnnkit.experiments.analyses import _full_batch, hessian_lr, landscape

    cfg = tiny_config("loss.label_smoothing=0.1", "model.norm=none", "model.backbone={name: mlp, hidden: [8]}")
    datamodule = cnnkit.build_datamodule(cfg)
    module = cnnkit.build_module(cfg, datamodule.info)
    x, y = _full_batch.train_tensors(SimpleNamespace(datamodule=datamodule), torch.device("cpu"))
    with torch.no_grad():
        trained = float(module.loss(module(x), y))
        assert trained == pytest.approx(float(F.cross_entropy(module(x), y, label_smoothing=0.1)))
        assert abs(trained - float(module.evaluation_loss(module(x), y))) > 1e-3  # smoothing changes the number
    trainer = SimpleNamespace(
        global_step=0, datamodule=datamodule, callbacks=[], optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])]
    )

    probes = landscape.LandscapeProbes(every_n_steps=1, multipliers=[1])
    probes.on_train_batch_start(trainer, module, (x, y), 0)
    assert probes.rows.rows[0]["loss"] == pytest.approx(trained, rel=1e-6)

    seen = []
    original = torch.autograd.functional.hessian

    def recording(loss, flat):
        seen.append(float(loss(flat)))
        return original(loss, flat)

    monkeypatch.setattr(hessian_lr.torch.autograd.functional, "hessian", recording)
    hessian_lr.HessianLR(set_lr=False, max_params=1000).on_train_start(trainer, module)
    assert seen == [pytest.approx(trained, rel=1e-6)]
