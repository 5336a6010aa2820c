"""``fit --jobs``: a recipe's variants side by side, each its own process with its share of the machine.

Where each job runs is a pure function (tested for 1, 2 and 8 GPUs without one); a variant's weights do
not depend on the pool (bitwise equal to the variant run alone); Ctrl-C leaves every variant finished,
interrupted or not started, and ``--ckpt last`` then completes the matrix as if nothing had happened.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnkit.api import load_config
from cnnkit.experiments.jobs import alone_command
from cnnkit.experiments.placement import Slot, auto_jobs, job_env, most_work_first, slots

from .conftest import QUICKSTART, REPO, SMOKE, assert_one_line_error, cli, edited_recipe


def recipe(tmp: Path, seeds=(0, 1, 2), extra: str = "") -> str:
    """A tiny three-variant recipe: the quickstart under the smoke overlay, a matrix over the seed."""
    path = tmp / "tiny.yaml"
    path.write_text(f"include: [{QUICKSTART}, {SMOKE}]\nname: tiny\nmatrix:\n  seed: {list(seeds)}\n{extra}")
    return str(path)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, f"{a} and {b} differ in {different}"


# -- where each job runs ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gpus, jobs, expected",
    [
        (["0"], 1, ["0"]),
        (["0", "1"], 2, ["0", "1"]),
        ([str(i) for i in range(8)], 8, [str(i) for i in range(8)]),
        (["0", "1"], 4, ["0", "1", "0", "1"]),  # several small jobs per device, spread evenly
        (["5", "7"], 3, ["5", "7", "5"]),  # CUDA_VISIBLE_DEVICES's own ids
    ],
)
def test_each_job_gets_its_device(gpus, jobs, expected):
    taken = slots(jobs, cpus=range(16), gpus=gpus)
    env = [job_env(slot, {"CUDA_VISIBLE_DEVICES": ",".join(gpus), "PATH": "/bin"}) for slot in taken]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in env] == expected
    assert all(e["PATH"] == "/bin" for e in env)
    # the cores are shared out without overlap; each job's threads are its cores
    cores = [c for slot in taken for c in slot.cpus]
    assert sorted(cores) == list(range(16))
    assert all(e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == str(len(s.cpus)) for e, s in zip(env, taken))


def test_cpu_jobs_share_the_cores():
    assert slots(2, [0, 1]) == [Slot((0,), None), Slot((1,), None)]
    assert slots(2, [0, 1, 2]) == [Slot((0, 1), None), Slot((2,), None)]
    assert [s.cpus for s in slots(4, [0, 1])] == [(0,), (1,), (0,), (1,)]  # more jobs than cores: round robin
    env = job_env(Slot((0,), None), {})
    assert env["OMP_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in env
    # a ddp_cpu variant's processes divide the job's cores (Lightning divides only when OMP_NUM_THREADS is unset)
    assert job_env(Slot((0, 1, 2, 3), None), {}, processes=2)["OMP_NUM_THREADS"] == "2"


def test_auto_picks_from_devices_and_model_size():
    assert auto_jobs(to_train=12, cores=16, gpus=4, macs=1e12) == 4  # one per device
    assert auto_jobs(to_train=2, cores=16, gpus=4, macs=0) == 2  # never more than there are to train
    assert auto_jobs(to_train=12, cores=2, gpus=0, macs=1e6) == 2  # a small model: one core each
    assert auto_jobs(to_train=12, cores=8, gpus=0, macs=1e12) == 4  # a big one: two threads pay
    assert auto_jobs(to_train=1, cores=8, gpus=0, macs=1e6) == 1


def test_a_variant_alone_is_the_command_a_user_types():
    command = alone_command(["r.yaml"], ["optim.lr=0.1"], "seed=3", "last", None, False)
    assert command[1:] == [
        "-m",
        "cnnkit",
        "fit",
        "--config",
        "r.yaml",
        "--only",
        "seed=3",
        "--ckpt",
        "last",
        "--jobs",
        "1",
        "optim.lr=0.1",
    ]
    # a recipe without a matrix: its one run, no --only
    assert alone_command(["r.yaml"], [], None, None, None, False)[1:] == [
        "-m",
        "cnnkit",
        "fit",
        "--config",
        "r.yaml",
        "--jobs",
        "1",
    ]


def test_the_queue_hands_out_the_most_work_first():
    def config(*overrides: str):
        return load_config([QUICKSTART], list(overrides))

    small, wide, long = "model.backbone.channels=[8]", "model.backbone.channels=[64,128]", "trainer.max_epochs=30"
    configs = [config(small), config(wide), config(small, long), config(small)]
    # the wide model's batches cost far more; twice the epochs twice the work; equal work keeps matrix order
    assert most_work_first(configs) == [1, 2, 0, 3]


def test_work_is_comparable_across_recipes_that_train_for_steps_and_for_epochs():
    def config(*overrides: str):
        return load_config([QUICKSTART], list(overrides))

    # the digits' training split is 1,257 images: one epoch is about 20 batches of 64
    epoch, forty_steps, ten_steps = "trainer.max_epochs=1", "trainer.max_steps=40", "trainer.max_steps=10"
    five_batches = (epoch, "trainer.limit_train_batches=5")  # 320 images
    configs = [config(epoch), config(forty_steps), config(ten_steps), config(*five_batches)]
    assert most_work_first(configs) == [1, 0, 2, 3]


# -- the command line and the recipe key --------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_bad_jobs_values_are_one_line(value):
    assert_one_line_error(cli("fit", "--config", QUICKSTART, "--jobs", value), "--jobs must be a whole number")


def test_bad_recipe_jobs_is_one_line():
    files = edited_recipe("jobs: lots\n")
    args = [a for f in files for a in ("--config", f)]
    assert_one_line_error(cli("fit", *args), "jobs must be a whole number >= 1 or auto, got 'lots'")


def test_print_variants_lists_the_matrix_in_order_without_torch(tmp_path):
    path = recipe(tmp_path, seeds=(2, 0, 1), extra="  optim.lr: [0.1, 0.5]\n")
    assert cli("fit", "--config", path, "--print-variants").stdout.split() == [
        f"seed={s}+lr={lr}" for s in (2, 0, 1) for lr in (0.1, 0.5)
    ]
    assert cli("fit", "--config", path, "--print-variants", "--only", "lr=0.5").stdout.split() == [
        "seed=2+lr=0.5",
        "seed=0+lr=0.5",
        "seed=1+lr=0.5",
    ]
    assert cli("fit", "--config", QUICKSTART, "--print-variants").stdout.split() == ["default"]
    code = (
        "import sys; from cnnkit.cli import main; main(['fit', '--config', sys.argv[1], '--print-variants']); "
        "assert 'torch' not in sys.modules"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, path],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    # a whole variant name selects that variant (what an array task passes)
    assert cli("fit", "--config", path, "--print-variants", "--only", "seed=0+lr=0.5").stdout.split() == [
        "seed=0+lr=0.5"
    ]


@pytest.mark.slow
def test_recipe_jobs_key_runs_side_by_side_and_names_nothing(tmp_path):
    path = recipe(tmp_path, seeds=(0, 1), extra="jobs: 2\n")
    first = cli("fit", "--config", path, "trainer.threads=1")
    assert first.returncode == 0, first.stderr
    assert "2 at a time" in first.stdout and first.stdout.count(" finished ") == 2, first.stdout
    runs = tmp_path / "runs/smoke/tiny"
    assert sorted(p.name for p in runs.iterdir()) == ["logs", "seed=0", "seed=1"]
    logs = {p.name: p.read_text() for p in (runs / "logs").iterdir()}
    assert sorted(logs) == ["job1.log", "job2.log"]  # each job's own output
    for seed in (0, 1):  # whichever worker took it
        assert sum(f"cnnkit: finished tiny/seed={seed}" in log for log in logs.values()) == 1, logs
    # how many at once changes no result: the same recipe run one at a time keeps both runs
    again = cli("fit", "--config", path, "jobs=1", "trainer.threads=2")
    assert again.returncode == 0 and again.stdout.count("config, kept") == 2, again.stdout + again.stderr


@pytest.mark.slow
def test_each_slot_is_one_worker_that_takes_the_next_variant_as_it_frees(tmp_path):
    path = tmp_path / "uneven.yaml"
    path.write_text(
        f"include: [{QUICKSTART}, {SMOKE}]\nname: uneven\nmatrix:\n  data.batch_size: [2, 256, 512, 1024]\n"
    )
    longer = ["trainer.limit_train_batches=1.0", "trainer.max_epochs=8", "trainer.threads=1"]  # batch 2: 5,000 steps
    proc = cli("fit", "--config", str(path), "--jobs", "2", *longer)
    assert proc.returncode == 0 and proc.stdout.count(" finished ") == 4, proc.stdout + proc.stderr
    logs = tmp_path / "runs/smoke/uneven/logs"
    trained = {
        log.name: re.findall(r"--only (\S+)", log.read_text()) for log in sorted(logs.iterdir())
    }  # each worker writes the command of every variant it trains
    assert sorted(trained) == ["job1.log", "job2.log"], trained  # a start-up per slot, not per variant
    assert sorted(sum(trained.values(), [])) == sorted(f"batch_size={b}" for b in (2, 256, 512, 1024))
    # the slow variant kept its worker; the other worker took the rest as it freed
    kept_busy, took_the_rest = sorted(trained.values(), key=len)
    assert kept_busy == ["batch_size=2"] and len(took_the_rest) == 3, trained


@pytest.mark.slow
def test_several_recipes_share_one_pool_and_each_keeps_its_runs_and_logs(tmp_path):
    tiny = recipe(tmp_path, seeds=(0, 1))
    other = tmp_path / "other.yaml"  # a recipe without a matrix: its one run
    other.write_text(f"include: [{QUICKSTART}, {SMOKE}]\nname: other\noptim: {{lr: 0.05}}\n")
    # --ckpt last over several recipes: a run with nothing to resume starts, as a matrix's variant does
    both = ["--recipe", tiny, "--recipe", str(other), "trainer.threads=1"]
    pooled = cli("fit", *both, "--jobs", "2", "--ckpt", "last")
    assert pooled.returncode == 0, pooled.stdout + pooled.stderr
    assert "2 recipes: 3 to train, 2 at a time" in pooled.stdout, pooled.stdout
    for line in ("tiny/seed=0  finished", "tiny/seed=1  finished", "other/default  finished"):
        assert line in pooled.stdout, pooled.stdout
    assert "tiny: 2 runs (2 finished)" in pooled.stdout and "other: 1 runs (1 finished)" in pooled.stdout
    runs = tmp_path / "runs/smoke"
    # each variant's output, with the command that trains it alone, beside its own recipe's runs
    commands = {
        name: " ".join(log.read_text() for log in (runs / name / "logs").glob("job*.log")) for name in ("tiny", "other")
    }
    assert f"--config {other} --ckpt last --jobs 1" in commands["other"] and "--only" not in commands["other"]
    assert commands["tiny"].count(f"--config {tiny} --only seed=") == 2, commands["tiny"]
    alone = cli("fit", "--config", str(other), "runs_dir=alone", "trainer.threads=1")
    assert alone.returncode == 0, alone.stderr
    assert_same_weights(runs / "other/default", tmp_path / "alone/other/default")
    # one at a time, the same command keeps all three (a matrix's lines say kept: no "nothing to resume")
    again = cli("fit", *both, "--jobs", "1", "--ckpt", "last")
    assert again.returncode == 0 and again.stdout.count("config, kept") == 3, again.stdout + again.stderr
    assert "nothing to resume" not in again.stderr, again.stderr


def test_two_recipes_that_make_the_same_runs_are_refused_before_anything_trains(tmp_path):
    tiny = recipe(tmp_path)
    assert_one_line_error(cli("fit", "--recipe", tiny, "--recipe", tiny), f"--recipe {tiny} is given twice")
    twin = tmp_path / "twin.yaml"  # another file, the same name and variants
    twin.write_text(Path(tiny).read_text())
    assert_one_line_error(cli("fit", "--recipe", tiny, "--recipe", str(twin)), "both make runs/smoke/tiny/seed=0")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("ckpt", ["last", "runs/smoke/tiny/seed=0/checkpoints/last.ckpt"])
def test_overwrite_and_ckpt_together_are_refused_before_anything_is_deleted(tmp_path, ckpt):
    tiny = recipe(tmp_path, seeds=(0,))
    assert cli("fit", "--config", tiny).returncode == 0
    before = (tmp_path / "runs/smoke/tiny/seed=0/status.json").read_text()
    refused = cli("fit", "--config", tiny, "--overwrite", "--ckpt", ckpt)
    assert_one_line_error(refused, "--overwrite redoes runs from scratch and --ckpt")
    assert (tmp_path / "runs/smoke/tiny/seed=0/status.json").read_text() == before
    assert (tmp_path / "runs/smoke/tiny/seed=0/checkpoints/last.ckpt").is_file()


def test_one_pool_refuses_recipes_on_gpus_and_on_the_cpu(monkeypatch):
    from types import SimpleNamespace

    from cnnkit.api import _one_accelerator
    from cnnkit.errors import ConfigError

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    on = [SimpleNamespace(base=SimpleNamespace(trainer=SimpleNamespace(accelerator=a))) for a in ("gpu", "cpu")]
    _one_accelerator(on[:1])
    with pytest.raises(ConfigError, match="the recipes train on GPUs and on the CPU"):
        _one_accelerator(on)


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--print-variants"], "--print-variants shows one recipe: give it --config FILE"),
        (["--print-config"], "--print-config shows one recipe: give it --config FILE"),
        (["--ckpt", "runs/x/last.ckpt"], "with several recipes use --ckpt last"),
    ],
)
def test_what_takes_one_recipe_refuses_several_in_one_line(tmp_path, extra, fragment):
    tiny = recipe(tmp_path)
    assert_one_line_error(cli("fit", "--recipe", tiny, "--recipe", tiny, *extra), fragment)


def test_one_recipe_is_the_same_command_as_config(tmp_path):
    tiny = recipe(tmp_path)
    by_recipe = cli("fit", "--recipe", tiny, "--config", SMOKE, "--print-variants")
    assert by_recipe.returncode == 0 and by_recipe.stdout == cli("fit", "--config", tiny, "--print-variants").stdout


# -- a variant's result does not depend on the pool ------------------------------------------------------
@pytest.mark.slow
def test_a_variant_in_the_pool_equals_the_variant_alone(tmp_path):
    path = recipe(tmp_path, seeds=(0, 1))
    pooled = cli("fit", "--config", path, "--jobs", "2", "trainer.threads=1")
    assert pooled.returncode == 0 and "2 at a time" in pooled.stdout, pooled.stdout + pooled.stderr
    # alone, in this process, with the same thread setting; and the second variant first: no seed comes
    # from a variant's place in the pool
    for seed in (1, 0):
        alone = cli("fit", "--config", path, "--only", f"seed={seed}", "runs_dir=alone", "trainer.threads=1")
        assert alone.returncode == 0, alone.stderr
        assert_same_weights(tmp_path / f"runs/smoke/tiny/seed={seed}", tmp_path / f"alone/tiny/seed={seed}")
    seed0, seed1 = weights(tmp_path / "alone/tiny/seed=0"), weights(tmp_path / "alone/tiny/seed=1")
    assert any(not torch.equal(seed0[k], seed1[k]) for k in seed0)  # the comparison can fail


# -- Ctrl-C -------------------------------------------------------------------------------------------
def status(run: Path) -> str:
    try:
        return json.loads((run / "status.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return "not started"


@pytest.mark.slow
def test_ctrl_c_stops_every_job_and_ckpt_last_completes_the_matrix_bitwise(tmp_path):
    path = recipe(tmp_path, seeds=(0, 1, 2, 3, 4))  # two workers: seed 4 waits in the queue
    longer = ["trainer.max_epochs=15", "trainer.limit_train_batches=5", "trainer.threads=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    command = [sys.executable, "-m", "cnnkit", "fit", "--config", path, "--jobs", "2", *longer]
    parent = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = tmp_path / "runs/smoke/tiny"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # both jobs past their first checkpoint
        if (
            sum(
                (runs / f"seed={s}/checkpoints/last.ckpt").is_file() and status(runs / f"seed={s}") == "running"
                for s in range(5)
            )
            == 2
        ):
            break
        time.sleep(0.2)
    else:
        parent.kill()
        pytest.fail("the jobs never got going")
    parent.send_signal(signal.SIGINT)  # to the parent alone: it forwards to its jobs
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == 128 + signal.SIGINT, out + err
    assert "interrupted by SIGINT" in err and "--ckpt last" in err, err
    states = {s: status(runs / f"seed={s}") for s in range(5)}
    assert set(states.values()) <= {"finished", "interrupted", "not started"}, states
    assert "interrupted" in states.values() and states[4] == "not started", states
    for s, state in states.items():  # nothing half-written: every checkpoint loads, no temporary files left
        if state != "not started":
            assert not list((runs / f"seed={s}").rglob("*.tmp*")), list((runs / f"seed={s}").rglob("*"))
            weights(runs / f"seed={s}")
    resumed = subprocess.run(
        [*command, "--ckpt", "last"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert {status(runs / f"seed={s}") for s in range(5)} == {"finished"}
    # the uninterrupted matrix, one after the other in this process
    reference = cli("fit", "--config", path, "runs_dir=reference", *longer)
    assert reference.returncode == 0, reference.stderr
    for s in range(5):
        assert_same_weights(runs / f"seed={s}", tmp_path / f"reference/tiny/seed={s}")


@pytest.mark.slow
def test_a_variant_that_fails_is_one_line_and_the_others_go_on(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(
        f"include: [{QUICKSTART}, {SMOKE}]\nname: broken\nmatrix:\n"
        f"  data.dataset: [digits, {{name: image_folder, root: missing_folder}}]\n"
    )
    proc = cli("fit", "--config", str(path), "--jobs", "2")
    assert_one_line_error(
        proc,
        "1 of 2 variants failed: dataset=image_folder-rootmissing_folder (image_folder: data root "
        "'missing_folder' does not exist",
    )
    assert "runs/smoke/broken/logs/job2.log" in proc.stderr
    assert status(tmp_path / "runs/smoke/broken/dataset=digits") == "finished"
