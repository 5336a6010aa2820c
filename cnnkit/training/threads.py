"""How many threads a fit's torch takes (``trainer.threads``): by default the machine's cores shared
among the cnnkit fits running on it.

Two torch processes that each take every core run 2.3x slower on a 2-core machine than one after the
other (OpenMP threads spin-wait for each other). So every fit registers its pid in a small file of
running fits, under a file lock and before it sets anything up, so two fits started together see each
other; ``auto`` then takes cores // running fits (at least 1), and ``callbacks/threads.py`` re-checks
at every epoch as fits start and end. Where ``OMP_NUM_THREADS`` is set (by the user, or by a ``--jobs``
pool for its job) ``auto`` keeps it. Dead pids are pruned on every read.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator, Optional

from cnnkit.config.load import check_threads
from cnnkit.runs.atomic import atomic_write_text

REGISTRY_ENV = "CNNKIT_FITS_DIR"  # where the registry of running fits lives (default: the user cache dir)


def cores() -> int:
    """The cores this process may run on (its affinity: a pinned ``--jobs`` job sees its share)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def env_threads() -> Optional[int]:
    """``OMP_NUM_THREADS`` as a number, when it is set to one."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) >= 1 else None


def registry_file() -> Path:
    root = os.environ.get(REGISTRY_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cnnkit"
    )
    return Path(root) / "running_fits.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The registry held by this process alone (``fcntl.flock``; where there is none, unlocked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        try:
            import fcntl  # startup: POSIX only; where it is missing the registry goes unlocked
        except ImportError:  # Windows: no flock; a race only misjudges a thread count
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    return True


def _update(add: Optional[int] = None, remove: Optional[int] = None) -> int:
    """Change the registry (pruning dead pids) and return how many fits run now; 1 if it cannot be used."""
    path = registry_file()
    try:
        with _locked(path):
            try:
                pids = [p for p in json.loads(path.read_text()) if isinstance(p, int)]
            except (OSError, ValueError):
                pids = []
            pids = [p for p in pids if p != remove and _alive(p)]
            if add is not None and add not in pids:
                pids.append(add)
            atomic_write_text(path, json.dumps(pids))
            return max(1, len(pids))
    except OSError:  # a read-only home: each fit then counts itself alone
        return 1


def register(pid: Optional[int] = None) -> int:
    return _update(add=pid or os.getpid())


def unregister(pid: Optional[int] = None) -> int:
    return _update(remove=pid or os.getpid())


def running_fits() -> int:
    return _update()


class FitThreads:
    """A fit's thread count while it runs: registered on enter, re-applied by ``apply``, removed on exit."""

    def __init__(self, setting: Any):
        check_threads(setting)
        self.setting = setting
        self.from_env = env_threads()  # read once, before Lightning's DDP launcher may set it
        self.threads: Optional[int] = None

    def wanted(self) -> int:
        if self.setting != "auto":
            return int(self.setting)
        if self.from_env is not None:
            return self.from_env
        return max(1, cores() // running_fits())

    def apply(self) -> int:
        # startup: torch only once a fit trains
        import torch

        threads = self.wanted()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        self.threads = threads
        return threads

    def __enter__(self) -> "FitThreads":
        register()
        self.apply()
        return self

    def __exit__(self, *exc: Any) -> None:
        unregister()
