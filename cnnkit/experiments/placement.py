"""Where each ``--jobs`` worker runs and how many there are: pure functions of the machine, tested for 1, 2
and 8 GPUs without one.

A slot is one worker's share of the machine: its cores (threads for torch's OpenMP and the BLAS pools,
pinned with ``os.sched_setaffinity`` where the OS allows) and, where GPUs are visible, its device
(``CUDA_VISIBLE_DEVICES``; more slots than devices share them round robin).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from cnnkit.config.load import check_jobs, known_world_size
from cnnkit.config.plain import as_data

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
# Per-step work (multiply-accumulates of one batch's forward pass) from which a job takes two cores: where
# a second thread pays as well as a second job (two one-thread jobs side by side: ~1.9x). Measured on the
# course models (benchmarks/jobs.py --threads-gain, 2-core CPU, idle; results/jobs_threads_gain.json):
# a second thread gains 0.6-1.3x up to 6e6 MACs per batch, 1.4x at 1.6e8, 1.74x at 3.7e8, 1.97x at
# 3.2e9, 1.76x at 4.3e9: never clearly more than a second job, so one core each below 1e10.
TWO_THREADS_FROM_MACS = 1e10


# -- where each job runs (pure: tested for 1, 2 and 8 devices without one) ---------------------------
@dataclass(frozen=True)
class Slot:
    cpus: tuple[int, ...]  # the cores the job is pinned to
    gpu: Optional[str]  # its CUDA_VISIBLE_DEVICES entry; None on CPU


def slots(jobs: int, cpus: Sequence[int], gpus: Sequence[str] = ()) -> list[Slot]:
    """One slot per concurrent job: an equal share of ``cpus`` (the first ones one more where they do not
    divide; round robin when jobs outnumber cores), and device ``k % len(gpus)``: one job per device when
    jobs equal devices, several small jobs per device when there are more jobs."""
    cpus = list(cpus)
    result = []
    share, extra = divmod(len(cpus), jobs)
    start = 0
    for k in range(jobs):
        if share == 0:
            mine = (cpus[k % len(cpus)],)
        else:
            size = share + (1 if k < extra else 0)
            mine = tuple(cpus[start : start + size])
            start += size
        result.append(Slot(cpus=mine, gpu=str(gpus[k % len(gpus)]) if gpus else None))
    return result


def job_env(slot: Slot, base: Mapping[str, str], processes: int = 1) -> dict[str, str]:
    """A job's environment: ``base`` with its thread count for torch's OpenMP and the BLAS pools (its
    cores over the processes it starts: a ``ddp_cpu`` variant's ranks are not split again by Lightning,
    which divides only when ``OMP_NUM_THREADS`` is unset) and its device."""
    env = dict(base)
    threads = str(max(1, len(slot.cpus) // max(1, processes)))
    for variable in THREAD_VARIABLES:
        env[variable] = threads
    if slot.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = slot.gpu
    return env


def available_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def visible_gpus(accelerator: str, env: Mapping[str, str]) -> list[str]:
    """The CUDA devices jobs may take: none for ``trainer.accelerator: cpu``; CUDA_VISIBLE_DEVICES's own
    entries where it is set; else torch's count."""
    if str(accelerator).lower() == "cpu":
        return []
    if "CUDA_VISIBLE_DEVICES" in env:
        entries = [e.strip() for e in env["CUDA_VISIBLE_DEVICES"].split(",") if e.strip()]
        return [] if not entries or entries[0].startswith("-") else entries
    # startup: torch only where the GPUs must be counted
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def processes_of(cfg: Any) -> int:
    """How many processes a variant starts on its own (a ``ddp_cpu`` variant's ranks)."""
    if str(cfg.trainer.accelerator).lower() != "cpu" or "ddp" not in str(cfg.trainer.strategy):
        return 1
    return known_world_size(cfg.trainer) or 1


# -- how many ---------------------------------------------------------------------------------------
def step_macs(cfg: Any) -> float:
    """Multiply-accumulates of one training batch's forward pass: the work a second thread shares (traced
    once per model, dataset and batch size)."""
    key = _model_key(cfg)
    if key not in _traced:
        # startup: torch only for --jobs auto and the pool's order
        from cnnkit.nn.anatomy import describe_model

        info, model = _built(cfg)
        _traced[key] = float(describe_model(model, info.input_shape)["totals"]["macs"]) * int(cfg.data.batch_size)
    return _traced[key]


def _built(cfg: Any) -> tuple[Any, Any]:
    """The config's data info and model, built once per model, dataset and batch size for both measures."""
    key = _model_key(cfg)
    if key not in _models:
        # startup: torch only for --jobs auto and the pool's order
        from cnnkit.training.builders import build_model, data_info

        info = data_info(cfg)
        _models[key] = (info, build_model(cfg, info))
    return _models[key]


