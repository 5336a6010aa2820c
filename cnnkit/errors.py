"""Errors a user can cause and fix: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class CnnkitError(Exception):
    """A mistake in the user's config, data, checkpoint or command line.

    The message is a complete sentence that names the problem and the fix; the CLI shows it
    without a traceback (``--debug`` shows one).
    """

    exit_code = 2


class ConfigError(CnnkitError):
    """The config (a file, an override or a value) is wrong."""


class RegistryError(ConfigError):
    """A registry name or its arguments are wrong."""


class DataError(CnnkitError):
    """The data a config points at is missing or unreadable."""


class CheckpointError(CnnkitError):
    """A checkpoint is missing, unreadable or does not fit the config."""


def own_message(err: BaseException) -> str:
    """The error's own message; torch wraps errors raised in DataLoader workers in a traceback text."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def first_line(err: BaseException, default: str = "") -> str:
    """The first line of an exception's message: libraries often append whole tracebacks or tables."""
    text = str(getattr(err, "msg", None) or err).strip()
    return text.splitlines()[0] if text else default


@contextmanager
def key_context(key: str) -> Iterator[None]:
    """Prefix an error raised while checking ``key`` with that key's path."""
    try:
        yield
    except CnnkitError as err:
        raise ConfigError(f"{key}: {err}") from err
