"""The GPU readiness check works on its one try: its CPU dry run takes every path of the GPU run, with faults
planted, and its one-line refusals come before anything runs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

CHECK = REPO / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_the_dry_run_survives_its_planted_faults_and_keeps_every_part(tmp_path):
    """A hung test cut at its own bound, a failing and a hanging speed case, a smoke deadline forced short:
    each costs only itself; the JSON holds every part, timings are taken alike, syncs counted only when watched."""
    from benchmarks.gpu_check import CPU_SIZES, CPU_SPEED, FAULT_TEST, SETTINGS, case_key

    gpu_json = REPO / "benchmarks" / "results" / "gpu.json"
    existed = gpu_json.exists()
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "TMPDIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHON": sys.executable,
    }
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", str(CHECK), "--cpu", "--faults", "--budget", "900"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # the planted faults make parts not ok
    results = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert results["check"]["mode"] == "cpu dry run"
    assert 900 - (time.monotonic() - started) < results["check"]["budget_s"] <= 900  # --budget passes through

    tests = results["pytest -m gpu"]["tests"]
    ours = {name: outcome for name, outcome in tests.items() if name.startswith("tests/test_gpu.py::")}
    assert len(ours) >= 8 and set(ours.values()) == {"passed"}, tests  # every GPU test ran on the CPU and passed
    (hung,) = [outcome for name, outcome in tests.items() if name.endswith(FAULT_TEST)]
    assert hung.startswith("cut at its bound"), hung
    assert not results["pytest -m gpu"]["ok"]

    smoke = results["smoke run per distinct model"]
    labels, states = list(smoke["models"]), list(smoke["models"].values())
    assert labels[0] == "cifar10_fast:default" and states[0] == "finished"  # the key recipes first
    assert [label.split(":")[0] for label in labels[1:3]] == ["quickstart", "hw3_food11"]
    first_skip = next(i for i, state in enumerate(states) if state.startswith("skipped"))
    assert all(state.startswith("skipped") for state in states[first_skip:])
    assert not smoke["ok"] and "skipped" in smoke["error"]  # a skipped model is not ok

    speed = results["speed"]
    cases = speed["cases"]
    assert "no_such_backbone" in next(v["error"] for k, v in cases.items() if k.startswith("fault: a case that fails"))
    planned = [case_key(CPU_SPEED[i], p, c, k) for i, p, c, k in SETTINGS]
    assert planned[-1].endswith("compile") and len(set(planned)) == len(planned)
    for key in planned:  # every case measured, compile included, though a case before them failed
        case = cases[key]
        assert case["cnnkit_images_per_s"] > 0 and case["plain_images_per_s"] > 0, (key, case)
        timing = case["timing"]
        assert (
            {k: v for k, v in timing["cnnkit"].items() if k != "seconds"}
            == {k: v for k, v in timing["plain"].items() if k != "seconds"}
            == {"warmup_steps": CPU_SIZES.warmup, "timed_steps": CPU_SIZES.steps, "synchronizations": 2}
        )
    assert cases["fault: a case that hangs"]["cut"].startswith("at its cap")  # the process ended; the rest is kept
    assert not speed["ok"]
    for model in CPU_SPEED:
        syncs = speed["host_syncs_per_step"][model.label]
        assert syncs["watched_steps"] == CPU_SIZES.sync_steps
        # one planted read per step inside the watched steps, the planted reads outside them not counted
        assert syncs["per_step"].get("other") == 1.0 and syncs["planted_reads"] > syncs["watched_steps"], syncs
        assert "cnnkit" not in syncs["per_step"] and syncs["counting_after_the_run"] is False, syncs

    log = (tmp_path / "out" / "gpu_check.log").read_text()
    assert "test_exact_resume_on_the_gpu_ends_bitwise_equal_with_the_cuda_rng_restored PASSED" in log
    assert "wrote " in log
    if importlib.util.find_spec("pytest_timeout"):  # else the script itself stops pytest at the hung test
        assert "slowest 5 durations" in log
    assert "speed" in proc.stdout.split("part ")[-1]  # the closing table
    assert gpu_json.exists() == existed  # nothing written into the tree


def check_copy(tmp_path, wheels: bool):
    """scripts/gpu_check.sh in a tree of its own (with or without wheels/), for its refusals."""
    (tmp_path / "tree" / "scripts").mkdir(parents=True)
    shutil.copy(CHECK, tmp_path / "tree" / "scripts")
    if wheels:
        (tmp_path / "tree" / "wheels").mkdir()
        (tmp_path / "tree" / "wheels" / "omegaconf-2.4.0-py3-none-any.whl").write_bytes(b"")
    return tmp_path / "tree" / "scripts" / "gpu_check.sh"


def run_check(script, *args: str, python: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python, "OUT": str(script.parents[2] / "out")}
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)


def test_without_the_wheels_folder_it_says_in_one_line_what_to_carry(tmp_path):
    proc = run_check(check_copy(tmp_path, wheels=False), python="false")  # an interpreter without omegaconf
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("gpu_check: wheels/ is not in this tree") and 'carry: ["wheels"]' in line
    assert "bash scripts/gpu_wheels.sh" in line


def test_without_the_interpreter_it_says_in_one_line_what_to_set(tmp_path):
    proc = run_check(check_copy(tmp_path, wheels=True), python="no-such-python3")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "gpu_check: no 'no-such-python3' on PATH: set PYTHON to the interpreter that has torch "
        "(PYTHON=/path/to/python3 bash scripts/gpu_check.sh)"
    ]


def test_an_unknown_option_is_one_line():
    proc = subprocess.run(["bash", str(CHECK), "--quick"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "gpu_check: unknown option '--quick' (use --cpu, --budget S)"


def test_a_process_past_its_bound_is_stopped_with_the_processes_it_started(tmp_path):
    from benchmarks.gpu_check import run_bounded

    marker = tmp_path / "survived"
    script = f"(sleep 4; touch {marker}) & sleep 60"  # a grandchild that outlives a plain kill of its parent
    started = time.monotonic()
    code, cut = run_bounded(["bash", "-c", script], dict(os.environ), 1)
    assert code is None and cut == "cut at its bound of 1 s" and time.monotonic() - started < 8
    time.sleep(4.5)
    assert not marker.exists()


def test_each_test_gets_its_outcome_and_one_past_its_bound_is_named():
    """pytest's verbose lines as they stream; without pytest-timeout the check stops pytest at the overrun."""
    from benchmarks.gpu_check import PytestProgress

    class Silent:
        def put(self, key, value):
            pass

    entry: dict = {}
    progress = PytestProgress(Silent(), entry, bounds=lambda name: -11)  # every test is past its bound at once
    progress.feed("tests/a.py::test_one PASSED   [ 33%]\ntests/a.py::test_two ")
    assert entry["tests"] == {"tests/a.py::test_one": "passed"}
    assert progress.overrun() == "stopped at tests/a.py::test_two"
    assert entry["tests"]["tests/a.py::test_two"].startswith("cut at its bound")
    progress.feed(
        "FAILED [ 66%]\n::test_three FAILED [100%]\nFAILED ::test_three - Failed: Timeout (>3.0s) from "
        "pytest-timeout.\n==== 1 passed, 2 failed in 5.00s ====\n"
    )
    assert entry["tests"]["::test_three"].startswith("cut at its bound (pytest-timeout)")
    assert entry["summary"] == "1 passed, 2 failed in 5.00s"


