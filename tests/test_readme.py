"""The README's command blocks run, in the order printed, in one fresh directory, as a user copies them,
and each does what its text says: no refusal, and no "kept it" where a run is promised.

Each ```bash / ```python block carries a marker on the line above it:
``<!-- readme-test: run -->`` runs it as is; ``smoke`` adds the smoke overlay right after the recipe of
each ``cnnkit fit`` (its runs live under runs/smoke/, so they never meet a full run; later presets still
apply) and reads ``report runs/X`` as ``report runs/smoke/X``; ``parse`` turns each cnnkit command
(``torchrun ... -m cnnkit`` included) into ``--print-config``, for GPU, multi-node and full-data
commands. Under ``smoke`` and ``parse`` a script (``bash docs/reproduce_cpu.sh``, ``sbatch
scripts/slurm.sh``, ``bash scripts/slurm_array.sh``: the full reproduction, cluster jobs) is checked by
``bash -n``, not run. ``file NAME`` saves the block as NAME; ``skip`` is for the test command alone (CI runs it).
``pip install ... &&`` is dropped: the package is installed already (CI installs it fresh).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .conftest import REPO

MARKER = re.compile(r"<!-- readme-test: (\w+)(?: ([^>]*?))? -->\n```(\w*)\n(.*?)```", re.S)
SMOKE = "--config configs/debug/smoke.yaml"


def readme_blocks(text: str) -> list[tuple[str, str, str, str]]:
    """(marker, argument, language, body) of every marked block, in order."""
    return [(m.group(1), m.group(2) or "", m.group(3), m.group(4)) for m in MARKER.finditer(text)]


def commands(body: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments and blank lines dropped."""
    return [command for command, _ in commented_commands(body)]


def commented_commands(body: str) -> list[tuple[str, str]]:
    """(command, its trailing comment) of each shell command of a block."""
    joined = body.replace("\\\n", " ")
    pairs = [(re.sub(r"\s+#.*$", "", line).strip(), line.partition(" #")[2].strip()) for line in joined.splitlines()]
    return [(command, comment) for command, comment in pairs if command and not command.startswith("#")]


def as_run(command: str, marker: str) -> str | None:
    """The command the harness runs for ``command`` under ``marker`` (None: not run)."""
    command = re.sub(r"^pip install [^&]*&&\s*", "", command)
    cnnkit = re.search(r"(?:^|\s)-m cnnkit (\w+)(.*)$", command)
    if marker == "run":
        return command
    if cnnkit is None:
        script = re.match(r"(?:bash|sbatch)\s+(\S+\.sh)\b", command)
        return f"bash -n {script.group(1)}" if script else None
    sub, args = cnnkit.group(1), cnnkit.group(2)
    if marker == "smoke":
        if sub == "fit" and "--recipe" in args:  # --config files merge after each recipe: the overlay first
            args = re.sub(r"(\s--config |$)", rf" {SMOKE}\1", args, count=1)
        elif sub == "fit":  # the overlay right after the recipe: a later preset (ddp_cpu) still applies
            args = re.sub(r"(--config \S+)", rf"\1 {SMOKE}", args, count=1)
        elif sub == "report":
            args = re.sub(r"(\s)runs/", r"\1runs/smoke/", args)
        return f"{sys.executable} -m cnnkit {sub}{args}"
    if marker == "parse":
        return f"{sys.executable} -m cnnkit {sub}{args} --print-config"
    raise AssertionError(f"unknown marker {marker!r}")


def test_every_code_block_is_marked():
    text = (REPO / "README.md").read_text()
    fences = re.findall(r"^```(bash|python)$", text, re.M)
    assert len(readme_blocks(text)) == len(fences)


def test_the_top_two_blocks_are_the_install_and_run_and_the_install_and_test_commands():
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert [commands(b[3]) for b in blocks[:2]] == [
        ["pip install -e . && python -m cnnkit fit --config recipes/quickstart.yaml"],
        ['pip install -e ".[dev]" && pytest -n auto'],
    ]


def test_only_the_test_command_is_skipped():
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert [i for i, block in enumerate(blocks) if block[0] == "skip"] == [1]


