"""``trainer.threads: auto``: the cores shared among the cnnkit fits running on the machine, seen through a
registry of their pids under a file lock; a user's (or a job's) OMP_NUM_THREADS wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from cnnkit.training import threads
from cnnkit.training.callbacks.threads import ThreadShare

from .conftest import QUICKSTART, assert_one_line_error, cli, tiny_config


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv(threads.REGISTRY_ENV, str(tmp_path / "fits"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    saved = torch.get_num_threads()
    yield threads.registry_file()
    torch.set_num_threads(saved)


@pytest.fixture
def other_fit():
    """Another process registered as a running fit (alive until the test ends)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_two_registrations_see_each_other_and_dead_pids_are_pruned(registry, other_fit):
    assert threads.register() == 1
    assert threads.register(other_fit.pid) == 2
    assert threads.register() == 2  # registering twice counts once
    assert sorted(json.loads(registry.read_text())) == sorted([other_fit.pid, os.getpid()])
    other_fit.kill()
    other_fit.wait()
    assert threads.running_fits() == 1  # its pid was pruned
    assert threads.unregister() == 1 and json.loads(registry.read_text()) == []


def test_auto_shares_the_cores_and_follows_the_fits_running(registry, other_fit):
    with threads.FitThreads("auto") as share:
        assert torch.get_num_threads() == 2  # alone: every core, as before
        threads.register(other_fit.pid)  # a second fit starts
        ThreadShare(share).on_train_epoch_start(None, None)
        assert torch.get_num_threads() == 1
        threads.unregister(other_fit.pid)  # and ends
        ThreadShare(share).on_train_epoch_start(None, None)
        assert torch.get_num_threads() == 2
    assert threads.running_fits() == 1 and json.loads(registry.read_text()) == []


def test_omp_num_threads_and_a_number_win(registry, monkeypatch, other_fit):
    threads.register(other_fit.pid)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.FitThreads("auto").wanted() == 3
    assert threads.FitThreads(4).wanted() == 4


def test_a_fit_is_registered_before_its_set_up_and_removed_after(registry, monkeypatch):
    from cnnkit import api

    seen = []
    original = api.build_datamodule

    def recording(cfg):
        seen.append(json.loads(registry.read_text()))
        return original(cfg)

    monkeypatch.setattr(api, "build_datamodule", recording)
    result = api.fit(tiny_config())
    assert result.status == "finished"
    assert seen == [[os.getpid()]] and json.loads(registry.read_text()) == []


@pytest.mark.parametrize("value", ["0", "many", "1.5"])
def test_bad_threads_values_are_one_line(value):
    assert_one_line_error(
        cli("fit", "--config", QUICKSTART, f"trainer.threads={value}"), "trainer.threads must be auto or a whole number"
    )
