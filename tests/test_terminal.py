"""What a person sees: a header, one live bar and a summary on a terminal; a line per epoch in a pipe;
Lightning's and W&B's own output only with --verbose."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import pytest

from tests.conftest import QUICKSTART, REPO, SMOKE, assert_one_line_error

pytestmark = pytest.mark.slow  # each test is a process on a pseudo-terminal

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(*args: str, cwd, timeout: int = 300, columns: int = 120) -> str:
    """The command run on a pseudo-terminal of ``columns``; everything it wrote, as the terminal got it."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    # the size is the terminal's own: COLUMNS/LINES (pytest-xdist's workers set 80x24) would override it
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "COLUMNS", "LINES")},
        "WANDB_MODE": "offline",
        "CNNKIT_NO_PLUGINS": "1",
        "PYTHONPATH": str(REPO),
        "TERM": "xterm",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", *args], stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env
    )
    os.close(slave)
    chunks = []
    try:
        while select.select([master], [], [], timeout)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # the command ended and closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        proc.wait(timeout=60)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-3000:]
    return b"".join(chunks).decode(errors="replace")


def visible_lines(output: str) -> list[str]:
    """The lines left on the screen: each line's text after its last carriage return (a bar that
    redraws itself in place, then clears itself, leaves nothing)."""
    lines = []
    for line in output.replace("\r\n", "\n").split("\n"):
        text = ANSI.sub("", line.split("\r")[-1]).strip()
        if text:
            lines.append(text)
    return lines


NOISE = (
    "GPU available",
    "TPU available",
    "wandb:",
    "Trainable params",
    "┏",
    "Restoring states",
    "`Trainer.fit` stopped",
    "💡",
)


def test_a_quickstart_on_a_terminal_is_a_header_one_bar_and_a_summary(tmp_path):
    output = run_in_terminal(
        "fit", "--config", QUICKSTART, "trainer.max_epochs=3", "trainer.progress_bar=tqdm", cwd=tmp_path
    )
    lines = visible_lines(output)
    assert len(lines) <= 15, "\n".join(lines)
    assert lines[0].startswith(
        "cnnkit: quickstart/max_epochs=3 · cpu · 32-true · digits 1257/180/360 of 1x8x8, 10 classes · simple_cnn"
    ), lines[0]
    assert "53.2 K parameters · runs/quickstart/max_epochs=3" in lines[0]
    assert "\r" in output and "epoch 3/3" in output  # the live bar was there, with the epoch on it
    summary = "\n".join(lines[1:])
    assert re.search(r"cnnkit: finished quickstart/max_epochs=3 in [\d.]+ s", summary), summary
    assert re.search(r"test/acc 0\.\d{4}  test/loss", summary) and "best checkpoint: runs/quickstart" in summary
    assert "W&B is offline; upload the run with: wandb sync runs/quickstart/max_epochs=3/wandb/offline-run-" in summary
    assert not [line for line in lines if line.startswith(NOISE)], lines


def test_the_default_bar_with_rich_installed_is_riches_and_as_short(tmp_path):
    pytest.importorskip("rich")
    output = run_in_terminal("fit", "--config", QUICKSTART, "trainer.max_epochs=3", cwd=tmp_path, columns=100)
    lines = visible_lines(output)
    assert len(lines) <= 15, "\n".join(lines)
    assert lines[0].startswith("cnnkit: quickstart/max_epochs=3 · cpu")
    bars = [line for line in lines if line.startswith("epoch ")]
    assert len(bars) == 1 and bars[0].startswith("epoch 3/3") and "step: 57 loss:" in bars[0] and "val/acc:" in bars[0]
    assert len(bars[0]) <= 100  # one line on a 100-column terminal
    assert not any(line.startswith(("Testing", "Validation", "Sanity")) for line in lines), lines
    assert any(line.startswith("cnnkit: finished quickstart/max_epochs=3 in ") for line in lines)


def test_without_a_bar_the_whole_output_is_a_few_lines(tmp_path):
    output = run_in_terminal(
        "fit", "--config", QUICKSTART, "trainer.max_epochs=2", "trainer.progress_bar=none", cwd=tmp_path
    )
    lines = visible_lines(output)
    assert len(output.replace("\r\n", "\n").strip().split("\n")) == len(lines) <= 15, output
    assert "\r" not in output.replace("\r\n", "\n")
    assert lines[0].startswith("cnnkit: quickstart/max_epochs=2") and any("test/acc" in line for line in lines)


def test_verbose_brings_lightnings_and_wandbs_own_output_back(tmp_path):
    output = run_in_terminal(
        "fit", "--config", QUICKSTART, "--config", SMOKE, "logger.wandb.mode=offline", "--verbose", cwd=tmp_path
    )
    output = ANSI.sub("", output)
    assert "GPU available" in output and "wandb:" in output and "Trainable params" in output


def test_output_that_is_not_a_terminal_gets_a_line_per_epoch(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnnkit",
            "fit",
            "--config",
            QUICKSTART,
            "trainer.max_epochs=3",
            "trainer.progress_bar=tqdm",
            "logger.wandb.mode=disabled",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "CNNKIT_NO_PLUGINS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout + proc.stderr
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split("  ")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert re.fullmatch(r"epoch 3/3  step 57  loss [\d.e-]+  val/acc 0\.\d{4}  [\d.]+ s", epochs[-1]), epochs
    assert proc.stderr.strip() == "", proc.stderr  # nothing from Lightning or W&B


def test_a_matrix_is_a_line_per_variant_under_one_bar(tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text("name: mx\nmatrix:\n  model.norm: [bn_pre, bn_post]\n  seed: [0, 1]\n")
    output = run_in_terminal(
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        SMOKE,
        "--config",
        str(recipe),
        "trainer.progress_bar=tqdm",
        cwd=tmp_path,
    )
    lines = visible_lines(output)
    assert lines[0] == "cnnkit: mx: 4 runs (model.norm × seed) in runs/smoke/mx", lines
    variants = [line for line in lines if line.startswith("[")]
    assert [line.split("  ")[0] for line in variants] == [
        "[1/4] norm=bn_pre+seed=0",
        "[2/4] norm=bn_pre+seed=1",
        "[3/4] norm=bn_post+seed=0",
        "[4/4] norm=bn_post+seed=1",
    ], lines
    assert all(re.search(r"  finished  [\d.]+ s  test/acc 0\.\d{4}$", line) for line in variants), variants
    assert "run/s" in output  # the overall bar
    assert lines[-1].startswith("cnnkit: mx: 4 runs in ") and "(4 finished)" in lines[-1]
    assert "python -m cnnkit report runs/smoke/mx" in lines[-1]
    assert len(lines) == 6, lines


def test_a_bad_input_is_still_one_line_on_a_terminal_too(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("fit", "--config", QUICKSTART, "model.norm=bn_prre", cwd=tmp_path)
    assert_one_line_error(proc, "unknown norm 'bn_prre'")
    assert proc.stdout == ""  # the header comes after validation
