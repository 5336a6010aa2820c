"""A recipe's variants N at a time (``fit --jobs N|auto``, ``jobs:`` in a recipe), in processes of their own.

The variants to train are dealt round robin into two processes per slot, each ``python -m cnnkit fit
--config ... --only <variant> --only <variant> ...``: the command a user would type for them, so each
variant's run directory, verdict, interrupt handling, W&B run and report are a single fit's, and a
process's start-up (seconds: torch, Lightning) is paid once for several small variants. A bounded pool
(``concurrent.futures``) runs them; a queue of slots gives each running process its share of the cores
(``OMP_NUM_THREADS`` and friends, cores pinned with ``os.sched_setaffinity``) and, where GPUs are
visible, its device (``CUDA_VISIBLE_DEVICES``; more slots than devices share them round robin). A
process's output goes to ``runs/<name>/logs/job<k>.log``; the terminal shows one line per variant as its
status.json says it ended, under the matrix's bar. SIGINT and SIGTERM are forwarded to every running
process (each in its own session, so a terminal's Ctrl-C reaches them once, through here) and waited
for: the variant training records ``interrupted``, the rest do not start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from queue import Queue
from typing import Any, Mapping, Optional, Sequence

from cnnkit.config.load import check_jobs, known_world_size
from cnnkit.config.plain import as_data
from cnnkit.console import matrix_display
from cnnkit.errors import CnnkitError
from cnnkit.messages import PREFIX
from cnnkit.runs.result import FitResult
from cnnkit.runs.run_dir import RunDir

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
# Per-step work (multiply-accumulates of one batch's forward pass) from which a job takes two cores: a
# second thread then pays about as well as a second job. Below it one core each (a small CNN gains ~1.2x
# from a second thread, two one-thread jobs ~1.9x). See benchmarks/jobs.py --threads-gain.
TWO_THREADS_FROM_MACS = 2e9
# Processes per slot a matrix is dealt into: each pays a start-up (seconds: torch, Lightning) once for
# its variants; more than one per slot lets a slot whose variants ended early take more.
JOBS_PER_SLOT = 2


def parse_jobs(text: str) -> Any:
    """The command line's ``--jobs`` value: ``auto`` or a number."""
    value: Any = int(text) if text.strip().lstrip("-").isdigit() else text.strip()
    check_jobs(value)
    return value


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
    """Multiply-accumulates of one training batch's forward pass: the work a second thread shares."""
    # startup: torch only for --jobs auto
    from cnnkit.nn.anatomy import describe_model
    from cnnkit.training.builders import build_model, data_info

    info = data_info(cfg)
    return float(describe_model(build_model(cfg, info), info.input_shape)["totals"]["macs"]) * int(cfg.data.batch_size)


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
        macs = 0.0 if gpus else max(step_macs(cfg) for cfg in _distinct_models(to_train))
    except Exception:  # a model describe cannot trace: one core per job, the common case
        macs = 0.0
    return auto_jobs(len(to_train), len(available_cpus()), len(gpus), macs)


def _distinct_models(configs: Sequence[Any], most: int = 4) -> list[Any]:
    seen, chosen = set(), []
    for cfg in configs:
        key = repr((as_data(cfg.model), as_data(cfg.data.dataset), cfg.data.batch_size))
        if key not in seen:
            seen.add(key)
            chosen.append(cfg)
    return chosen[:most]


# -- the pool ---------------------------------------------------------------------------------------
@dataclass
class Job:
    """One process: a few variants (``members``: their places in the matrix, from 1, and configs), trained
    one after the other by ``cnnkit fit --only <variant> ...``. A process costs seconds to start (torch,
    Lightning), more than a small variant takes to train, so each job takes several."""

    number: int
    members: list[tuple[int, Any]]
    command: list[str]
    log: Path
    processes: int = 1
    started: float = 0.0  # time.time() when its process started
    reported: set = field(default_factory=set)  # members whose line is out
    failed: bool = False  # one of its variants failed (the process stops there)
    last_end: float = 0.0  # time.time() its last member ended (a member's seconds are since then)


def chunks(count: int, jobs: int, per_slot: int = JOBS_PER_SLOT) -> list[list[int]]:
    """The positions 0..count-1 dealt round robin into ``jobs * per_slot`` jobs (at most one per variant):
    neighbouring variants, which often share a slow setting, land in different jobs, and a slot that ends
    early takes the next job."""
    number = max(1, min(count, jobs * per_slot))
    return [list(range(k, count, number)) for k in range(number)]


class JobsInterrupted(Exception):
    """SIGINT or SIGTERM stopped a ``--jobs`` matrix; every job recorded where it stopped."""

    def __init__(self, name: str, signum: int, counts: dict[str, int]):
        self.exit_code = 128 + signum
        tally = ", ".join(f"{n} {state}" for state, n in counts.items())
        super().__init__(
            f"{name} interrupted by {signal.Signals(signum).name} ({tally}); the same command with "
            f"--ckpt last resumes the unfinished variants and keeps the finished ones"
        )


