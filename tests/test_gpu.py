"""Every CUDA path of cnnkit (``pytest -m gpu``; skipped without a GPU). ``scripts/gpu_check.sh`` runs them.

Its CPU dry run (``scripts/gpu_check.sh --cpu``) runs the same tests on the CPU (``CNNKIT_GPU_TESTS_ON_CPU=1``),
so a mistake in a test shows before the one try on a GPU machine.
On one GPU torch's SyncBatchNorm does not synchronize (only above world size 1), so its conversion
and a forward/backward are exercised directly; true multi-GPU sync needs a machine with several.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import lightning as L
import pytest
import torch

import cnnkit
from cnnkit.registry import CALLBACKS
from tests.conftest import QUICKSTART, REPO, run_cli

DEVICE = "cuda" if torch.cuda.is_available() else "cpu" if os.environ.get("CNNKIT_GPU_TESTS_ON_CPU") == "1" else None
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE is None, reason="needs a CUDA GPU")]

OVERLAY = str(REPO / "configs" / "debug" / ("smoke_gpu.yaml" if DEVICE == "cuda" else "smoke.yaml"))
CIFAR = "data.dataset={name: synthetic, shape: [3, 32, 32], samples: 2048}"


def gpu_config(*overrides: str):
    return cnnkit.load_config([QUICKSTART, OVERLAY], list(overrides))


def test_the_tensor_loader_and_batched_transforms_run_on_the_gpu_with_device_generators():
    from cnnkit.data.tensor_loader import TensorBatches
    from cnnkit.registry import TRANSFORMS

    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(256) % 10
    transforms = [
        TRANSFORMS.build(name, optional={"size": (32, 32)})
        for name in (
            "random_crop",
            "random_resized_crop",
            "horizontal_flip",
            "cutout",
            "color_jitter",
            "random_rotation",
        )
    ]
    loader = TensorBatches(
        images, labels, 64, shuffle=True, drop_last=True, seed=3, transforms=transforms, device=DEVICE
    )
    first = [x.clone() for x, _ in loader]
    again = [x for x, _ in loader]
    assert len(first) == 4 and all(x.device.type == DEVICE and x.shape == (64, 3, 32, 32) for x in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # the same (seed, epoch), the same batches
    loader.sampler.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], first[0])


def test_sync_bn_converts_to_torchs_sync_batchnorm_and_runs_forward_and_backward():
    from cnnkit.training.distributed import convert_sync_bn

    model = cnnkit.build_model(gpu_config()).to(DEVICE)
    converted = convert_sync_bn(model, "cuda")  # what a multi-GPU run gets
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    out = converted(torch.randn(8, 1, 8, 8, device=DEVICE))
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in converted.parameters())


class LayoutProbe(L.Callback):
    """Records the memory format of the conv weights and of the network's input during training."""

    def __init__(self):
        self.weights_channels_last: list[bool] = []
        self.inputs_channels_last: list[bool] = []

    def on_train_start(self, trainer, pl_module):
        if not pl_module.cfg.trainer.compile:  # a hook inside a compiled module would be traced, not probed
            pl_module.model.register_forward_pre_hook(
                lambda module, args: self.inputs_channels_last.append(
                    args[0].is_contiguous(memory_format=torch.channels_last)
                )
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        convs = [m.weight for m in pl_module.model.modules() if isinstance(m, torch.nn.Conv2d)]
        self.weights_channels_last.append(
            bool(convs) and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
        )


PROBES: list[LayoutProbe] = []


@CALLBACKS.register("layout_probe", override=True)
def layout_probe() -> LayoutProbe:
    PROBES.append(LayoutProbe())
    return PROBES[-1]


@pytest.mark.parametrize(
    "switches",
    [
        ["trainer.precision=bf16-mixed"],
        ["trainer.precision=16-mixed"],
        ["trainer.precision=bf16-mixed", "trainer.channels_last=true"],
        ["trainer.precision=bf16-mixed", "trainer.channels_last=true", "trainer.compile=true"],
    ],
    ids=["bf16-mixed", "16-mixed", "bf16-channels-last", "bf16-channels-last-compile"],
)
def test_speed_switches_train_with_a_finite_loss_and_a_checkpoint_that_reloads(tmp_path, switches):
    from torch._dynamo.utils import counters

    cfg = gpu_config(CIFAR, "data.batch_size=64", f"runs_dir={tmp_path}", "callbacks=[layout_probe]", *switches)
    counters.clear()
    result = cnnkit.fit(cfg)
    assert result.status == "finished" and torch.isfinite(torch.tensor(result.metrics["train/loss_epoch"]))
    probe = PROBES[-1]
    assert len(probe.weights_channels_last) == 3  # the smoke overlay's three training batches
    channels_last = "trainer.channels_last=true" in switches
    assert set(probe.weights_channels_last) == {channels_last}
    if cfg.trainer.compile:  # dynamo captured and compiled the network's forward (a graph ran, not eager)
        assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    else:
        assert probe.inputs_channels_last and set(probe.inputs_channels_last) == {channels_last}
    reloaded = cnnkit.evaluate("test", str(result.last_checkpoint))
    assert 0.0 <= reloaded["test/acc"] <= 1.0
    keys = torch.load(result.last_checkpoint, weights_only=True)["state_dict"].keys()
    assert keys and not any("_orig_mod" in k for k in keys)


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

EXACT = [
    "trainer.deterministic=true",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=null",
    "trainer.limit_val_batches=null",
    "checkpoint.every_n_steps=4",
    "trainer.log_every_n_steps=1",
    "model.backbone={name: simple_cnn, channels: [8, 16], hidden: [32], dropout: 0.3}",
    "data.augment=[random_crop, horizontal_flip, cutout]",
]


def test_exact_resume_on_the_gpu_ends_bitwise_equal_with_the_cuda_rng_restored(tmp_path):
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "b" / "killer.py").write_text(KILLER)
    killed_args = [
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        OVERLAY,
        *EXACT,
        "imports=[killer.py]",
        "callbacks=[{name: kill_at}]",
    ]
    with ThreadPoolExecutor(2) as pool:  # the straight run beside the one that is killed: half the wait
        straight = pool.submit(
            run_cli, "fit", "--config", QUICKSTART, "--config", OVERLAY, *EXACT, cwd=tmp_path / "a", env_extra=env
        )
        killed = pool.submit(run_cli, *killed_args, cwd=tmp_path / "b", env_extra=env)
        straight, killed = straight.result(), killed.result()
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_cli(*killed_args, "--ckpt", "last", cwd=tmp_path / "b", env_extra=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (a,) = (tmp_path / "a" / "runs" / "smoke" / "quickstart").iterdir()  # the smoke overlay's runs_dir
    (b,) = (tmp_path / "b" / "runs" / "smoke" / "quickstart").iterdir()
    assert (a / "metrics.csv").read_text() == (b / "metrics.csv").read_text()
    first, second = (torch.load(p / "checkpoints" / "last.ckpt", weights_only=True) for p in (a, b))
    for key, value in first["state_dict"].items():
        assert torch.equal(value, second["state_dict"][key]), key
    rng_a, rng_b = first["callbacks"]["RngState"]["rank0"], second["callbacks"]["RngState"]["rank0"]
    assert torch.equal(rng_a["torch"], rng_b["torch"])
    assert len(rng_a["cuda"]) == len(rng_b["cuda"]) == (torch.cuda.device_count() if DEVICE == "cuda" else 0)
    assert all(torch.equal(x, y) for x, y in zip(rng_a["cuda"], rng_b["cuda"]))
    assert json.loads((b / "status.json").read_text())["status"] == "finished"


class HostRead(L.Callback):
    """A known host synchronization of the test's own, once a step: the counter must see it as 'other'."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        next(pl_module.parameters()).sum().item()


def test_no_host_sync_per_step_from_cnnkit_in_bf16(tmp_path):
    """Between logging steps cnnkit's own code — the loader, the batched augmentation, the step guard, the
    metrics it updates — makes no synchronizing call (watched from one step's end to a later one's: the
    batch fetch too; a sync inside torch or torchmetrics counts for the cnnkit code that called it)."""
    from benchmarks.gpu_check import SyncCounter, sync_counting_active

    counter = SyncCounter(start=5, steps=10, device=DEVICE)
    CALLBACKS.register("sync_counter", counter.callback, override=True)
    CALLBACKS.register("host_read", HostRead, override=True)
    cfg = gpu_config(
        CIFAR,
        "data.batch_size=64",
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=16",
        "data.augment=[random_crop, random_resized_crop, horizontal_flip, cutout, color_jitter, random_rotation]",
        "trainer.max_epochs=-1",
        "trainer.limit_train_batches=null",
        "trainer.log_every_n_steps=50",
        "checkpoint.save_last=false",
        "callbacks=[sync_counter, host_read]",
        f"runs_dir={tmp_path}",
    )
    result = cnnkit.fit(cfg)
    assert result.status == "finished"
    assert not sync_counting_active()  # off again after its window
    assert counter.watched == 10
    assert counter.counts.get("other", 0) >= 10, counter.summary()  # the test's own read, every watched step
    assert counter.counts.get("cnnkit", 0) == 0, counter.summary()
