"""The GPU readiness check: every CUDA path of cnnkit and the GPU speed figures, in one go.

Parts (each runs even when an earlier one failed; the table says what ran):
1. ``pytest -m gpu`` (tests/test_gpu.py): tensor loader and batched transforms on CUDA, SyncBatchNorm
   conversion, bf16-mixed / 16-mixed / channels_last / compile with reloadable checkpoints, exact
   resume after SIGKILL with the CUDA RNG restored, no host sync of cnnkit's per step;
2. one smoke run per distinct model of the recipes, on generated data of the recipe's shape;
3. speed: the cifar10_fast model and batch on generated CIFAR-shaped data at 32-true, bf16-mixed,
   bf16 + channels_last and + compile, each beside the same steps in a plain PyTorch loop (the
   framework-overhead ratio), and a small fast network where Lightning's fixed per-step cost shows
   most; host synchronizations per training step between logging steps, by whose code makes them.

    python benchmarks/gpu_check.py [--cpu] [--quick] [--output benchmarks/results/gpu.json]
``--cpu --quick`` is the dry run the test suite makes: the same code on the CPU, a few steps each.
Exits 1 when any part failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import cnnkit  # noqa: E402
from cnnkit.config import to_plain  # noqa: E402
from cnnkit.matrix import combinations  # noqa: E402
from cnnkit.registry import CALLBACKS  # noqa: E402

RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if not p.name.endswith(".cpu.yaml"))


# -- 1. the CUDA tests ------------------------------------------------------------------------------
def gpu_tests(args) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                           str(REPO / "tests" / "test_gpu.py")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode not in (0, 5) or (not args.cpu and "skipped" in summary and "passed" not in summary):
        raise RuntimeError(f"pytest -m gpu: {summary}\n{proc.stdout[-4000:]}")
    return {"summary": summary}


# -- 2. a smoke run per distinct model --------------------------------------------------------------
def distinct_models(limit: int | None) -> list[tuple[str, list[str]]]:
    """(label, overrides) per distinct (model, input shape) over every recipe's matrix, on generated data."""
    seen, runs = set(), []
    for recipe in RECIPES:
        base = cnnkit.load_config([str(recipe)], validate_config=False)
        combos = [combo for _, combo, _ in combinations(base)] if base.matrix else [[]]
        for combo in combos:
            cfg = cnnkit.load_config([str(recipe)], [*combo, "variant=probe"], validate_config=False)
            info = cnnkit.data_info(cfg)
            key = json.dumps([to_plain(cfg.model), list(info.input_shape), info.num_classes], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            shape = list(info.input_shape) if len(info.input_shape) == 3 else None
            if shape is None:  # vector inputs (the error-surface recipe): its own generated data
                data = []
            else:
                data = [f"data.dataset={{name: synthetic, shape: {shape}, num_classes: {info.num_classes}, "
                        f"samples: 256}}", "data.augment=[]"]
            runs.append((f"{recipe.stem}:{'+'.join(combo) or 'default'}", [str(recipe), *combo, *data]))
    return runs[:limit] if limit else runs


def smoke_runs(args, workdir: Path, deadline: float) -> dict[str, Any]:
    overlay = REPO / "configs" / "debug" / ("smoke.yaml" if args.cpu else "smoke_gpu.yaml")
    done, failed, skipped = [], [], []
    models = distinct_models(3 if args.quick else None)
    for index, (label, (recipe, *overrides)) in enumerate(models):
        if time.monotonic() > deadline:
            skipped.append(label)
            continue
        try:
            cfg = cnnkit.load_config([recipe, str(overlay)], [*overrides, f"runs_dir={workdir}", f"name=smoke{index}",
                                                              "data.batch_size=16", "trainer.log_every_n_steps=1"])
            result = cnnkit.fit(cfg, overwrite=True)
            (done if result.status == "finished" else failed).append(label)
        except Exception as err:  # one model's failure is a finding, not the end of the check
            failed.append(f"{label}: {type(err).__name__}: {err}".splitlines()[0])
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(models)} models failed: " + "; ".join(failed[:5]))
    result = {"models": len(models), "finished": len(done)}
    if skipped:
        result["skipped (time budget)"] = skipped
    return result


