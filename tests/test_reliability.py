"""Reliability: exact resume after SIGKILL, checkpoints that never corrupt."""

import json
import subprocess
import textwrap

import pytest
import torch

from .conftest import QUICKSTART, run_cli

EXACT = [
    "trainer.deterministic=true", "trainer.max_epochs=3", "trainer.progress_bar=none",
    "trainer.enable_model_summary=false", "checkpoint.every_n_steps=4", "trainer.log_every_n_steps=1",
    "model.backbone={name: simple_cnn, channels: [8, 16], hidden: [32], dropout: 0.3}",
    "data.augment=[random_crop, horizontal_flip, cutout]", "optim.scheduler=cosine",
]

KILLER = textwrap.dedent("""
    import os, signal
    import lightning as L
    from cnnkit import CALLBACKS

    @CALLBACKS.register("kill_at_step")
    class KillAtStep(L.Callback):
        def __init__(self, step: int):
            self.step = step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == self.step:
                os.kill(os.getpid(), signal.SIGKILL)
""")


def final_state(path):
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["state_dict"], checkpoint["optimizer_states"][0], checkpoint["global_step"]


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("loader", ["tensor", "dataloader"])
@pytest.mark.parametrize("kill_step", [26])
def test_killed_and_resumed_run_ends_bitwise_equal(tmp_path, loader, kill_step):
    (tmp_path / "killer.py").write_text(KILLER)
    common = ["--config", QUICKSTART, *EXACT, f"data.loader={loader}", "data.num_workers=0"]
    straight = run_cli("fit", *common, "name=straight", cwd=tmp_path, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = run_cli("fit", *common, "name=killed", "imports=[killer.py]",
                     f"callbacks=[{{name: kill_at_step, step: {kill_step}}}]", cwd=tmp_path, timeout=600)
    assert killed.returncode == -9
    status = json.loads((tmp_path / "runs/killed/default/status.json").read_text())
    assert status["status"] == "running"  # what a kill leaves; resume picks it up
    resumed = run_cli("fit", *common, "name=killed", "--ckpt", "last", cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = final_state(tmp_path / "runs/straight/default/checkpoints/last.ckpt")
    b = final_state(tmp_path / "runs/killed/default/checkpoints/last.ckpt")
    assert a[2] == b[2]
    assert_same(a[0], b[0])  # parameters and BN buffers
    assert_same(a[1], b[1])  # optimizer state


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    common = ["--config", QUICKSTART, "trainer.max_epochs=2", "trainer.progress_bar=none",
              "trainer.enable_model_summary=false", "checkpoint.save_top_k=0", "checkpoint.every_n_steps=5"]
    proc = run_cli("fit", *common, cwd=tmp_path, env_extra={"CNNKIT_FAULT_KILL_IN_SAVE": "2"})
    assert proc.returncode == -9
    checkpoints = tmp_path / "runs/quickstart/default/checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)  # the first save, whole
    assert last["global_step"] == 5
    assert not list(checkpoints.glob("*.tmp")) or all(p.name.startswith(".") for p in checkpoints.glob("*.tmp"))
    resumed = run_cli("fit", *common, "--ckpt", "last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "runs/quickstart/default/status.json").read_text())["status"] == "finished"


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    import resource
    import sys

    common = ["--config", QUICKSTART, "trainer.max_epochs=2", "trainer.progress_bar=none",
              "trainer.enable_model_summary=false", "checkpoint.save_top_k=0", "checkpoint.every_n_steps=5",
              "logger.wandb.mode=disabled"]
    first = run_cli("fit", *common, "trainer.max_steps=5", cwd=tmp_path)  # one whole checkpoint first
    assert first.returncode == 0, first.stderr[-2000:]
    size = (tmp_path / "runs/quickstart/default/checkpoints/last.ckpt").stat().st_size

    def limit():  # files may grow to half a checkpoint: the next save cannot complete
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    env = {**__import__("os").environ, "WANDB_MODE": "disabled", "CNNKIT_NO_PLUGINS": "1",
           "PYTHONPATH": str(QUICKSTART.rsplit("/recipes", 1)[0])}
    proc = subprocess.run([sys.executable, "-m", "cnnkit", "fit", *common, "--ckpt", "last"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cnnkit: error:")]
    assert len(errors) == 1 and "disk is full or a file-size limit" in errors[0] and "Traceback" not in proc.stderr
    checkpoints = tmp_path / "runs/quickstart/default/checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not list(checkpoints.glob(".*.tmp"))
    assert json.loads((tmp_path / "runs/quickstart/default/status.json").read_text())["status"] == "failed"
