"""Shared fixtures: every test runs in its own directory, offline, on tiny digits runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")

# Shrinks any recipe to a few CPU steps (the same overlay users get as configs/debug/smoke.yaml).
SMOKE = str(REPO / "configs" / "debug" / "smoke.yaml")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run in a fresh directory (runs/ lands there), never touch W&B's servers or plugins."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("CNNKIT_NO_PLUGINS", "1")
    monkeypatch.delenv("CNNKIT_DEBUG", raising=False)
    yield tmp_path


def tiny_config(*overrides: str, files=(QUICKSTART, SMOKE)):
    from cnnkit.config import load_config

    return load_config(list(files), list(overrides))


def run_cli(*args: str, cwd=None, timeout: int = 300, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "CNNKIT_NO_PLUGINS": "1", "PYTHONPATH": str(REPO),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cnnkit", *args], cwd=cwd or os.getcwd(), env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit 2 and exactly one stderr line, ``cnnkit: error: ...`` containing ``fragment``; no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cnnkit: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
