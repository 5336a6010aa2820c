"""A run's lifecycle: last.ckpt is the last state, reruns notice a changed config, variants follow
overrides, a finished run trains on only where its schedule allows."""

import json
import re
from pathlib import Path

import pytest
import torch

import cnnkit
from cnnkit.config.load import load_config
from cnnkit.errors import CnnkitError

from .conftest import QUICKSTART, REPO, SMOKE, cli, edited_recipe, tiny_config

FEW = ["trainer.limit_train_batches=3", "trainer.max_epochs=4", "trainer.log_every_n_steps=1"]


def test_last_checkpoint_is_the_final_state_when_the_best_is_early():
    # the quickstart's own checkpoint settings (no every_n_steps), with a monitored value that only the
    # first epoch can improve: Lightning 2.6's save_last would leave last.ckpt at that epoch
    cfg = tiny_config(*FEW, "checkpoint.monitor=epoch", "checkpoint.mode=min")
    result = cnnkit.fit(cfg)
    last = torch.load(result.last_checkpoint, weights_only=True)
    assert last["global_step"] == 12 and last["epoch"] == 3
    assert torch.load(result.best_checkpoint, weights_only=True)["global_step"] == 3
    assert result.last_checkpoint == result.run_dir / "checkpoints/last.ckpt"
    again = cnnkit.evaluate(
        "validate", "last", [QUICKSTART, SMOKE], [*FEW, "checkpoint.monitor=epoch", "checkpoint.mode=min"]
    )
    assert again["val/acc"] == pytest.approx(result.metrics["val/acc"], abs=1e-6)
    assert again["val/loss"] == pytest.approx(result.metrics["val/loss"], rel=1e-5)


def test_a_step_save_at_the_epochs_last_step_is_replaced_by_the_end_of_epoch_state():
    result = cnnkit.fit(tiny_config(*FEW, "checkpoint.every_n_steps=3"))  # 3 steps per epoch
    last = torch.load(result.last_checkpoint, weights_only=True)
    loop = last["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert last["global_step"] == 12 and loop["processed"] == 4  # after the epoch's end, not before validation


@pytest.mark.parametrize(
    "scheduler, extends",
    [
        ("constant", True),
        ("{name: step, step_epochs: 1, gamma: 0.5}", True),
        ("cosine", False),
        ("onecycle", False),
    ],
)
def test_a_finished_run_trains_on_only_where_its_schedule_allows(scheduler, extends):
    short = tiny_config("trainer.limit_train_batches=3", f"optim.scheduler={scheduler}")
    first = cnnkit.fit(short)
    longer = ["trainer.limit_train_batches=3", f"optim.scheduler={scheduler}", "trainer.max_epochs=2"]
    assert tiny_config(*longer).variant != short.variant  # a new length names a new run...
    if not extends:
        with pytest.raises(
            CnnkitError,
            match=r"laid out over the run's length \(trainer.max_epochs 1 → 2\), so "
            r"changing the length would jump its learning rate",
        ):
            cnnkit.fit_recipe([QUICKSTART, SMOKE], longer, ckpt="last")
        assert torch.load(first.last_checkpoint, weights_only=True)["global_step"] == 3  # untouched
        return
    (result,) = cnnkit.fit_recipe([QUICKSTART, SMOKE], longer, ckpt="last")  # ...and resumes the run it extends
    assert result.run_dir == first.run_dir
    checkpoint = torch.load(result.last_checkpoint, weights_only=True)
    assert result.status == "finished" and checkpoint["global_step"] == 6 and checkpoint["epoch"] == 1
    lr = checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.05 * (0.25 if "step" in scheduler else 1.0))  # the schedule went on