# -- 3. speed -----------------------------------------------------------------------------------------
class StepTimer(L.Callback):
    """Times steps after a warm-up; counts synchronizing CUDA calls between logging steps by source.

    A watched window runs from one step's end to the next one's: fetching and augmenting the next
    batch, its forward and backward, the optimizer and the hooks, all of it.
    """

    def __init__(self, warmup: int, log_every: int):
        self.warmup, self.log_every = warmup, log_every
        self.start = self.end = 0.0
        self.steps = 0
        self.watched = 0
        self.watching = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup:
            _synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # the next step's number
        if self.watching:
            torch.cuda.set_sync_debug_mode(0)
            self.watching = False
            self.watched += 1
        if step > self.warmup:
            _synchronize()
            self.end = time.perf_counter()
            self.steps = step - self.warmup
        # watch the next step unless it logs (a logging step reads values back by design)
        if torch.cuda.is_available() and step >= self.warmup and (step + 1) % self.log_every != 0:
            torch.cuda.set_sync_debug_mode("warn")
            self.watching = True


TIMERS: list[StepTimer] = []


@CALLBACKS.register("gpu_check_timer", description="times training steps (benchmarks/gpu_check.py only)")
def gpu_check_timer(warmup: int = 10, log_every: int = 50) -> StepTimer:
    TIMERS.append(StepTimer(warmup, log_every))
    return TIMERS[-1]


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _source(filename: str) -> str:
    for mark, owner in ((f"{os.sep}cnnkit{os.sep}", "cnnkit"), ("lightning", "lightning"),
                        (f"torch{os.sep}optim", "optimizer"), ("torchmetrics", "torchmetrics")):
        if mark in filename and not (owner == "cnnkit" and "site-packages" in filename):
            return owner
    return "other"


SPEED_COMMON = ["trainer.progress_bar=none", "trainer.limit_val_batches=0", "trainer.limit_test_batches=1",
                "logger.wandb.mode=disabled", "checkpoint.save_top_k=0", "checkpoint.save_last=false",
                "checkpoint.monitor=train/loss_epoch", "checkpoint.mode=min", "trainer.max_epochs=-1",
                "trainer.devices=1", "trainer.cudnn_benchmark=null"]


