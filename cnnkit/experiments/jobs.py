"""A recipe's variants N at a time (``fit --jobs N|auto``, ``jobs:`` in a recipe), in worker processes.

A bounded pool (``concurrent.futures.ProcessPoolExecutor``) of one worker per slot (``placement.py``: its
share of the cores, or its GPU) takes the variants to train from its queue in matrix order, each worker
the next as it frees (``worker.py``): each variant is a single fit (its run directory, verdict, W&B run),
and a worker's start-up is paid once for all the variants it trains. The terminal shows one line per
variant as it ends, under the matrix's bar; each worker's output goes to ``runs/<name>/logs/job<k>.log``.
SIGINT and SIGTERM are forwarded to every worker (each in its own session, so a terminal's Ctrl-C reaches
them once, through here): the variants training record ``interrupted``, the rest do not start.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cnnkit.config.load import check_jobs
from cnnkit.console import ended_counts, matrix_display, verbose
from cnnkit.errors import CnnkitError
from cnnkit.experiments import worker
from cnnkit.experiments.placement import available_cpus, most_work_first, slots, visible_gpus
from cnnkit.messages import PREFIX
from cnnkit.runs.result import FitResult


def parse_jobs(text: str) -> Any:
    """The command line's ``--jobs`` value: ``auto`` or a number."""
    value: Any = int(text) if text.strip().lstrip("-").isdigit() else text.strip()
    check_jobs(value)
    return value


class JobsInterrupted(Exception):
    """SIGINT or SIGTERM stopped a ``--jobs`` matrix; every variant recorded where it stopped."""

    def __init__(self, name: str, signum: int, counts: dict[str, int], overwrite: bool = False):
        self.exit_code = 128 + signum
        tally = ", ".join(f"{n} {state}" for state, n in counts.items())
        command = (
            "the same command without --overwrite and with --ckpt last"
            if overwrite
            else "the same command with --ckpt last"
        )
        super().__init__(
            f"{name} interrupted by {signal.Signals(signum).name} ({tally}); {command} resumes the unfinished "
            f"variants and keeps the finished ones"
        )


def alone_command(
    files: Sequence[str],
    overrides: Sequence[str],
    variant: Optional[str],
    ckpt: Optional[str],
    init_from: Optional[str],
    overwrite: bool,
) -> list[str]:
    """The ``cnnkit fit`` command that trains this variant (of a matrix; None: the recipe's one run) by
    itself, as a user would type it."""
    command = [sys.executable, "-m", "cnnkit", "fit"]
    for file in files:
        command += ["--config", str(file)]
    if variant is not None:
        command += ["--only", variant]
    if ckpt:
        command += ["--ckpt", ckpt]
    if init_from:
        command += ["--init-from", init_from]
    if overwrite:
        command.append("--overwrite")
    return [*command, "--jobs", "1", *overrides]


@dataclass
class Recipe:
    """One recipe of a ``fit``: its config files, its base config, its runs (``api.PlannedRun``s in matrix
    order), whether the verdicts keep each, and the results of those kept (by place, from 1)."""

    files: list[str]
    base: Any
    runs: list[Any]
    keep: list[bool]
    kept: dict[int, FitResult] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return Path(self.base.runs_dir) / self.base.name / "logs"


class Pool:
    """One worker process per slot; ``stop`` (from a signal handler) forwards the signal to them."""

    def __init__(self, jobs: int, gpus: Sequence[str], command: tuple):
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: threads set before torch loads
        queue = context.SimpleQueue()
        for number, slot in enumerate(slots(jobs, available_cpus(), gpus), 1):
            queue.put((number, slot))
        self.executor = ProcessPoolExecutor(
            max_workers=jobs,
            mp_context=context,
            initializer=worker.start,
            initargs=(queue, verbose()),
        )
        self.ckpt, self.init_from, self.overwrite = command  # the fit command's own arguments
        self.stopped: Optional[int] = None  # the signal that stopped the pool

    def submit(self, fit: Callable[..., FitResult], recipe: Recipe, run: Any) -> Future:
        """Queue a planned run (``api.PlannedRun``) for the next free worker, with the command that trains it
        alone (the log shows it; a variant that needs a process of its own runs it)."""
        variant = run.cfg.variant if recipe.base.matrix else None  # a recipe without a matrix is its one run
        alone = alone_command(recipe.files, run.overrides, variant, self.ckpt, self.init_from, self.overwrite)
        return self.executor.submit(
            worker.train, fit, run.cfg, run.resume, self.init_from, self.overwrite, alone, str(recipe.log_dir)
        )

    def stop(self, signum: int) -> None:
        self.stopped = self.stopped or signum
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)
            except (OSError, TypeError):  # it ended already
                pass


