"""The command line as a user meets it: exit codes and one-line errors.

Most commands run in this process through ``cli`` (what ``python -m cnnkit`` runs, stdout and stderr
captured); a real process is started only where the process is the thing under test: what ``--help``
imports, and one representative of each kind of mistake at the process boundary."""

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from .conftest import QUICKSTART, REPO, SMOKE, assert_one_line_error, cli, edited_recipe, run_cli


def test_help_imports_neither_torch_nor_lightning():
    proc = subprocess_importtime("--help")
    assert proc.returncode == 0 and "fit" in proc.stdout
    assert not imported(proc, "torch") and not imported(proc, "lightning")
    for command in ("fit", "validate", "test", "predict", "list"):
        assert cli(command, "--help").returncode == 0


def subprocess_importtime(*args):
    import subprocess

    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cnnkit", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "CNNKIT_NO_PLUGINS": "1"},
        timeout=120,
    )


def imported(proc, package):
    return any(
        line.split("|")[-1].strip().split(".")[0] == package
        for line in proc.stderr.splitlines()
        if line.startswith("import time:")
    )


def test_list_norms_shows_the_four_schemes_without_lightning():
    proc = subprocess_importtime("list", "norms")
    assert proc.returncode == 0
    for name in ("none", "input", "bn_pre", "bn_post"):
        line = next(
            text
            for text in proc.stdout.splitlines()
            if text.strip().startswith(name + " ") or text.strip().startswith(name + " (")
        )
        assert len(line.split()) > 3  # has a description
    assert not imported(proc, "lightning")
    everything = cli("list")
    assert all(f"{kind}:" in everything.stdout for kind in ("backbones", "datasets", "callbacks", "schedulers"))
    assert "early_stopping" in cli("list", "callbacks", "early*").stdout
    assert_one_line_error(cli("list", "norms", "zzz"), "list: nothing matches 'zzz' in norms")
    assert cli("list", "pool").stdout.startswith("poolings:\n")  # a config key's name finds its registry


def garbage_ckpt(tmp_path):
    path = tmp_path / "garbage.ckpt"
    path.write_bytes(b"this is not a checkpoint")
    return str(path)


def write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