def cnnkit_rate(cfg_files: list[str], overrides: list[str], steps: int, warmup: int, log_every: int,
                workdir: Path) -> tuple[float, dict[str, float]]:
    cfg = cnnkit.load_config(cfg_files, [*SPEED_COMMON, *overrides, f"trainer.max_steps={steps + warmup}",
                                         f"trainer.log_every_n_steps={log_every}", f"runs_dir={workdir}",
                                         "name=speed", f"callbacks=[{{name: gpu_check_timer, warmup: {warmup}, "
                                         f"log_every: {log_every}}}]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cnnkit.fit(cfg, overwrite=True)
    timer = TIMERS[-1]
    per_source: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            per_source[_source(w.filename)] = per_source.get(_source(w.filename), 0) + 1
    syncs = {k: v / max(1, timer.watched) for k, v in per_source.items()}
    return cfg.data.batch_size * timer.steps / (timer.end - timer.start), syncs


def plain_rate(cfg_files: list[str], overrides: list[str], steps: int, warmup: int, precision: str,
               channels_last: bool, compile_model: bool, device: str) -> float:
    """The same model, batches and optimizer in a plain loop: autocast for bf16, NHWC, torch.compile."""
    cfg = cnnkit.load_config(cfg_files, [*SPEED_COMMON, *overrides, f"trainer.max_steps={steps + warmup}"])
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = cnnkit.build_datamodule(cfg)
    datamodule.load()
    model = cnnkit.build_model(cfg, datamodule.info).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    step_model = torch.compile(model) if compile_model else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, fused=True)
    from cnnkit.data.tensor_loader import TensorBatches

    train = datamodule.load().train
    loader = TensorBatches(train.images, train.labels, cfg.data.batch_size, shuffle=True, drop_last=True,
                           seed=0, transforms=datamodule.transforms, device=device)
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    batches = iter(())
    start = 0.0
    for step in range(steps + warmup):
        if step == warmup:
            _synchronize()
            start = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(step_model(x), y, label_smoothing=cfg.loss.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _synchronize()
    return cfg.data.batch_size * steps / (time.perf_counter() - start)


def speed(args, workdir: Path, deadline: float) -> dict[str, Any]:
    device = "cpu" if args.cpu else "cuda"
    accelerator = ["trainer.accelerator=cpu"] if args.cpu else ["trainer.accelerator=gpu"]
    samples = 2048 if args.quick else 50_000
    cifar = [str(REPO / "recipes" / "cifar10_fast.yaml")]
    data = [f"data.dataset={{name: synthetic, shape: [3, 32, 32], samples: {samples}}}", *accelerator,
            "data.augment=[random_crop, horizontal_flip]"]
    steps, warmup = (4, 2) if args.quick else (60, 10)
    resnet = [("32-true", False, False), ("bf16-mixed", False, False), ("bf16-mixed", True, False),
              ("bf16-mixed", True, True)]
    small_settings = [("32-true", False, False), ("bf16-mixed", True, False)]
    if args.quick:
        resnet = small_settings = [("32-true", False, False)]
    cases: dict[str, Any] = {}
    small = ["model.backbone={name: simple_cnn, channels: [64, 128, 256], hidden: [256]}", "data.batch_size=512"]
    plan = [("cifar10_fast resnet18", ["data.batch_size=64"] if args.quick else [], setting) for setting in resnet]
    plan += [("small fast net (simple_cnn 64-128-256)", small if not args.quick else [*small[:1], "data.batch_size=64"],
              setting) for setting in small_settings]
    for label, extra, (precision, channels_last, compile_model) in plan:
        if time.monotonic() > deadline:
            cases[f"{label} · {precision}"] = {"skipped": "the time budget ran out"}
            continue
        name = f"{label} · {precision}" + (" · channels_last" if channels_last else "") + \
               (" · compile" if compile_model else "")
        switches = [f"trainer.precision={precision}", f"trainer.channels_last={str(channels_last).lower()}",
                    f"trainer.compile={str(compile_model).lower()}"]
        ours, plain, syncs = [], [], {}
        for _ in range(1 if args.quick or compile_model else 2):  # alternate
            rate, syncs = cnnkit_rate(cifar, [*data, *extra, *switches], steps, warmup, 50, workdir)
            ours.append(rate)
            plain.append(plain_rate(cifar, [*data, *extra, *switches], steps, warmup, precision, channels_last,
                                    compile_model, device))
        c, p = statistics.median(ours), statistics.median(plain)
        batch = cnnkit.load_config(cifar, [*data, *extra]).data.batch_size
        name = name.replace(" · ", f", batch {batch} · ", 1)
        cases[name] = {"cnnkit_images_per_s": c, "plain_images_per_s": p, "overhead": p / c,
                       "batch_size": batch, "host_syncs_per_step": syncs}
        print(f"  {name}: cnnkit {c:,.0f} images/s, plain {p:,.0f} images/s, overhead {p / c:.3f}x, "
              f"syncs/step {syncs or 0}", flush=True)
    return cases


# -- the check ----------------------------------------------------------------------------------------
def run_part(name: str, part: Callable[[], Any], results: dict[str, Any], output: Path) -> None:
    """Run one part and write every result so far: a check stopped by a time limit keeps what it measured."""
    print(f"== {name}", flush=True)
    started = time.monotonic()
    try:
        value = part()
        results[name] = {"ok": True, "seconds": time.monotonic() - started, "result": value}
    except Exception as err:
        results[name] = {"ok": False, "seconds": time.monotonic() - started,
                         "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-4000:]}
        print(f"   FAILED: {type(err).__name__}: {str(err)[:2000]}", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (the dry run)")
    parser.add_argument("--quick", action="store_true", help="a few steps and models per part")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "gpu.json"))
    parser.add_argument("--budget", type=float, default=420.0,
                        help="seconds the smoke runs and speed parts may start new work in (default 420)")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    from cnnkit.terminal import configure

    configure(verbose_output=False)  # Lightning's banners stay out of the check's output
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; use --cpu for the dry run", file=sys.stderr)
        return 1
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "cnnkit-gpu-check"
    results: dict[str, Any] = {
        "device": "cpu" if args.cpu else torch.cuda.get_device_name(0), "torch": torch.__version__,
        "lightning": L.__version__, "quick": args.quick, "cpu_dry_run": args.cpu}
    output = Path(args.output)
    started = time.monotonic()
    run_part("pytest -m gpu", lambda: gpu_tests(args), results, output)
    # the smoke runs get a third of what is left of the budget, the speed part the rest
    smoke_deadline = started + args.budget / 3
    run_part("smoke run per distinct model", lambda: smoke_runs(args, workdir, smoke_deadline), results, output)
    run_part("speed", lambda: speed(args, workdir, started + args.budget), results, output)
    print(f"\n{'part':<32} {'result':<8} {'seconds':>8}")
    for name in ("pytest -m gpu", "smoke run per distinct model", "speed"):
        part = results[name]
        print(f"{name:<32} {'ok' if part['ok'] else 'FAILED':<8} {part['seconds']:>8.1f}")
    for name, case in (results["speed"].get("result") or {}).items():
        if "skipped" in case:
            print(f"  {name}: skipped ({case['skipped']})")
        else:
            print(f"  {name}: cnnkit {case['cnnkit_images_per_s']:,.0f} images/s, plain {case['plain_images_per_s']:,.0f}"
                  f", overhead {case['overhead']:.3f}x, host syncs per step {case['host_syncs_per_step'] or 0}")
    print(f"wrote {output}")
    return 0 if all(results[n]["ok"] for n in ("pytest -m gpu", "smoke run per distinct model", "speed")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
