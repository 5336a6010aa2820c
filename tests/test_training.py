"""End-to-end training through the Python API, in-process, on a few digits batches."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

import cnnkit
from cnnkit.errors import CheckpointError, CnnkitError
from cnnkit.nn.layers.input_norm import InputStandardize

from .conftest import REPO, edited_recipe, tiny_config


def rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_fit_writes_a_complete_run_directory():
    result = cnnkit.fit(tiny_config())
    run = Path("runs/smoke/quickstart/default")
    assert result.status == "finished" and result.run_dir == run
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert (run / "config.yaml").is_file() and (run / "metrics.csv").is_file()
    assert result.last_checkpoint == run / "checkpoints" / "last.ckpt" and result.best_checkpoint.is_file()
    assert {"val/acc", "test/acc", "train/loss_epoch"} <= set(result.metrics)
    loaded = cnnkit.load_config([str(run / "config.yaml")])
    assert loaded.model.norm == "bn_pre"


def test_checkpoint_is_plain_data_with_config_and_class_names():
    result = cnnkit.fit(tiny_config())
    checkpoint = torch.load(result.last_checkpoint, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["config"]["model"]["norm"] == "bn_pre" and hparams["config"]["schema_version"] == 1
    assert hparams["data_info"]["class_names"] == [str(i) for i in range(10)]
    assert checkpoint["cnnkit"]["schema_version"] == 1
    mean = checkpoint["state_dict"]["model.input_norm.mean"]
    assert 0.2 < float(mean) < 0.4  # digits' train-split mean pixel, saved with the weights


def test_existing_run_directory_is_kept_refused_or_overwritten():
    first = cnnkit.fit(tiny_config())
    assert cnnkit.fit(tiny_config()).kept  # same config: the finished run is the answer
    edited = tiny_config(files=edited_recipe("trainer: {max_epochs: 2}"))  # the recipe changed after its run
    with pytest.raises(CnnkitError, match="was made with another config.*trainer.max_epochs 1 → 2"):
        cnnkit.fit(edited)
    again = cnnkit.fit(edited, overwrite=True)
    assert again.status == "finished" and not again.kept and again.run_dir == first.run_dir
    (first.run_dir / "status.json").write_text('{"status": "failed"}')
    with pytest.raises(CnnkitError, match="already holds a failed run; resume it with --ckpt last"):
        cnnkit.fit(edited)


def test_run_directory_path_that_is_a_file_is_refused():
    Path("runs").write_text("")
    with pytest.raises(CnnkitError, match="exists and is a file"):
        cnnkit.fit(tiny_config())


def test_resume_keeps_metrics_history_and_appends():
    overrides = ["trainer.limit_train_batches=4", "trainer.log_every_n_steps=1", "optim.scheduler=step"]
    files = edited_recipe("trainer: {max_epochs: 2}")
    first = cnnkit.fit(tiny_config(*overrides, files=files))
    before = rows(first.run_dir / "metrics.csv")
    (resumed,) = cnnkit.fit_recipe(files, [*overrides, "trainer.max_epochs=3"], ckpt="last")  # the run it extends
    assert resumed.run_dir == first.run_dir
    after = rows(resumed.run_dir / "metrics.csv")
    assert after[: len(before) - sum(1 for r in before if r.get("test/acc"))] == [
        r for r in before if not r.get("test/acc")
    ]
    epochs = sorted({int(r["epoch"]) for r in after if r.get("val/acc")})
    assert epochs == [0, 1, 2]
    train_steps = [int(r["step"]) for r in after if r.get("train/loss_step")]
    assert train_steps == sorted(set(train_steps))  # no step logged twice
    assert torch.load(resumed.last_checkpoint, weights_only=True)["global_step"] == 12


def test_resume_from_a_checkpoint_of_another_model_names_the_keys():
    first = cnnkit.fit(tiny_config())
    with pytest.raises(
        CheckpointError,
        match=r"was trained with another config \(model.backbone "
        r"simple_cnn\(channels=\[32,64\],hidden=\[128\]\) → mlp\)",
    ):
        cnnkit.fit(tiny_config("model.backbone=mlp"), ckpt=str(first.last_checkpoint))
    with pytest.raises(CheckpointError, match=r"does not fit the configured model \(missing: model.backbone"):
        cnnkit.evaluate("test", str(first.last_checkpoint), overrides=["model.backbone=mlp"])


def test_init_from_copies_fitting_weights():
    source = cnnkit.fit(tiny_config())
    weights = torch.load(source.last_checkpoint, weights_only=True)["state_dict"]
    cfg = tiny_config("variant=finetune", "trainer.limit_train_batches=1", "optim.lr=1e-9")
    tuned = cnnkit.fit(cfg, init_from=str(source.last_checkpoint))
    after = torch.load(tuned.last_checkpoint, weights_only=True)["state_dict"]
    key = "model.backbone.0.0.conv.weight"
    assert torch.allclose(after[key], weights[key], atol=1e-6)


def test_divergence_stops_the_run_and_marks_it():
    cfg = tiny_config(
        "model.norm=none",
        "model.act=identity",
        "optim.lr=1e30",
        "optim.scheduler=constant",
        "trainer.limit_train_batches=20",
        "variant=diverges",
    )
    result = cnnkit.fit(cfg)
    assert result.status == "diverged" and result.diverged["lr"] == 1e30
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "diverged" and status["step"] == result.diverged["step"]
    assert "non-finite training loss" in status["reason"]


def test_eval_with_batch_statistics_differs_from_running_statistics():
    result = cnnkit.fit(tiny_config("trainer.limit_train_batches=1.0", "trainer.max_epochs=2"))
    full_test = ["trainer.limit_test_batches=1.0"]
    running = cnnkit.evaluate("test", str(result.last_checkpoint), overrides=full_test)
    batch_one = cnnkit.evaluate(
        "test", str(result.last_checkpoint), overrides=full_test + ["eval_stats=batch", "data.eval_batch_size=1"]
    )
    assert running["test/acc"] > 0.8
    # a batch of one normalizes every feature map to beta: the prediction ignores the input
    assert batch_one["test/acc"] < running["test/acc"]


def _onecycle(total):
    """torch's own OneCycleLR with cnnkit's defaults: the reference for the onecycle schedule."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.01, total_steps=total, pct_start=0.25, div_factor=25.0, final_div_factor=1e4
    )
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        reference.step()
    return rates


