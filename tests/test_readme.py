"""The README's command blocks run, in the order printed, in one fresh directory, as a user copies them.

Each ```bash / ```python block carries a marker on the line above it:
``<!-- readme-test: run -->`` runs it as is; ``smoke`` appends the smoke overlay to each ``cnnkit fit``
(other lines — ``bash docs/reproduce_cpu.sh`` — are not run); ``parse`` turns each cnnkit command
(``torchrun ... -m cnnkit`` included) into ``--print-config``, for GPU, multi-node and full-data
commands (``sbatch`` is not run); ``file NAME`` saves the block as NAME; ``skip`` does not run it.
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
    joined = body.replace("\\\n", " ")
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def as_run(command: str, marker: str) -> str | None:
    """The command the harness runs for ``command`` under ``marker`` (None: not run)."""
    command = re.sub(r"^pip install [^&]*&&\s*", "", command)
    cnnkit = re.search(r"(?:^|\s)-m cnnkit (\w+)(.*)$", command)
    if marker == "run":
        return command
    if cnnkit is None:
        return None
    sub, args = cnnkit.group(1), cnnkit.group(2)
    if marker == "smoke":
        return f"{sys.executable} -m cnnkit {sub}{args} {SMOKE}" if sub == "fit" else f"{sys.executable} -m cnnkit {sub}{args}"
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
        ['pip install -e ".[dev]" && pytest -n auto']]


def test_the_readme_runs_top_to_bottom(tmp_path):
    for folder in ("recipes", "configs", "docs", "scripts", "examples"):
        (tmp_path / folder).symlink_to(REPO / folder)
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "CNNKIT_NO_PLUGINS": "1",
           "PYTHONPATH": str(REPO)}
    ran = []
    for marker, argument, language, body in readme_blocks((REPO / "README.md").read_text()):
        if marker == "skip":
            continue
        if marker == "file":
            (tmp_path / argument).write_text(body)
            continue
        if language == "python":
            proc = subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, f"README python block failed:\n{body}\n{proc.stderr[-3000:]}"
            ran.append("python block")
            continue
        for command in commands(body):
            to_run = as_run(command, marker)
            if to_run is None:
                continue
            to_run = to_run.replace("python -m cnnkit", f"{sys.executable} -m cnnkit", 1) \
                if to_run.startswith("python ") else to_run
            proc = subprocess.run(to_run, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert proc.returncode == 0, f"README command failed: {command}\n{proc.stderr[-3000:]}"
            assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
            ran.append(command)
    assert len(ran) >= 14
    # every single fit found its own run directory, and a repeated command found its run again
    variants = sorted(p.name for p in (tmp_path / "runs/quickstart").iterdir())
    assert variants == ["default", "norm=bn_post", "norm=bn_post+act=sigmoid+lr=0.5",
                        "norm=instance_pre+imports=my_norms.py"]
    assert (tmp_path / "runs/bn_placement/REPORT.md").is_file()


@pytest.mark.parametrize("command, marker, expected", [
    ("pip install -e . && python -m cnnkit fit --config r.yaml", "run", "python -m cnnkit fit --config r.yaml"),
    ("bash docs/reproduce_cpu.sh", "smoke", None),
    ("sbatch scripts/slurm.sh recipes/x.yaml", "parse", None),
    ("torchrun --nproc_per_node=4 -m cnnkit fit --config a.yaml trainer.devices=4", "parse",
     f"{sys.executable} -m cnnkit fit --config a.yaml trainer.devices=4 --print-config"),
])
def test_how_the_harness_turns_a_command(command, marker, expected):
    assert as_run(command, marker) == expected