@pytest.mark.slow
def test_the_readme_runs_top_to_bottom(tmp_path):
    for folder in ("recipes", "configs", "docs", "scripts", "examples"):
        (tmp_path / folder).symlink_to(REPO / folder)
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "CNNKIT_NO_PLUGINS": "1",
        "PYTHONPATH": str(REPO),
    }
    ran = []
    for marker, argument, language, body in readme_blocks((REPO / "README.md").read_text()):
        if marker == "skip":
            continue
        if marker == "file":
            (tmp_path / argument).write_text(body)
            continue
        if language == "python":
            proc = subprocess.run(
                [sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
            assert proc.returncode == 0, f"README python block failed:\n{body}\n{proc.stderr[-3000:]}"
            ran.append("python block")
            continue
        for command, comment in commented_commands(body):
            to_run = as_run(command, marker)
            if to_run is None:
                continue
            to_run = (
                to_run.replace("python -m cnnkit", f"{sys.executable} -m cnnkit", 1)
                if to_run.startswith("python ")
                else to_run
            )
            proc = subprocess.run(
                to_run, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
            )
            assert proc.returncode == 0, f"README command failed: {command}\n{proc.stderr[-3000:]}"
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            if " fit " in to_run and "--print-config" not in to_run and "kept" not in comment:
                # a fit shown trains what it says: it keeps a finished run only where its comment says so
                assert "kept" not in proc.stderr + proc.stdout, f"{command}\n{proc.stdout}\n{proc.stderr}"
            ran.append(command)
    assert len(ran) >= 16
    # every fit found a run directory of its own: the full ones, the smoke ones, the two-process one
    assert sorted(p.name for p in (tmp_path / "runs/quickstart").iterdir()) == [
        "default",
        "norm=bn_post+act=sigmoid+lr=0.5",
        "norm=bn_post+max_epochs=3",
        "seed=1",
    ]
    assert [p.name for p in (tmp_path / "runs/smoke/quickstart").iterdir()] == ["norm=instance_pre+imports=my_norms.py"]
    assert [p.name for p in (tmp_path / "runs/ddp_cpu/quickstart").iterdir()] == ["default"]
    assert (tmp_path / "runs/smoke/bn_placement/REPORT.md").is_file()
    assert len(list((tmp_path / "runs/smoke/bn_placement").glob("*/status.json"))) == 36


@pytest.mark.parametrize(
    "command, marker, expected",
    [
        ("pip install -e . && python -m cnnkit fit --config r.yaml", "run", "python -m cnnkit fit --config r.yaml"),
        (
            "python -m cnnkit fit --config r.yaml --config configs/trainer/ddp_cpu.yaml",
            "smoke",
            f"{sys.executable} -m cnnkit fit --config r.yaml {SMOKE} --config configs/trainer/ddp_cpu.yaml",
        ),
        (
            "python -m cnnkit report runs/bn_placement",
            "smoke",
            f"{sys.executable} -m cnnkit report runs/smoke/bn_placement",
        ),
        ("bash docs/reproduce_cpu.sh", "smoke", "bash -n docs/reproduce_cpu.sh"),
        ("sbatch scripts/slurm.sh recipes/x.yaml", "parse", "bash -n scripts/slurm.sh"),
        ("bash scripts/slurm_array.sh recipes/x.yaml", "parse", "bash -n scripts/slurm_array.sh"),
        ("bash docs/reproduce_cpu.sh --jobs auto", "smoke", "bash -n docs/reproduce_cpu.sh"),
        (
            "python -m cnnkit fit --recipe a.yaml --recipe b.yaml --jobs 2",
            "smoke",
            f"{sys.executable} -m cnnkit fit --recipe a.yaml --recipe b.yaml --jobs 2 {SMOKE}",
        ),
        (
            "python -m cnnkit fit --recipe a.yaml --recipe b.yaml --config c.yaml",
            "smoke",
            f"{sys.executable} -m cnnkit fit --recipe a.yaml --recipe b.yaml {SMOKE} --config c.yaml",
        ),
        (
            "torchrun --nproc_per_node=4 -m cnnkit fit --config a.yaml trainer.devices=4",
            "parse",
            f"{sys.executable} -m cnnkit fit --config a.yaml trainer.devices=4 --print-config",
        ),
    ],
)
def test_how_the_harness_turns_a_command(command, marker, expected):
    assert as_run(command, marker) == expected
