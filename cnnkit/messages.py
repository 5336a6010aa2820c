"""The one writer to the terminal: every line cnnkit prints goes through these functions.

They add the ``cnnkit: `` prefix in one place and decide in one place (``first_process``) whether
this process speaks: under DDP every rank runs the command, and only the first reports. Results
(tables, YAML, JSON) go to stdout, notes, warnings and errors to stderr. This module imports no
other cnnkit module and nothing heavy, so every layer (the registry, the config, the data) can use
it and ``--help`` stays fast; what a run's output looks like is ``console.py``'s.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TextIO

PREFIX = "cnnkit: "
RANK_ENV = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")  # Lightning's order


def rank() -> int:
    """This process's global rank: Lightning's own once Lightning is imported (its strategy sets it in
    every worker, spawned ones too), else the launcher's environment, read as Lightning reads it."""
    lightning = sys.modules.get("lightning_utilities.core.rank_zero")
    known = getattr(getattr(lightning, "rank_zero_only", None), "rank", None)
    if known is not None:
        return int(known)
    for key in RANK_ENV:
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def first_process() -> bool:
    """Whether this process reports: the only one, or rank 0 of a distributed run."""
    return rank() == 0


def _write(text: str, stream: TextIO, end: str = "\n") -> None:
    stream.write(text + end)
    stream.flush()


def show(text: str, end: str = "\n") -> None:
    """A result (a table, a config, a report) on stdout as it is, from the first process."""
    if first_process():
        _write(text, sys.stdout, end)


def note(message: str) -> None:
    """What cnnkit decided for the user (the data path, an inferred size, a file written) on stdout,
    from the first process: stderr stays for what went wrong."""
    if first_process():
        _write(PREFIX + message, sys.stdout)


def say(message: str) -> None:
    """A note about the command itself (a run kept, a variant left out) on stderr, from the first process."""
    if first_process():
        _write(PREFIX + message, sys.stderr)


def warn(message: str) -> None:
    """Something the user may want to change, though the command goes on: stderr, first process."""
    say("warning: " + message)


def flag(message: str) -> None:
    """An option that does nothing in this run, as a Python warning (``UserWarning``: filterable, and seen
    by ``pytest.warns``), from the first process."""
    if first_process():
        warnings.warn(PREFIX + message, UserWarning, stacklevel=2)


def error(message: str) -> None:
    """Why the command stopped, one line on stderr, from whichever process stopped."""
    _write(PREFIX + message, sys.stderr)


def relay(line: str) -> None:
    """A line another library wrote to stderr while cnnkit held it, passed on as it was."""
    _write(line, sys.stderr)