def test_a_finished_run_with_the_same_config_is_kept_and_with_another_is_refused_naming_the_keys():
    first = cnnkit.fit(tiny_config())
    stamp = (first.run_dir / "metrics.csv").stat().st_mtime_ns
    again = cnnkit.fit(tiny_config("trainer.progress_bar=tqdm", "logger.wandb.mode=disabled"))  # neutral keys
    assert again.kept and again.metrics == first.metrics
    assert (first.run_dir / "metrics.csv").stat().st_mtime_ns == stamp
    # the remedy that keeps the finished run comes first; the one that deletes it says so
    with pytest.raises(
        CnnkitError,
        match=r"was made with another config.*trainer.limit_train_batches 3 → 5; keep "
        r"it and train this config as a new run with name=<new name>, or replace "
        r"it with --overwrite \(which deletes it\)",
    ):
        cnnkit.fit(tiny_config(files=edited_recipe("trainer: {limit_train_batches: 5}")))
    with pytest.raises(CnnkitError, match=r"will not resume it with this one: trainer.limit_val_batches 2 → 1"):
        cnnkit.fit_recipe(edited_recipe("trainer: {limit_val_batches: 1}"), ["trainer.max_epochs=2"], ckpt="last")


def write_recipe(path: Path, seeds: str, lr: float = 0.05) -> str:
    path.write_text(
        f"include: [{QUICKSTART}]\nname: seeds\ntrainer: {{max_epochs: 1}}\noptim: {{lr: {lr}}}\n"
        f"matrix:\n  seed: {seeds}\n"
    )
    return str(path)


def test_smoke_runs_live_apart_an_edited_recipe_is_refused_before_anything_trains_and_a_new_seed_keeps_the_old(
    tmp_path,
):
    recipe = write_recipe(tmp_path / "r.yaml", "[0]")
    smoke = cnnkit.fit_recipe([recipe, SMOKE])
    assert [r.status for r in smoke] == ["finished"]
    assert smoke[0].run_dir == Path("runs/smoke/seeds/seed=0")  # the full recipe's runs go to runs/seeds/
    assert load_config([recipe]).runs_dir == "runs"
    stamp = (smoke[0].run_dir / "status.json").read_text()
    with pytest.raises(
        CnnkitError,
        match=r"runs/smoke/seeds/seed=0' \(finished\) was made with another config, .*: "
        r"optim.lr 0.05 → 0.1",
    ):
        cnnkit.fit_recipe([write_recipe(tmp_path / "r.yaml", "[0]", lr=0.1), SMOKE])
    assert (smoke[0].run_dir / "status.json").read_text() == stamp  # nothing retrained
    recipe = write_recipe(tmp_path / "r.yaml", "[0, 1]")
    grown = cnnkit.fit_recipe([recipe, SMOKE])
    assert [r.kept for r in grown] == [True, False]
    assert [r.status for r in grown] == ["finished", "finished"]
    from cnnkit.experiments.report import build_report

    text = build_report(tmp_path / "runs/smoke/seeds", log_to_wandb=False).read_text()
    assert "**2 of 2 runs are limited** (limit_train_batches=3" in text and "| default [limited] |" in text


def test_the_variant_is_named_from_the_overrides_that_change_a_result():
    assert tiny_config().variant == "default"
    assert (
        tiny_config("model.norm=bn_post", "model.act=sigmoid", "optim.lr=0.5").variant
        == "norm=bn_post+act=sigmoid+lr=0.5"
    )
    assert tiny_config("optim.lr=0.5", "model.norm=bn_post").variant == "norm=bn_post+lr=0.5"  # fixed order
    how = ("trainer.devices=1", "checkpoint.every_n_steps=5", "trainer.num_nodes=1")
    assert tiny_config(*how).variant == "default"
    # a shorter or limited run never shares the full run's directory
    assert (
        tiny_config("trainer.max_epochs=2", "trainer.limit_val_batches=1").variant == "max_epochs=2+limit_val_batches=1"
    )
    assert tiny_config("model.norm=gn", "variant=mine").variant == "mine"
    long = tiny_config(
        "model.backbone={name: simple_cnn, channels: [8, 16], hidden: [32], dropout: 0.3}",
        "data.augment=[random_crop, horizontal_flip, cutout]",
        "optim.scheduler=cosine",
    ).variant
    assert len(long) <= 80 and re.fullmatch(r"backbone=simple_cnn-channels8-16-hidden32-dropout0.3-[0-9a-f]{8}", long)
    from omegaconf import OmegaConf

    from cnnkit.config.naming import variant_from_overrides

    cfg = OmegaConf.create({"imports": ["plugins/a b.py"]})
    assert variant_from_overrides(["imports=[plugins/a b.py]"], cfg) == "imports=plugins_a_b.py"  # one directory


