"""The scripts that run a recipe's variants: docs/reproduce_cpu.sh never touches a user's runs nor the
tracked docs/ unless asked; scripts/slurm_array.sh submits one array task per variant and each task
trains its own. Both run for real on a tiny recipe, in a copy of the tree's layout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import QUICKSTART, REPO, SMOKE


def tree(tmp: Path) -> Path:
    """docs/reproduce_cpu.sh and scripts/slurm_array.sh as they are, beside a tiny two-variant recipe."""
    for folder in ("docs", "scripts", "recipes"):
        (tmp / folder).mkdir()
    for script in ("docs/reproduce_cpu.sh", "scripts/slurm_array.sh"):
        shutil.copy(REPO / script, tmp / script)
    (tmp / "recipes/tiny.cpu.yaml").write_text(
        f"include: [{QUICKSTART}, {SMOKE}]\nname: tiny\nmatrix:\n  seed: [0, 1]\n"
    )
    (tmp / "docs/timings.txt").write_text("tiny: 1 s\n")
    return tmp


def env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}


def status(run: Path) -> str:
    return json.loads((run / "status.json").read_text())["status"]


@pytest.mark.slow
def test_reproduce_keeps_the_users_runs_and_docs_unless_asked(tmp_path):
    root = tree(tmp_path)
    mine = root / "runs/tiny/mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my own run\n")
    docs_before = {p: p.read_bytes() for p in (root / "docs").rglob("*") if p.is_file()}

    def reproduce(*args):
        proc = subprocess.run(
            ["bash", "docs/reproduce_cpu.sh", *args, "tiny"],
            cwd=root,
            env=env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    first = reproduce("--jobs", "2")
    assert "2 at a time" in first.stdout, first.stdout
    assert (mine / "notes.txt").read_text() == "my own run\n"  # the user's runs/<recipe> is untouched
    runs = root / "runs/reproduce_cpu/tiny"
    assert [status(runs / f"seed={s}") for s in (0, 1)] == ["finished", "finished"]
    assert (runs / "REPORT.md").is_file()
    assert {p: p.read_bytes() for p in (root / "docs").rglob("*") if p.is_file()} == docs_before
    # a rerun keeps the finished runs instead of deleting and retraining them; --update-docs is what writes
    # the tracked figures and the timing
    again = reproduce("--update-docs")
    assert again.stdout.count("config, kept") == 2, again.stdout
    assert (root / "docs/tiny/REPORT.md").read_text() == (runs / "REPORT.md").read_text()
    assert (root / "docs/timings.txt").read_text().startswith("tiny: ")
    bad = subprocess.run(
        ["bash", "docs/reproduce_cpu.sh", "--job", "2"], cwd=root, env=env(), capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown option '--job'" in bad.stderr


@pytest.mark.slow
def test_slurm_array_submits_a_task_per_variant_and_each_trains_its_own(tmp_path):
    root = tree(tmp_path)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/submitted"\n')
    (bin_dir / "sbatch").chmod(0o755)
    path_env = {**env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    submit = subprocess.run(
        ["bash", "scripts/slurm_array.sh", "recipes/tiny.cpu.yaml", "optim.lr=0.01"],
        cwd=root,
        env=path_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    assert (bin_dir / "submitted").read_text().split() == [
        "--array=0-1",
        "scripts/slurm_array.sh",
        "recipes/tiny.cpu.yaml",
        "optim.lr=0.01",
    ]
    task = subprocess.run(
        ["bash", "scripts/slurm_array.sh", "recipes/tiny.cpu.yaml"],
        cwd=root,
        env={**env(), "SLURM_ARRAY_TASK_ID": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert task.returncode == 0, task.stdout + task.stderr
    runs = root / "runs/smoke/tiny"
    assert [p.name for p in runs.iterdir()] == ["seed=1"] and status(runs / "seed=1") == "finished"
    beyond = subprocess.run(
        ["bash", "scripts/slurm_array.sh", "recipes/tiny.cpu.yaml"],
        cwd=root,
        env={**env(), "SLURM_ARRAY_TASK_ID": "2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert beyond.returncode == 2 and "task 2 has no variant" in beyond.stderr