@pytest.mark.parametrize("average", ["micro", "macro", "weighted", "none"])
def test_the_training_accuracy_counts_on_the_device_as_torchmetrics_does(average):
    """Found by the dry run's sync counter: torchmetrics' update read back to the host every training step
    (a boolean mask for the ignored labels, bincount); cnnkit's training accuracy counts the same without."""
    import torch
    from torchmetrics.classification import MulticlassAccuracy

    from cnnkit.training.module import IGNORED, TrainAccuracy

    generator = torch.Generator().manual_seed(0)
    for classes in (2, 7, 11):
        theirs = MulticlassAccuracy(num_classes=classes, average=average, validate_args=False, ignore_index=IGNORED)
        ours = TrainAccuracy(num_classes=classes, average=average, validate_args=False, ignore_index=IGNORED)
        for size in (1, 17, 40):
            logits = torch.randn(size, classes, generator=generator)
            target = torch.randint(0, classes, (size,), generator=generator)
            target[torch.rand(size, generator=generator) < 0.25] = IGNORED  # a skipped batch's labels
            theirs.update(logits, target)
            ours.update(logits, target)
        for state in ("tp", "fp", "tn", "fn"):
            assert torch.equal(getattr(ours, state), getattr(theirs, state)), state
        assert torch.allclose(ours.compute(), theirs.compute(), equal_nan=True)