def test_a_refused_rerun_is_quick_and_imports_no_torch(tmp_path):
    import subprocess
    import sys
    import time

    first = cli("fit", "--config", QUICKSTART, "--config", SMOKE)
    assert first.returncode == 0, first.stderr[-2000:]
    edited = edited_recipe("trainer: {max_epochs: 2}")
    probe = (
        "import sys, time; from cnnkit.cli import main; t = time.perf_counter(); "
        f"code = main(['fit', '--config', {edited[0]!r}, '--config', {edited[1]!r}, '--config', {edited[2]!r}]); "
        "print(code, 'torch' in sys.modules, time.perf_counter() - t)"
    )
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    code, imported, _ = proc.stdout.split()
    assert (code, imported) == ("2", "False"), proc.stderr
    assert "trainer.max_epochs 1 → 2" in proc.stderr
    assert time.perf_counter() - start < 5  # the whole process, start-up included


def test_status_is_written_by_one_class_and_lightnings_private_logger_is_read_in_one_place():
    sources = {p: p.read_text() for p in (REPO / "cnnkit").rglob("*.py")}
    writers = [p.name for p, text in sources.items() if re.search(r"(write_text|atomic_write_text)\([^)]*status", text)]
    assert writers == ["lifecycle.py"]
    assert [p.name for p, text in sources.items() if "_logger_connector" in text] == ["lightning_adapter.py"]
    assert not [p for p, text in sources.items() if "callbacks" in p.parts and "status.json" in text]


def test_the_step_loss_is_logged_exactly_on_lightnings_logging_steps():
    """Fails if Lightning moves the private flag lightning_adapter reads (every step would be logged)."""
    import csv

    result = cnnkit.fit(tiny_config("trainer.limit_train_batches=10", "trainer.log_every_n_steps=4"))
    with open(result.run_dir / "metrics.csv") as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss_step")]
    assert steps == [3, 7]


def test_confusion_matrix_is_written_by_the_module_into_its_run():
    result = cnnkit.fit(tiny_config())
    confusion = json.loads((result.run_dir / "confusion.json").read_text())
    assert confusion["class_names"] == [str(i) for i in range(10)]
    assert sum(map(sum, confusion["matrix"])) > 0
    (result.run_dir / "confusion.json").unlink()
    cnnkit.evaluate("test", str(result.run_dir / "checkpoints" / "last.ckpt"))  # outside a fit: no run directory
    assert not (result.run_dir / "confusion.json").exists()


def test_the_module_is_given_its_run_directory_and_says_how_it_diverges():
    from cnnkit.runs.divergence import WatchesDivergence
    from cnnkit.runs.lifecycle import RunLifecycle
    from cnnkit.runs.run_dir import RunDir

    cfg = tiny_config()
    module = cnnkit.build_module(cfg, cnnkit.data_info(cfg), run_dir=Path("runs/x/y"))
    assert module.run_dir == Path("runs/x/y") and "run_dir" not in module.hparams  # checkpoints stay plain data
    assert isinstance(module, WatchesDivergence) and module.divergence is None
    lifecycle = RunLifecycle(RunDir(Path("runs/x/y")), checkpoint_io=None)
    with pytest.raises(TypeError, match="does not signal divergence"):
        lifecycle.on_fit_start(None, torch.nn.Linear(1, 1))


def test_a_shorter_length_on_a_finished_run_changes_nothing():
    files = edited_recipe("trainer: {max_epochs: 2}")
    first = cnnkit.fit(tiny_config("optim.scheduler=constant", files=files))
    stored, status = (first.run_dir / "config.yaml").read_text(), (first.run_dir / "status.json").read_text()
    (again,) = cnnkit.fit_recipe(files, ["optim.scheduler=constant", "trainer.max_epochs=1"], ckpt="last")
    assert again.kept and again.metrics == first.metrics
    assert (first.run_dir / "config.yaml").read_text() == stored
    assert (first.run_dir / "status.json").read_text() == status