def child_command(
    files: Sequence[str],
    overrides: Sequence[str],
    variants: Sequence[str],
    ckpt: Optional[str],
    init_from: Optional[str],
    overwrite: bool,
) -> list[str]:
    """The ``cnnkit fit`` command that trains these variants, as a user would type it."""
    command = [sys.executable, "-m", "cnnkit", "fit"]
    for file in files:
        command += ["--config", str(file)]
    for variant in variants:
        command += ["--only", variant]
    if ckpt:
        command += ["--ckpt", ckpt]
    if init_from:
        command += ["--init-from", init_from]
    if overwrite:
        command.append("--overwrite")
    return [*command, "--jobs", "1", *overrides]


class Pool:
    """Runs jobs ``jobs`` at a time; ``stop`` forwards a signal to the running ones and starts no more."""

    def __init__(self, jobs: int, gpus: Sequence[str]):
        self.free: Queue[Slot] = Queue()
        for slot in slots(jobs, available_cpus(), gpus):
            self.free.put(slot)
        self.lock = threading.Lock()
        self.running: dict[int, subprocess.Popen] = {}
        self.stopped: Optional[int] = None  # the signal that stopped the pool

    def run(self, job: Job) -> Optional[int]:
        """The exit code of the job's process; None when the pool stopped before it started."""
        slot = self.free.get()
        try:
            with self.lock:  # a job starts only while the pool has not been stopped
                if self.stopped is not None:
                    return None
                job.log.parent.mkdir(parents=True, exist_ok=True)
                log = open(job.log, "a", encoding="utf-8")  # noqa: SIM115 (closed when the process ends)
                try:
                    log.write(f"$ {' '.join(job.command)}\n")
                    log.flush()
                    job.started = job.last_end = time.time()
                    process = subprocess.Popen(
                        job.command,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        env=job_env(slot, os.environ, job.processes),
                    )
                except BaseException:
                    log.close()
                    raise
                self.running[job.number] = process
            with log:
                _pin(process.pid, slot.cpus)
                code = process.wait()
            with self.lock:
                self.running.pop(job.number, None)
            return code
        finally:
            self.free.put(slot)

    def stop(self, signum: int) -> None:
        with self.lock:
            self.stopped = self.stopped or signum
            for process in self.running.values():
                if process.poll() is None:
                    process.send_signal(signum)


def _pin(pid: int, cpus: Sequence[int]) -> None:
    """Pin a job to its cores where the OS allows (Lightning and torch then count its share as the machine)."""
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(pid, set(cpus))
        except OSError:  # it ended already, or the OS refuses: it runs unpinned, on its thread count
            pass


def run_jobs(
    files: Sequence[str],
    base: Any,
    runs: Sequence[Any],
    kept: dict[int, FitResult],
    jobs: int,
    ckpt: Optional[str],
    init_from: Optional[str],
    overwrite: bool,
) -> list[FitResult]:
    """Fit ``runs`` (``api.PlannedRun``s in matrix order) ``jobs`` at a time; ``kept`` holds the results of
    those (by their place, from 1) that the verdicts kept. A variant's line comes as its status.json says
    it ended."""
    gpus = visible_gpus(base.trainer.accelerator, os.environ)
    pool = Pool(jobs, gpus)
    results: dict[int, FitResult] = {}
    failures: list[str] = []
    runs_dir = Path(base.runs_dir) / base.name
    work = _jobs_of(files, runs, kept, jobs, runs_dir, ckpt, init_from, overwrite)
    to_train = sum(len(job.members) for job in work)
    with matrix_display(
        base.name,
        [r.cfg for r in runs],
        show_bar=base.trainer.progress_bar != "none",
        runs_dir=runs_dir,
        keys=list(base.matrix),
    ) as display:
        display.write(
            f"{PREFIX}{base.name}: {to_train} to train in {len(work)} processes, {jobs} at a time "
            f"({'one per device' if gpus else 'each its share of the cores'}); their output in "
            f"{runs_dir / 'logs'}/"
        )
        for index, result in sorted(kept.items()):  # kept runs need no process: their lines come first
            results[index] = result
            display.variant_ended(index, runs[index - 1].cfg, result)
        _run_pool(pool, work, jobs, partial(_report_ended, results=results, failures=failures, display=display))
        ordered = [results[i] for i in sorted(results)]
        if pool.stopped is None:
            display.close(ordered)
    if pool.stopped is not None:
        raise JobsInterrupted(base.name, pool.stopped, _ended_counts(ordered, len(runs)))
    if failures:
        raise CnnkitError(f"{len(failures)} of {len(runs)} variants failed: {'; '.join(failures[:3])}")
    return ordered


