"""Shared fixtures: every test runs in its own directory, offline, on tiny digits runs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")

# Shrinks any recipe to a few CPU steps (the same overlay users get as configs/debug/smoke.yaml).
SMOKE = str(REPO / "configs" / "debug" / "smoke.yaml")


def pytest_configure(config):
    """Under pytest-xdist each worker, and every process a test starts, takes its share of the cores: two
    torch processes that each take both cores of a 2-core machine run 2.3x slower than one after the other."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        share = str(max(1, cores // workers))
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = share
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(share))


def pytest_collection_modifyitems(items):
    """Tests marked slow (they start processes or train whole runs) go first: pytest-xdist then shares the
    many short ones out around them, instead of the suite ending on one long test."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Run in a fresh directory (runs/ lands there), never touch W&B's servers or plugins."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("CNNKIT_NO_PLUGINS", "1")
    monkeypatch.delenv("CNNKIT_DEBUG", raising=False)
    yield tmp_path


@pytest.fixture(autouse=True)
def own_registrations():
    """What a test registers (a user's ``imports:`` file, a test's own entry) ends with the test, as it
    ends with a process: tests run in one process per worker, and a later test may register the same
    name from its own file."""
    from cnnkit import registry

    for each in registry.REGISTRIES.values():
        each._load_builtins()  # before the snapshot: built-in modules register once per process
    saved = {kind: (dict(r._entries), dict(r._aliases)) for kind, r in registry.REGISTRIES.items()}
    imported = dict(registry._imported_files)
    yield
    for kind, (entries, aliases) in saved.items():
        registry.REGISTRIES[kind]._entries, registry.REGISTRIES[kind]._aliases = entries, aliases
    registry._imported_files.clear()
    registry._imported_files.update(imported)


@pytest.fixture
def trainers(monkeypatch):
    """Every Lightning Trainer constructed from here on (construction itself goes ahead)."""
    import lightning.pytorch as pl

    made = []
    original = pl.Trainer.__init__

    def recording(self, *args, **kwargs):
        made.append(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", recording)
    return made


def tiny_config(*overrides: str, files=(QUICKSTART, SMOKE)):
    from cnnkit.config.load import load_config

    return load_config(list(files), list(overrides))


def edited_recipe(edit: str) -> tuple[str, ...]:
    """The tiny recipe's files with ``edit`` (YAML) written over them: a user who changes a recipe after
    running it. Its runs keep their names, so a finished one is refused rather than overwritten."""
    path = Path("edit.yaml").resolve()
    path.write_text(edit)
    return QUICKSTART, SMOKE, str(path)


def run_cli(*args: str, cwd=None, timeout: int = 300, env_extra=None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "CNNKIT_NO_PLUGINS": "1",
        "PYTHONPATH": str(REPO),
        **(env_extra or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "cnnkit", *args],
        cwd=cwd or os.getcwd(),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(proc, fragment: str) -> None:
    """Exit 2 and exactly one stderr line, ``cnnkit: error: ...`` containing ``fragment``; no traceback."""
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cnnkit: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@dataclass
class Finished:
    """What a command left, named as ``subprocess.CompletedProcess`` names it."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, env_extra=None) -> Finished:
    """``python -m cnnkit ARGS`` run in this process, in the current directory: its exit code and what it
    printed. An exception that escapes ``main`` is printed as Python prints it, exit code 1."""
    from cnnkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {key: os.environ.get(key) for key in (env_extra or {})}
    os.environ.update(env_extra or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse's own exits
                code = exit.code if isinstance(exit.code, int) else 1
            except Exception:  # what the interpreter would print (--debug re-raises)
                traceback.print_exc()
                code = 1
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Finished(code, out.getvalue(), err.getvalue())
