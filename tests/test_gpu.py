"""Every CUDA path of cnnkit (``pytest -m gpu``; skipped without a GPU). ``scripts/gpu_check.sh`` runs them.

On one GPU torch's SyncBatchNorm does not synchronize (only above world size 1), so its conversion
and a forward/backward are exercised directly; true multi-GPU sync needs a machine with several.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import cnnkit
from tests.conftest import QUICKSTART, REPO, run_cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = [f"--config={REPO / 'configs/debug/smoke_gpu.yaml'}"]
CIFAR = "data.dataset={name: synthetic, shape: [3, 32, 32], samples: 2048}"


def gpu_config(*overrides: str):
    return cnnkit.load_config([QUICKSTART, str(REPO / "configs/debug/smoke_gpu.yaml")], list(overrides))


def test_the_tensor_loader_and_batched_transforms_run_on_the_gpu_with_device_generators():
    from cnnkit.data.tensor_loader import TensorBatches
    from cnnkit.registry import TRANSFORMS

    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(256) % 10
    transforms = [TRANSFORMS.build(name, optional={"size": (32, 32)}) for name in
                  ("random_crop", "random_resized_crop", "horizontal_flip", "cutout", "color_jitter",
                   "random_rotation")]
    loader = TensorBatches(images, labels, 64, shuffle=True, drop_last=True, seed=3, transforms=transforms,
                           device="cuda")
    first = [x.clone() for x, _ in loader]
    again = [x for x, _ in loader]
    assert all(x.device.type == "cuda" and x.shape == (64, 3, 32, 32) for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the same (seed, epoch), the same batches
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], first[0])


def test_sync_bn_converts_to_torchs_sync_batchnorm_and_runs_forward_and_backward():
    from cnnkit.distributed import convert_sync_bn

    model = cnnkit.build_model(gpu_config()).cuda()
    converted = convert_sync_bn(model, "cuda")
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    out = converted(torch.randn(8, 1, 8, 8, device="cuda"))
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in converted.parameters())


@pytest.mark.parametrize("switches", [
    ["trainer.precision=bf16-mixed"],
    ["trainer.precision=16-mixed"],
    ["trainer.precision=bf16-mixed", "trainer.channels_last=true"],
    ["trainer.precision=bf16-mixed", "trainer.compile=true"],
], ids=["bf16-mixed", "16-mixed", "bf16-channels-last", "bf16-compile"])
def test_speed_switches_train_with_a_finite_loss_and_a_checkpoint_that_reloads(tmp_path, switches):
    cfg = gpu_config(CIFAR, "data.batch_size=64", f"runs_dir={tmp_path}", *switches)
    result = cnnkit.fit(cfg)
    assert result.status == "finished" and torch.isfinite(torch.tensor(result.metrics["train/loss_epoch"]))
    reloaded = cnnkit.evaluate("test", str(result.last_checkpoint))
    assert 0.0 <= reloaded["test/acc"] <= 1.0
    keys = torch.load(result.last_checkpoint, weights_only=True)["state_dict"].keys()
    assert not any("_orig_mod" in k for k in keys)


KILLER = """
import os, signal
import lightning as L
from cnnkit import CALLBACKS

@CALLBACKS.register("kill_at")
class KillAt(L.Callback):
    def __init__(self, step: int = 10):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and not os.path.exists("killed"):
            open("killed", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
"""

EXACT = ["trainer.deterministic=true", "trainer.max_epochs=2", "trainer.limit_train_batches=null",
         "trainer.limit_val_batches=null", "checkpoint.every_n_steps=4", "trainer.log_every_n_steps=1",
         "model.backbone={name: simple_cnn, channels: [8, 16], hidden: [32], dropout: 0.3}",
         "data.augment=[random_crop, horizontal_flip, cutout]"]


def test_exact_resume_on_the_gpu_ends_bitwise_equal_with_the_cuda_rng_restored(tmp_path):
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    straight = run_cli("fit", "--config", QUICKSTART, *GPU, *EXACT, cwd=tmp_path / "a", env_extra=env)
    assert straight.returncode == 0, straight.stderr[-2000:]
    (tmp_path / "b" / "killer.py").write_text(KILLER)
    killed_args = ["fit", "--config", QUICKSTART, *GPU, *EXACT, "imports=[killer.py]", "callbacks=[{name: kill_at}]"]
    killed = run_cli(*killed_args, cwd=tmp_path / "b", env_extra=env)
    assert killed.returncode == -9
    resumed = run_cli(*killed_args, "--ckpt", "last", cwd=tmp_path / "b", env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (a,) = (tmp_path / "a" / "runs" / "quickstart").iterdir()
    (b,) = (tmp_path / "b" / "runs" / "quickstart").iterdir()
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    first, second = (torch.load(p / "checkpoints" / "last.ckpt", weights_only=True) for p in (a, b))
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    rng_a, rng_b = first["callbacks"]["RngState"], second["callbacks"]["RngState"]
    assert all(torch.equal(x, y) for x, y in zip(rng_a["rank0"]["cuda"], rng_b["rank0"]["cuda"]))
    assert json.loads((b / "status.json").read_text())["status"] == "finished"


def test_no_host_sync_per_step_from_cnnkit_in_bf16(tmp_path):
    """Between logging steps cnnkit's own code — the loader, the batched augmentation, the step guard —
    makes no synchronizing CUDA call (watched from one step's end to a later one's: the batch fetch too)."""
    import warnings

    from cnnkit.registry import CALLBACKS

    class Watch(__import__("lightning").Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 5:
                torch.cuda.set_sync_debug_mode("warn")
            if trainer.global_step == 15:
                torch.cuda.set_sync_debug_mode(0)

    CALLBACKS.register("sync_watch", Watch, override=True)
    cfg = gpu_config(CIFAR, "data.batch_size=64", "trainer.precision=bf16-mixed", "trainer.max_steps=16",
                     "data.augment=[random_crop, random_resized_crop, horizontal_flip, cutout, color_jitter, "
                     "random_rotation]",
                     "trainer.max_epochs=-1", "trainer.limit_train_batches=null", "trainer.log_every_n_steps=50",
                     "checkpoint.save_last=false", "callbacks=[sync_watch]", f"runs_dir={tmp_path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = cnnkit.fit(cfg)
    torch.cuda.set_sync_debug_mode(0)
    assert result.status == "finished"
    seen = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    ours = [s for s in seen if f"{os.sep}cnnkit{os.sep}" in s and "site-packages" not in s]
    assert not ours, ours