def _report_ended(
    job: Job, code: Optional[int], results: dict[int, FitResult], failures: list[str], display: Any
) -> None:
    """Lines for the job's members that ended (all of them once its process has: ``code``)."""
    for index, cfg in job.members:
        if index in job.reported:
            continue
        result = member_result(cfg, job, code)
        if result is None:
            continue
        job.reported.add(index)
        if result.status == "not started":
            continue
        status_file = RunDir(result.run_dir).status_file
        ended = status_file.stat().st_mtime if status_file.is_file() else time.time()
        result.seconds, job.last_end = max(0.0, ended - job.last_end), max(ended, job.last_end)
        results[index] = result
        display.variant_ended(index, cfg, result)
        if result.status == "failed":
            job.failed = True
            failures.append(f"{cfg.variant} (exit {code}: {last_line(job.log)}; its output: {job.log})")


def _run_pool(pool: Pool, work: Sequence[Job], jobs: int, report: Any) -> None:
    """Run ``work`` ``jobs`` at a time with the signals forwarded; ``report(job, code)`` each second for the
    jobs running (``code`` None) and once for each that ended (its exit code)."""
    previous = _forward_signals(pool)
    try:
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="cnnkit-job") as executor:
            futures = {executor.submit(pool.run, job): job for job in work}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for job in work:
                    if job.started and job not in [futures[f] for f in done]:
                        report(job, None)
                for future in done:
                    report(futures[future], future.result())
    finally:
        _restore_signals(previous)


def _jobs_of(
    files: Sequence[str],
    runs: Sequence[Any],
    kept: dict[int, FitResult],
    jobs: int,
    runs_dir: Path,
    ckpt: Optional[str],
    init_from: Optional[str],
    overwrite: bool,
) -> list[Job]:
    """The processes to start: the variants to train, grouped by the overrides they take (one command line
    each) and dealt round robin into ``chunks`` of them."""
    groups: dict[tuple, list[tuple[int, Any]]] = {}
    for index, run in enumerate(runs, 1):
        if index not in kept:
            groups.setdefault(tuple(run.overrides), []).append((index, run))
    work: list[Job] = []
    for overrides, group in groups.items():
        for positions in chunks(len(group), jobs):
            members = [group[i] for i in positions]
            number = len(work) + 1
            work.append(
                Job(
                    number,
                    [(index, run.cfg) for index, run in members],
                    child_command(
                        files, overrides, [run.cfg.variant for _, run in members], ckpt, init_from, overwrite
                    ),
                    runs_dir / "logs" / f"job{number}.log",
                    max(processes_of(run.cfg) for _, run in members),
                )
            )
    return work


def _ended_counts(ordered: Sequence[FitResult], total: int) -> dict[str, int]:
    """How the variants ended when the pool was stopped: kept, finished, interrupted, ..., not started."""
    counts: dict[str, int] = {}
    for result in ordered:
        state = "kept" if result.kept else result.status
        counts[state] = counts.get(state, 0) + 1
    if len(ordered) < total:
        counts["not started"] = total - len(ordered)
    return counts


def member_result(cfg: Any, job: Job, code: Optional[int]) -> Optional[FitResult]:
    """A variant's result from its run directory's status.json, written by its job since the job started
    (the one writer is the job); None while it has not ended. After the process ended (``code``), a
    variant without such a status did not start, or, if the process failed on it, failed."""
    run = RunDir.for_config(cfg)
    fresh = run.status_file.is_file() and run.status_file.stat().st_mtime >= job.started - 1
    status = run.read_status() if fresh else {}
    state = status.get("status")
    if state not in ("finished", "diverged", "interrupted", "failed"):
        if code is None:
            return None  # still to come
        interrupted = code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
        if state == "running":  # it ended before its lifecycle could say how
            state = "interrupted" if interrupted else "failed"
        else:  # the process failed on the first variant it left without a status; the rest never started
            failed = code not in (0, 128 + signal.SIGINT, 128 + signal.SIGTERM) and not job.failed
            state = "failed" if failed else "not started"
    if state == "not started":
        return FitResult(status=state, run_dir=run.path)
    best = status.get("best_checkpoint")
    diverged = {k: status.get(k) for k in ("step", "lr", "reason", "last_good")} if state == "diverged" else None
    return FitResult(
        status=state,
        run_dir=run.path,
        metrics=status.get("metrics", {}) if state == "finished" else {},
        best_checkpoint=Path(best) if best else None,
        best_by=cfg.checkpoint.monitor,
        best_epoch=status.get("best_epoch"),
        epochs=status.get("epochs"),
        last_checkpoint=run.last_checkpoint if run.last_checkpoint.is_file() else None,
        diverged=diverged,
    )


def last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    return lines[-1].strip() if lines else "no output"


def _forward_signals(pool: Pool) -> dict[int, Any]:
    """SIGINT and SIGTERM stop the pool (forwarded to its jobs) instead of this process; in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, lambda s, _frame: pool.stop(s))
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
