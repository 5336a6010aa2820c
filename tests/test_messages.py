"""cnnkit.messages, the one writer to the terminal: the prefix, the streams, and which process speaks."""

import sys
import warnings

import pytest
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cnnkit import messages


def test_each_kind_of_line_has_its_stream_and_prefix(capsys):
    messages.note("data: 10 images")
    messages.show("a  table")
    messages.say("run kept")
    messages.warn("model.act=gelu has no effect")
    messages.error("error: no such file")
    out, err = capsys.readouterr()
    assert out == "cnnkit: data: 10 images\na  table\n"
    assert err == "cnnkit: run kept\ncnnkit: warning: model.act=gelu has no effect\ncnnkit: error: no such file\n"


def test_only_the_first_process_reports_but_every_process_says_why_it_stopped(capsys, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not messages.first_process()
    messages.note("n")
    messages.show("s")
    messages.say("x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        messages.flag("tta: flip has no effect here")  # would raise if it warned
    messages.error("interrupted")
    assert capsys.readouterr() == ("", "cnnkit: interrupted\n")


def test_the_rank_is_lightnings_once_set_and_the_launchers_before(monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 3)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert messages.rank() == 3  # a spawned DDP worker: Lightning's strategy set it, the environment may not
    monkeypatch.delitem(sys.modules, "lightning_utilities.core.rank_zero")
    assert messages.rank() == 1  # before Lightning is imported: the launcher's variables, in Lightning's order
    monkeypatch.setenv("RANK", "2")
    assert messages.rank() == 2
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("LOCAL_RANK")
    for key in ("SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert messages.rank() == 0


def test_an_idle_option_is_a_python_warning_with_the_prefix(monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with pytest.warns(UserWarning, match="^cnnkit: tta: flip has no effect here$"):
        messages.flag("tta: flip has no effect here")
