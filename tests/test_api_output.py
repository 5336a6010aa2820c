"""The Python API prints what the command line prints: cnnkit's own lines, not Lightning's banners, its
product tip or its harmless warnings (``CNNKIT_VERBOSE=1`` brings the banners back, never the tip), and
leaves the caller's logging and warning settings as they were."""

from __future__ import annotations

import logging
import warnings

import pytest

import cnnkit
import cnnkit.console

from .conftest import tiny_config

CALLER_LEVELS = ("lightning.pytorch.utilities", "lightning.pytorch.trainer", "lightning.fabric.utilities")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def lightning_log(monkeypatch):
    """What Lightning logs (its loggers all log through ``lightning.pytorch``), with the CNNKIT_VERBOSE the
    test sets deciding (not an earlier in-process command line's --verbose)."""
    monkeypatch.setattr(cnnkit.console, "_verbose", None)
    records = Records()
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(records)
    yield records
    logger.removeHandler(records)


def test_the_api_prints_only_cnnkits_lines_and_restores_the_callers_settings(capsys, lightning_log):
    levels = {name: logging.getLogger(name).level for name in CALLER_LEVELS}
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        before = {f[1].pattern for f in warnings.filters if f[1] is not None}
        result = cnnkit.fit(tiny_config("trainer.max_epochs=2"))
        cnnkit.evaluate("test", str(result.last_checkpoint))
        cnnkit.predict(str(result.last_checkpoint), split="test")
        after = {f[1].pattern for f in warnings.filters if f[1] is not None}
    assert lightning_log.messages == []  # no "GPU available", "`Trainer.fit` stopped", "Restoring states", tip
    assert not [w for w in warned if "LeafSpec" in str(w.message)]  # shown 3 times before
    printed = capsys.readouterr()
    assert printed.err == "", printed.err
    assert len(printed.out.splitlines()) == 1 and printed.out.startswith("cnnkit: quickstart/"), printed.out
    assert {name: logging.getLogger(name).level for name in CALLER_LEVELS} == levels
    assert not (after - before) & set(cnnkit.console.HARMLESS_WARNINGS)  # none of cnnkit's filters left behind
    assert not logging.getLogger("lightning.pytorch.utilities.rank_zero").filters


def test_cnnkit_verbose_brings_lightnings_lines_back_but_never_its_tip(monkeypatch, capsys, lightning_log):
    result = cnnkit.fit(tiny_config())
    monkeypatch.setenv("CNNKIT_VERBOSE", "1")
    cnnkit.evaluate("test", str(result.last_checkpoint))
    assert any(m.startswith("GPU available") for m in lightning_log.messages), lightning_log.messages
    assert not any("Tip" in m for m in lightning_log.messages)