def run_jobs(
    recipes: Sequence[Recipe],
    jobs: int,
    ckpt: Optional[str],
    init_from: Optional[str],
    overwrite: bool,
    fit: Callable[..., FitResult],
) -> list[list[FitResult]]:
    """Fit the recipes' runs with ``fit`` (``api.fit``) ``jobs`` at a time, in one pool; one list of results
    per recipe, in matrix order."""
    places = [(recipe, run) for recipe in recipes for run in recipe.runs]  # every run's place, from 1
    offsets = list(accumulate([0, *(len(recipe.runs) for recipe in recipes)]))
    results = {offset + i: result for recipe, offset in zip(recipes, offsets) for i, result in recipe.kept.items()}
    first = recipes[0].base
    gpus = visible_gpus(first.trainer.accelerator, os.environ)
    to_train = [index for index in range(1, len(places) + 1) if index not in results]
    failures: list[str] = []
    name = first.name if len(recipes) == 1 else f"{len(recipes)} recipes"
    with _display(name, recipes, places) as display:
        logs = " ".join(f"{recipe.log_dir}/" for recipe in recipes if not all(recipe.keep))
        display.write(
            f"{PREFIX}{name}: {len(to_train)} to train, {jobs} at a time "
            f"({'one per device' if gpus else 'each its share of the cores'}); their output in {logs}"
        )
        for index, result in sorted(results.items()):  # kept runs need no worker: their lines come first
            display.variant_ended(index, places[index - 1][1].cfg, result)
        if len(to_train) > jobs and not gpus:  # more than start at once: the slowest first (timed on CPU)
            to_train = [to_train[p] for p in most_work_first([places[i - 1][1].cfg for i in to_train])]
        pool = Pool(jobs, gpus, (ckpt, init_from, overwrite))
        _train(pool, fit, places, to_train, display, results, failures)
        ordered = [results[i] for i in sorted(results)]
        if pool.stopped is None and len(results) == len(places):
            display.close(ordered)
    if pool.stopped is not None:
        raise JobsInterrupted(name, pool.stopped, _ended_counts(ordered, len(places)), overwrite)
    if len(results) < len(places):  # a worker stopped by a signal of its own: the rest never started
        raise CnnkitError(
            f"{len(places) - len(results)} of {len(places)} variants were not trained: a worker was stopped by a "
            f"signal sent to it alone; the same command with --ckpt last trains them and keeps the finished"
        )
    if failures:
        raise CnnkitError(f"{len(failures)} of {len(places)} variants failed: {'; '.join(failures[:3])}")
    return [[results[offset + i] for i in range(1, len(recipe.runs) + 1)] for recipe, offset in zip(recipes, offsets)]


def _display(name: str, recipes: Sequence[Recipe], places: Sequence[tuple[Recipe, Any]]) -> Any:
    """The matrix's display: one recipe's keys and runs directory, or the recipes' names and their common one."""
    first = recipes[0].base
    return matrix_display(
        name,
        [run.cfg for _, run in places],
        show_bar=first.trainer.progress_bar != "none",
        runs_dir=recipes[0].log_dir.parent if len(recipes) == 1 else Path(first.runs_dir),
        keys=list(first.matrix) if len(recipes) == 1 else [recipe.base.name for recipe in recipes],
    )


def _train(
    pool: Pool,
    fit: Callable[..., FitResult],
    places: Sequence[tuple[Recipe, Any]],
    to_train: Sequence[int],
    display: Any,
    results: dict[int, FitResult],
    failures: list[str],
) -> None:
    """Queue the runs at ``to_train`` (places, in the order to start them) and show each as it ends; signals
    stop the pool (forwarded to its workers) until every worker has ended."""
    previous = _forward_signals(pool)
    try:
        futures = {
            pool.submit(fit, *places[index - 1]): index
            for index in to_train
            if pool.stopped is None  # a signal while they are queued: the rest never start
        }
        _show_as_they_end(pool, futures, places, display, results, failures)
    except BaseException:
        pool.stop(signal.SIGINT)  # nothing trains on unwatched
        raise
    finally:
        pool.executor.shutdown(wait=True, cancel_futures=True)
        _restore_signals(previous)


def _show_as_they_end(
    pool: Pool,
    futures: dict[Future, int],
    places: Sequence[tuple[Recipe, Any]],
    display: Any,
    results: dict[int, FitResult],
    failures: list[str],
) -> None:
    """One line per variant as it ends; a failed one is also kept for the command's last line."""
    for index, outcome in _as_they_end(pool, futures, places):
        cfg = places[index - 1][1].cfg
        results[index] = outcome.result
        display.variant_ended(index, cfg, outcome.result)
        if outcome.result.status == "failed" or outcome.error:
            why = outcome.error or "its worker ended"
            failures.append(f"{display.label(cfg)} ({why}; its output: {outcome.log})")


def _as_they_end(pool: Pool, futures: dict[Future, int], places: Sequence[tuple[Recipe, Any]]) -> Any:
    """(place, worker.Outcome) for each variant that started, as it ends; a variant whose worker died gets
    what its run directory says. Once the pool is stopped, the variants not yet started are cancelled."""
    started = time.time()
    pending = set(futures)
    while pending:
        done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        if pool.stopped is not None:
            for future in pending:
                future.cancel()
        for future in done:
            index = futures[future]
            if future.cancelled():
                continue
            try:
                outcome = future.result()
            except BaseException as err:  # a worker died (the pool then stops the others), or a result broke
                died = isinstance(err, BrokenProcessPool)
                why = "a worker process died (out of memory?)" if died else f"{type(err).__name__}: {err}"
                # what its run directory says: not started, interrupted where it was, or ended
                recipe, run = places[index - 1]
                result = worker.ended(run.cfg, since=started, interrupted=True)
                outcome = worker.Outcome(result, error=why.splitlines()[0], log=recipe.log_dir)
            if outcome.result is not None:  # None: it never started
                yield index, outcome


def _ended_counts(ordered: Sequence[FitResult], total: int) -> dict[str, int]:
    """How the variants ended when the pool was stopped: kept, finished, interrupted, ..., not started."""
    counts = ended_counts(ordered)
    if len(ordered) < total:
        counts["not started"] = total - len(ordered)
    return counts


def _forward_signals(pool: Pool) -> dict[int, Any]:
    """SIGINT, SIGTERM and SIGHUP stop the pool (forwarded to its workers) instead of this process; in the main
    thread (from another, the workers are stopped only when this process ends: each watches its parent)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in worker.STOP_SIGNALS:
        previous[signum] = signal.signal(signum, lambda s, _frame: pool.stop(s))
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