BAD_INPUTS = {
    "missing config": (lambda t: ["fit", "--config", "nope.yaml"], "config file 'nope.yaml' not found"),
    "yaml syntax": (lambda t: ["fit", "--config", write(t, "bad.yaml", "a: [1,\n b")], "YAML syntax error"),
    "not a mapping": (lambda t: ["fit", "--config", write(t, "l.yaml", "- 1\n")], "must be a mapping"),
    "unknown key": (lambda t: ["fit", "--config", QUICKSTART, "model.nrm=bn_pre"], "did you mean 'model.norm'"),
    "wrong type": (lambda t: ["fit", "--config", QUICKSTART, "trainer.max_epochs=many"], "trainer.max_epochs"),
    "unknown name": (lambda t: ["fit", "--config", QUICKSTART, "model.norm=bn_pree"], "did you mean 'bn_pre'"),
    "data root": (
        lambda t: ["fit", "--config", QUICKSTART, "data.dataset={name: cifar10, root: /no/such/dir}"],
        "data root '/no/such/dir' does not exist",
    ),
    "image folder root": (
        lambda t: ["fit", "--config", QUICKSTART, "data.dataset={name: image_folder, root: /no/such/dir}"],
        "does not exist",
    ),
    "batch of one with BN": (lambda t: ["fit", "--config", QUICKSTART, "data.batch_size=1"], "at least 2 samples"),
    "lr <= 0": (lambda t: ["fit", "--config", QUICKSTART, "optim.lr=-0.1"], "optim.lr must be > 0"),
    "bn momentum": (
        lambda t: ["fit", "--config", QUICKSTART, "model.norm={name: bn_post, momentum: -0.5}"],
        "momentum must be in [0, 1]",
    ),
    "imports fails": (
        lambda t: [
            "fit",
            "--config",
            QUICKSTART,
            f"imports=[{write(t, 'boom.py', 'raise RuntimeError(chr(98)+chr(97)+chr(100))')}]",
        ],
        "RuntimeError: bad",
    ),
    "unknown subcommand": (lambda t: ["frobnicate"], "invalid choice: 'frobnicate'"),
    "missing checkpoint": (lambda t: ["test", "--ckpt", "missing.ckpt"], "checkpoint 'missing.ckpt' not found"),
    "unreadable checkpoint": (lambda t: ["test", "--ckpt", garbage_ckpt(t)], "is corrupt or truncated"),
    "no checkpoint to resume": (lambda t: ["fit", "--config", QUICKSTART, "--ckpt", "last"], "no checkpoint to resume"),
    "test without ckpt": (lambda t: ["test", "--config", QUICKSTART], "test needs --ckpt"),
    "gpu on a cpu machine": (
        lambda t: ["fit", "--config", QUICKSTART, "trainer.accelerator=gpu"],
        "trainer.accelerator=gpu: this machine has no GPU device",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2_and_leaves_nothing(case, tmp_path, trainers):
    if case == "gpu on a cpu machine" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    make_args, fragment = BAD_INPUTS[case]
    assert_one_line_error(cli(*make_args(tmp_path)), fragment)
    assert not (tmp_path / "runs").exists()
    assert trainers == []  # refused before Lightning's Trainer exists


# one mistake of each kind (usage, config file, registry name, data, checkpoint) through a real process:
# its exit code and its whole stderr are the process's own
AT_THE_PROCESS_BOUNDARY = ["unknown subcommand", "yaml syntax", "unknown name", "data root", "unreadable checkpoint"]


@pytest.mark.parametrize("case", AT_THE_PROCESS_BOUNDARY)
def test_a_process_given_bad_input_exits_2_with_one_line(case, tmp_path):
    make_args, fragment = BAD_INPUTS[case]
    assert_one_line_error(run_cli(*make_args(tmp_path), cwd=tmp_path), fragment)
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli("fit", "--config", QUICKSTART, "model.norm=bn_pree", "--debug", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = cli("fit", "--config", QUICKSTART, "model.norm=bn_pree", env_extra={"CNNKIT_DEBUG": "1"})
    assert "Traceback" in proc.stderr


def test_print_config_prints_the_resolved_config(tmp_path):
    proc = cli("fit", "--config", QUICKSTART, "model.norm=bn_post", "--print-config")
    assert proc.returncode == 0 and "norm: bn_post" in proc.stdout and "schema_version: 1" in proc.stdout
    assert not (tmp_path / "runs").exists()


def test_fit_resume_test_and_predict_end_to_end(tmp_path):
    tiny = ["--config", QUICKSTART, "--config", SMOKE]
    fit = cli("fit", *tiny, "trainer.max_epochs=1")
    assert fit.returncode == 0, fit.stderr
    run = tmp_path / "runs" / "smoke" / "quickstart" / "default"  # the smoke overlay's own runs_dir
    assert json.loads((run / "status.json").read_text())["status"] == "finished"

    kept = cli("fit", *tiny, "trainer.max_epochs=1")
    assert kept.returncode == 0 and "finished before with the same config; kept it" in kept.stderr
    refused = cli("fit", *tiny, "--config", edited_recipe("trainer: {max_epochs: 2}")[-1])  # the recipe, edited
    assert_one_line_error(
        refused, "was made with another config, so cnnkit will not reuse it for this one: trainer.max_epochs 1 → 2"
    )
    cosine = cli("fit", *tiny, "trainer.max_epochs=2", "--ckpt", "last")
    assert_one_line_error(cosine, "optim.scheduler=cosine is laid out over the run's length")

    resumed = cli("fit", *tiny, "trainer.max_epochs=2", "optim.scheduler=constant", "variant=default", "--ckpt", "last")
    assert_one_line_error(resumed, "optim.scheduler cosine → constant")  # the schedule is part of the result
    cli("fit", *tiny, "trainer.max_epochs=1", "optim.scheduler=constant", "variant=default", "--overwrite")
    resumed = cli("fit", *tiny, "trainer.max_epochs=2", "optim.scheduler=constant", "variant=default", "--ckpt", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6  # 2 epochs x 3
    epochs = {row["epoch"] for row in csv.DictReader(open(run / "metrics.csv")) if row.get("val/acc")}
    assert epochs == {"0", "1"}

    # test from a checkpoint alone: the model comes from the config stored in it
    tested = cli("test", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "trainer.progress_bar=none")
    assert tested.returncode == 0, tested.stderr
    assert "test/acc" in tested.stdout

    out = tmp_path / "preds.csv"
    predicted = cli("predict", *tiny, "--ckpt", "last", "--split", "val", "--output", str(out))
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 180 and list(rows[0]) == ["file", "class", "probability", "label", "correct", "top3"]
    assert rows[0]["class"] in [str(i) for i in range(10)] and 0 < float(rows[0]["probability"]) <= 1
    assert all(r["correct"] == ("yes" if r["class"] == r["label"] else "no") for r in rows)
    assert "cnnkit: wrote 180 predictions to" in predicted.stdout and "accuracy" in predicted.stdout

    images = tmp_path / "images" / "sub"
    images.mkdir(parents=True)
    from PIL import Image

    Image.new("L", (8, 8), 128).save(images / "a.png")
    from_folder = cli(
        "predict",
        "--ckpt",
        str(run / "checkpoints" / "last.ckpt"),
        "--input",
        str(tmp_path / "images"),
        "--output",
        str(tmp_path / "folder.csv"),
        "trainer.progress_bar=none",
    )
    assert from_folder.returncode == 0, from_folder.stderr
    rows = list(csv.DictReader(open(tmp_path / "folder.csv")))
    assert [Path(r["file"]).name for r in rows] == ["a.png"]


def test_a_checkpoint_that_carries_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"hyper_parameters": {"config": {}, "data_info": {}}, "payload": Path("x")}, path)
    proc = cli("test", "--ckpt", str(path))
    assert_one_line_error(proc, "refuses to load it")
    not_ours = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, not_ours)
    assert_one_line_error(cli("test", "--ckpt", str(not_ours)), "not a cnnkit checkpoint")


def test_an_error_from_a_dataloader_worker_shows_its_own_line():
    from cnnkit.errors import DataError, own_message

    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1\ncnnkit.errors.DataError: image_folder: cannot read image '
        "'a/b.png': bad file"
    )
    assert own_message(wrapped) == "image_folder: cannot read image 'a/b.png': bad file"
    assert own_message(DataError("plain")) == "plain"