_traced: dict[str, float] = {}
_models: dict[str, tuple[Any, Any]] = {}


def auto_jobs(to_train: int, cores: int, gpus: int, macs: float) -> int:
    """``jobs: auto``: one job per visible device; on CPU one per core, or one per two cores for a model big
    enough that a second thread pays (``TWO_THREADS_FROM_MACS``); never more than there are to train."""
    if gpus:
        return max(1, min(to_train, gpus))
    per_job = 2 if macs >= TWO_THREADS_FROM_MACS and cores >= 2 else 1
    return max(1, min(to_train, cores // per_job))


def resolve_jobs(value: Any, to_train: Sequence[Any]) -> int:
    """The number of jobs for ``value`` (a number or ``auto``) and the configs to train."""
    check_jobs(value, "jobs")
    if not to_train:
        return 1
    if value != "auto":
        return min(int(value), len(to_train))
    gpus = visible_gpus(to_train[0].trainer.accelerator, os.environ)
    try:
        macs = 0.0 if gpus else max(step_macs(cfg) for cfg in to_train)  # traced once per distinct model
    except Exception:  # a model describe cannot trace: one core per job, the common case
        macs = 0.0
    return auto_jobs(len(to_train), len(available_cpus()), len(gpus), macs)


def _model_key(cfg: Any) -> str:
    return repr((as_data(cfg.model), as_data(cfg.data.dataset), cfg.data.batch_size))


def most_work_first(configs: Sequence[Any]) -> list[int]:
    """The order the pool's queue hands out the variants (positions into ``configs``): the most estimated
    work first, so a slow variant starts early instead of last with a core idle beside it (longest first).
    The estimate is a training step's time, measured on one thread over a few steps of the variant's model
    on random data of its shape (``step_seconds``: it sees what multiply-accumulates miss, a norm's noise or
    a small batch's overhead), per sample, times the samples trained on (``max_steps`` batches, else
    ``max_epochs`` passes over the training split, or the part ``limit_train_batches`` takes); ties keep
    matrix order, and so does every variant when a model cannot be built or its data read here."""

    def work(cfg: Any) -> float:
        steps, batch = cfg.trainer.max_steps, int(cfg.data.batch_size)
        samples = steps * batch if steps and steps > 0 else (cfg.trainer.max_epochs or 1) * epoch_samples(cfg)
        return step_seconds(cfg) / batch * samples

    try:
        estimates = [work(cfg) for cfg in configs]
    except Exception:  # a user's model that cannot be built or stepped here: the matrix's own order
        return list(range(len(configs)))
    return sorted(range(len(configs)), key=lambda position: -estimates[position])


def epoch_samples(cfg: Any) -> float:
    """Samples one epoch trains on: the training split, or the batches or fraction of it that
    ``trainer.limit_train_batches`` takes."""
    size, limit = training_size(cfg), cfg.trainer.limit_train_batches
    if limit is None:
        return size
    if isinstance(limit, float) and limit <= 1.0:
        return size * limit
    return min(size, int(limit) * int(cfg.data.batch_size))


def training_size(cfg: Any) -> int:
    """Samples in the config's training split (read once per dataset): an epoch's work, comparable across
    recipes that train for steps and for epochs."""
    key = repr(as_data(cfg.data.dataset))
    if key not in _sizes:
        # startup: torch only for the pool's order
        from cnnkit.config.plans import dataset_plan

        _sizes[key] = len(dataset_plan(cfg.data).build().load().train)
    return _sizes[key]


_sizes: dict[str, int] = {}


def step_seconds(cfg: Any, steps: int = 3) -> float:
    """Seconds of one training step (forward, backward, SGD) of the config's model on one thread: the
    fastest of ``steps`` after a first that warms up (measured once per model, dataset and batch size)."""
    key = _model_key(cfg)
    if key not in _stepped:
        # startup: torch only for the pool's order
        import time

        import torch

        info, model = _built(cfg)
        model.train()
        x = torch.randn(int(cfg.data.batch_size), *info.input_shape)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the workers' thread count, whatever this process has
        try:
            timed = []
            for _ in range(steps + 1):
                start = time.perf_counter()
                optimizer.zero_grad()
                model(x).square().mean().backward()  # a step's cost, not its objective (that is the module's)
                optimizer.step()
                timed.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)
        _stepped[key] = min(timed[1:])
    return _stepped[key]


_stepped: dict[str, float] = {}


def pin(pid: int, cpus: Sequence[int]) -> None:
    """Pin a process to its cores where the OS allows (Lightning and torch then count its share as the machine)."""
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, set(cpus))
        except OSError:  # it ended already, or the OS refuses: it runs unpinned, on its thread count
            pass
