"""The one place cnnkit reads a private part of Lightning; ``tests/test_lifecycle.py`` fails when it moves."""

from __future__ import annotations

from typing import Any


def logs_this_step(trainer: Any) -> bool:
    """Whether Lightning writes logs after the current training step (every ``log_every_n_steps``).

    Lightning has no public flag for this; its logger connector's ``should_update_logs`` is it.
    Without it, every step counts as a logging step (correct, only slower).
    """
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))
