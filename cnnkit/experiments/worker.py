"""One ``--jobs`` worker: a process set up once on its slot, which then trains the variants the pool hands it,
one after the other, in-process, as ``fit_recipe`` trains a matrix: the start-up (torch, Lightning), the
data loading and the first step's warm-up are paid once per slot, not once per variant, and a slot whose
variants end early takes the next one from the pool's queue.

Set-up (``start``, the pool's initializer, before torch is imported): the slot's thread variables (torch's
OpenMP pool reads them once, at import), its cores pinned, its device, its own session (a terminal's
Ctrl-C reaches the pool's parent, which forwards it once); from its first variant on, its output goes to
``runs/<recipe>/logs/job<k>.log`` of the recipe of the variant it trains.

A variant that starts processes of its own (``ddp_cpu``) is trained by ``cnnkit fit --only <variant>`` in
a fresh process: Lightning starts its other ranks by re-running the command line, and leaves its process
group behind for the next fit, so such a fit cannot share a process with others.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from cnnkit.console import configure, summary_block
from cnnkit.errors import CnnkitError, own_message
from cnnkit.experiments.placement import Slot, job_env, pin, processes_of
from cnnkit.messages import note, relay, show
from cnnkit.runs.result import FitResult
from cnnkit.runs.run_dir import RunDir


@dataclass
class _Worker:
    """This process's slot and whether the pool has been stopped (SIGINT or SIGTERM forwarded to it)."""

    number: int = 0
    slot: Optional[Slot] = None
    log: Optional[Path] = None
    stopped: bool = False
    fitting: bool = False  # a signal now interrupts the fit (KeyboardInterrupt, as Ctrl-C does)
    child: Optional[subprocess.Popen] = None  # the process of a variant that needs one of its own


_worker = _Worker()
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def start(slots: Any, verbose_output: bool) -> None:
    """The pool's initializer: take a slot from the queue and set this process up on it (its output goes to
    the log of the first variant it trains, beside that variant's recipe)."""
    for signum in STOP_SIGNALS:  # first: a signal while this process starts stops it cleanly too
        signal.signal(signum, _on_signal)
    number, slot = slots.get()
    _worker.number, _worker.slot = number, slot
    if hasattr(os, "setsid"):
        os.setsid()
    os.environ.update(job_env(slot, os.environ))
    pin(0, slot.cpus)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    configure(verbose_output=verbose_output)
    threading.Thread(target=_stop_with_the_parent, daemon=True).start()


def _log_to(log_dir: str) -> None:
    """This worker's output (the fits' and Python's own) to ``<log_dir>/job<k>.log``, appended: a pool over
    several recipes writes each variant's output beside its recipe's runs."""
    log_path = Path(log_dir) / f"job{_worker.number}.log"
    if log_path == _worker.log:
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    _worker.log = log_path


def _stop_with_the_parent() -> None:
    """A parent that died without forwarding a signal (kill -9, out of memory) stops its workers: the
    variant training records ``interrupted``, and the worker exits instead of waiting for work forever."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    parent.join()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)  # the interrupted fit's last checkpoint and status.json
    os._exit(128 + signal.SIGINT)


def _on_signal(signum: int, _frame: Any) -> None:
    """The pool was stopped: no variant starts here any more; the one training records ``interrupted``
    (Ctrl-C's KeyboardInterrupt; SIGTERM reaches Lightning's own handler, which stops at a batch's end)."""
    _worker.stopped = True
    if _worker.child is not None and _worker.child.poll() is None:
        _worker.child.send_signal(signum)
    elif _worker.fitting and (signum != signal.SIGTERM or signal.getsignal(signal.SIGTERM) is _on_signal):
        raise KeyboardInterrupt  # (SIGTERM inside trainer.fit goes to Lightning's handler instead)


@dataclass
class Outcome:
    """What a worker sends back for one variant: its result (None: not started) and, if it failed, why."""

    result: Optional[FitResult]
    error: Optional[str] = None
    log: Optional[Path] = None


def train(
    fit: Callable[..., FitResult],
    cfg: Any,
    resume: Optional[str],
    init_from: Optional[str],
    overwrite: bool,
    alone: Sequence[str],
    log_dir: str,
) -> Outcome:
    """Train one variant here with ``fit`` (``api.fit``, passed by reference: the pool sits below the API),
    or, for one that needs a process of its own, run ``alone``: the command that trains it by itself,
    written to the log (in ``log_dir``, its recipe's) for a user to rerun it."""
    if _worker.stopped:
        return Outcome(None, log=_worker.log)
    _log_to(log_dir)
    show(f"$ {' '.join(alone)}")
    if processes_of(cfg) > 1:
        return _in_a_process_of_its_own(cfg, alone)
    # startup: Lightning (which the lifecycle imports) in a worker, never on the parent's quick paths
    from cnnkit.runs.lifecycle import RunInterrupted

    started = time.time()
    try:
        _worker.fitting = True
        if _worker.stopped:  # stopped between the check above and now
            return Outcome(None, log=_worker.log)
        result = fit(cfg, ckpt=resume, init_from=init_from, overwrite=overwrite)
        note(summary_block(result))  # the lines the variant alone would end with, in the log
        return Outcome(result, log=_worker.log)
    except (KeyboardInterrupt, RunInterrupted):
        return Outcome(ended(cfg, since=started, interrupted=True), log=_worker.log)
    except BaseException as err:  # anything else (SystemExit too) is this variant's failure, said in one line
        error = own_message(err) if isinstance(err, CnnkitError) else f"{type(err).__name__}: {err}"
        relay(traceback.format_exc().rstrip())  # the log keeps the whole story; the terminal gets its first line
        return Outcome(ended(cfg, since=started, interrupted=False), error=error.splitlines()[0], log=_worker.log)
    finally:
        _worker.fitting = False
        signal.signal(signal.SIGINT, _on_signal)  # Lightning ignores SIGINT once it has handled one


def _in_a_process_of_its_own(cfg: Any, alone: Sequence[str]) -> Outcome:
    assert _worker.slot is not None
    started = time.time()
    env = job_env(_worker.slot, os.environ, processes_of(cfg))
    _worker.child = subprocess.Popen(alone, stdin=subprocess.DEVNULL, env=env)
    if _worker.stopped:  # a signal came while it started
        _worker.child.send_signal(signal.SIGINT)
    try:
        code = _worker.child.wait()
    finally:
        _worker.child = None
    interrupted = code in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM)
    result = ended(cfg, since=started, interrupted=interrupted)
    error = None if code == 0 or interrupted else f"exit {code}"
    return Outcome(result, error=error, log=_worker.log)


def ended(cfg: Any, since: float, interrupted: bool) -> Optional[FitResult]:
    """A variant's result from its status.json (written since ``since``, a time.time()), for a fit that did
    not return one: None if it never started; ``failed`` or ``interrupted`` if it stopped while running."""
    run = RunDir.for_config(cfg)
    fresh = run.status_file.is_file() and run.status_file.stat().st_mtime >= since - 1
    status = run.read_status() if fresh else {}
    state = status.get("status")
    if state is None:
        return None if interrupted else FitResult(status="failed", run_dir=run.path)
    if state == "running":  # it ended before its lifecycle could say how
        state = "interrupted" if interrupted else "failed"
    return FitResult.recorded(run, cfg, status, state)