def test_resuming_a_checkpoint_of_another_config_is_refused_pointing_to_init_from():
    from cnnkit.errors import CheckpointError

    other = cnnkit.fit(tiny_config())
    with pytest.raises(
        CheckpointError,
        match=r"was trained with another config \(optim.lr 0.05 → 0.2\); "
        r"--ckpt resumes that run as it was: .* use --init-from",
    ):
        cnnkit.fit(tiny_config("optim.lr=0.2"), ckpt=str(other.last_checkpoint))
    assert not (other.run_dir.parent / "lr=0.2").exists()


def test_a_run_started_from_other_weights_is_not_kept_for_a_run_without_them():
    source = cnnkit.fit(tiny_config())
    warm = cnnkit.fit(tiny_config("seed=1"), init_from=str(source.last_checkpoint))
    assert json.loads((warm.run_dir / "status.json").read_text())["init_from"] == str(source.last_checkpoint)
    assert cnnkit.fit(tiny_config("seed=1"), init_from=str(source.last_checkpoint)).kept
    with pytest.raises(CnnkitError, match=r"--init-from .*last.ckpt → null"):
        cnnkit.fit(tiny_config("seed=1"))


def test_names_ignore_the_command_lines_order_and_read_resolved_values():

    assert tiny_config("model.act=sigmoid", "model.norm=bn_post").variant == "norm=bn_post+act=sigmoid"
    assert tiny_config("optim.weight_decay=${optim.lr}").variant == "weight_decay=0.05"
    assert tiny_config("model.norm.name=gn").variant == "norm=gn"
    fast = load_config([str(REPO / "recipes/cifar10_fast.yaml")], ["data.dataset.download=true"], validate_config=False)
    assert fast.variant == "default"  # whether data may be downloaded names nothing


def test_every_rank_reaches_the_same_verdict_from_the_run_files():
    from cnnkit.runs.run_dir import CONTINUE, KEEP, NEW, RunDir

    cfg = tiny_config()
    result = cnnkit.fit(cfg)
    run = RunDir(result.run_dir)
    for first_rank in (True, False):  # e.g. a requeued job's leftover hpc checkpoint: nothing to do, on every rank
        assert run.verdict(cfg, resume=True, overwrite=False, first_rank=first_rank) == KEEP
        with pytest.raises(CnnkitError, match="trainer.limit_val_batches 2 → 1"):
            run.verdict(
                tiny_config("trainer.limit_val_batches=1"), resume=False, overwrite=False, first_rank=first_rank
            )
    status = json.loads(run.status_file.read_text())
    run.status_file.write_text(json.dumps({**status, "status": "running", "pid": 1, "host": "elsewhere"}))
    assert run.verdict(cfg, resume=False, overwrite=False, first_rank=False) == NEW  # rank 0 wrote it for this job
    assert run.verdict(cfg, resume=True, overwrite=False, first_rank=False) == CONTINUE
    run.status_file.write_text(json.dumps({"status": "interrupted", "step": 2}))
    result.last_checkpoint.unlink()
    assert run.verdict(cfg, resume=False, overwrite=False) == NEW  # stopped before its first save: start over


def test_a_stale_preemption_checkpoint_is_not_resumed():
    import os

    first = cnnkit.fit(tiny_config("optim.scheduler=constant"))
    stale = first.run_dir / "hpc_ckpt_1.ckpt"
    stale.write_bytes(first.last_checkpoint.read_bytes())
    os.utime(stale, (1, 1))  # older than last.ckpt
    assert cnnkit.fit(tiny_config("optim.scheduler=constant")).kept
    again = cnnkit.fit(tiny_config("optim.scheduler=constant"), overwrite=True)  # --overwrite ignores it
    assert again.status == "finished" and not stale.exists()
