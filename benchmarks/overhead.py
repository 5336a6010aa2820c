"""Framework overhead: per-step time of `cnnkit fit` vs a plain PyTorch loop, side by side.

The same model (built by cnnkit from the same config and seed), the same batches (the run's own
training loader) and the same optimizer, in one process, alternating cnnkit and plain runs and
taking the median of several repeats. cnnkit's steps are timed by a callback registered from this
file (the way a user extends the registry), so Lightning's start-up and the final test are not
counted: only steady-state training steps, with cnnkit's default logging settings.

    python benchmarks/overhead.py [--repeats 5] [--steps 200]
Targets on the project's 2-core CPU: ratio <= 1.05 for the CIFAR-shaped case, <= 1.4 for digits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cnnkit  # noqa: E402
from cnnkit.registry import CALLBACKS  # noqa: E402

CASES = {
    "digits simple_cnn, batch 64": ["data.dataset=digits", "data.batch_size=64"],
    "CIFAR-shaped 3x32x32 simple_cnn, batch 128": [
        "data.dataset={name: synthetic, shape: [3, 32, 32], samples: 20000}",
        "data.batch_size=128",
    ],
}
COMMON = [
    "model.backbone={name: simple_cnn, channels: [32, 64], hidden: [128]}",
    "model.norm=bn_pre",
    "optim.optimizer={name: sgd, momentum: 0.9}",
    "optim.lr=0.01",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.progress_bar=none",
    "trainer.enable_model_summary=false",
    "trainer.limit_val_batches=0",
    "trainer.limit_test_batches=1",
    "logger.wandb.mode=disabled",
    "checkpoint.save_top_k=0",
    "checkpoint.save_last=false",
    "checkpoint.monitor=train/loss_epoch",
    "checkpoint.mode=min",
    "trainer.max_epochs=-1",
    "trainer.max_steps=1000",
]


class StepTimer(L.Callback):
    def __init__(self, warmup: int = 20):
        self.warmup = warmup
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self.warmup:
            self.end = time.perf_counter()
            self.steps = trainer.global_step - self.warmup


TIMERS: list[StepTimer] = []


@CALLBACKS.register("step_timer", description="times training steps after a warm-up (benchmarks only)")
def step_timer(warmup: int = 20) -> StepTimer:
    TIMERS.append(StepTimer(warmup))
    return TIMERS[-1]


def cnnkit_step(overrides: list[str], steps: int, warmup: int, workdir: Path) -> float:
    cfg = cnnkit.load_config(
        [],
        [
            *COMMON,
            *overrides,
            f"trainer.max_steps={steps + warmup}",
            f"runs_dir={workdir}",
            "name=overhead",
            f"callbacks=[{{name: step_timer, warmup: {warmup}}}]",
        ],
    )
    cnnkit.fit(cfg, overwrite=True)
    timer = TIMERS[-1]
    return (timer.end - timer.start) / timer.steps


def plain_step(overrides: list[str], steps: int, warmup: int) -> float:
    cfg = cnnkit.load_config([], [*COMMON, *overrides])
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = cnnkit.build_datamodule(cfg)
    datamodule.load()
    model = cnnkit.build_model(cfg, datamodule.info)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, momentum=0.9, fused=True)  # as cnnkit's
    batches = iter(())
    start = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(datamodule.train_dataloader())
            x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = parser.parse_args()
    os.environ["WANDB_MODE"] = "disabled"
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "cnnkit-bench-runs"
    results = {}
    print(f"{'case':<44} {'plain ms/step':>14} {'cnnkit ms/step':>15} {'ratio':>7}")
    for case, overrides in CASES.items():
        plain, ours = [], []
        for _ in range(args.repeats):  # alternate, so machine noise hits both alike
            plain.append(plain_step(overrides, args.steps, args.warmup))
            ours.append(cnnkit_step(overrides, args.steps, args.warmup, workdir))
        p, c = statistics.median(plain), statistics.median(ours)
        results[case] = {
            "plain_ms": p * 1e3,
            "cnnkit_ms": c * 1e3,
            "ratio": c / p,
            "repeats": args.repeats,
            "steps": args.steps,
            "plain_all_ms": [v * 1e3 for v in plain],
            "cnnkit_all_ms": [v * 1e3 for v in ours],
        }
        print(f"{case:<44} {p * 1e3:>14.3f} {c * 1e3:>15.3f} {c / p:>7.3f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "cases": results}, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