# the learning rate of each of the 6 steps (2 epochs x 3 batches), from each schedule's formula
SCHEDULES = {
    "{name: step, step_epochs: 1}": [0.01 * 0.1 ** (s // 3) for s in range(6)],
    "{name: cosine, warmup_steps: 2}": [
        0.01 * (s + 1) / 2 if s < 2 else 0.01 * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4)) for s in range(6)
    ],
    "onecycle": _onecycle(6),
    "constant": [0.01] * 6,
}


@pytest.mark.parametrize(
    "optimizer, scheduler",
    [
        ("{name: sgd, momentum: 0.9, nesterov: true}", "{name: step, step_epochs: 1}"),
        ("adam", "{name: cosine, warmup_steps: 2}"),
        ("adamw", "onecycle"),
        ("sgd", "constant"),
    ],
)
def test_optimizers_and_schedulers(optimizer, scheduler):
    cfg = tiny_config(
        f"optim.optimizer={optimizer}",
        f"optim.scheduler={scheduler}",
        "optim.lr=0.01",
        "trainer.max_epochs=2",
        "optim.weight_decay=1e-4",
        "optim.no_decay_norm_bias=true",
        "loss.label_smoothing=0.1",
        "trainer.gradient_clip_val=1.0",
        "trainer.log_every_n_steps=1",
        "callbacks=[{name: lr_monitor, logging_interval: step}, "
        "{name: early_stopping, monitor: val/acc, mode: max, patience: 5}]",
    )
    result = cnnkit.fit(cfg)
    assert result.status == "finished"
    logged = rows(result.run_dir / "metrics.csv")
    column = sorted(k for k in logged[0] if k.startswith("lr-"))[0]  # both parameter groups share the rate
    rates = [float(r[column]) for r in logged if r.get(column)]
    assert rates == pytest.approx(SCHEDULES[scheduler], rel=1e-6)


def test_parameter_groups_exempt_norm_and_bias():
    from cnnkit.training.optim import parameter_groups

    model = cnnkit.build_model(tiny_config())
    decay, no_decay = parameter_groups(model, 1e-4, True)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0


def test_build_model_sets_no_statistics_and_uses_the_dataset_shape():
    model = cnnkit.build_model(tiny_config())
    assert isinstance(model.input_norm, InputStandardize)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def _readme_norm_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Add your own layer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_user_norm_trains_by_name_from_imports(tmp_path):
    (tmp_path / "my_norms.py").write_text(_readme_norm_example())
    cfg = tiny_config("imports=[my_norms.py]", "model.norm=instance_pre", "variant=mine")
    result = cnnkit.fit(cfg)
    assert result.status == "finished"
    model = cnnkit.build_model(cfg)
    assert type(model.backbone[0][0].norm).__name__ == "InstanceNorm2d"


def test_wandb_offline_run_is_written_and_finished(monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    result = cnnkit.fit(tiny_config("logger.wandb.mode=auto", "logger.wandb.tags=[test]"))
    assert result.status == "finished"
    assert list((result.run_dir / "wandb").glob("offline-run-*"))
    assert wandb.run is None  # finished, so a next run in this process starts fresh


def test_example_file_is_the_readme_example():
    assert (REPO / "examples" / "my_norms.py").read_text() == _readme_norm_example()
