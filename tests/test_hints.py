"""Hints that work: each suggested command is run (in this process, as ``python -m cnnkit`` runs it) and
succeeds."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import QUICKSTART, REPO, SMOKE, assert_one_line_error, cli

DEEP = "model.backbone={name: simple_cnn, channels: [8, 8, 8, 8, 8], hidden: [16]}"


def test_inputs_too_small_suggests_a_resize_that_works(tmp_path):
    proc = cli("fit", "--config", QUICKSTART, "--config", SMOKE, DEEP)
    assert_one_line_error(proc, "simple_cnn needs inputs of at least 32x32, got 8x8")
    suggested = re.search(r"resize the data \((\S+)\)", proc.stderr).group(1)
    assert suggested == "data.dataset.image_size=32"
    fixed = cli("fit", "--config", QUICKSTART, "--config", SMOKE, DEEP, suggested)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert "of 1x32x32, 10 classes" in fixed.stdout


def test_arguments_for_a_part_named_alone_go_to_that_part():
    from cnnkit.config.load import load_config, to_plain

    cfg = load_config([QUICKSTART], ["data.dataset.image_size=16", "model.norm.momentum=0.01"])
    assert to_plain(cfg.data.dataset) == {"name": "digits", "image_size": 16}
    assert to_plain(cfg.model.norm) == {"name": "bn_pre", "momentum": 0.01}


def test_a_dataset_without_a_resize_key_is_not_told_to_resize(tmp_path):
    proc = cli(
        "fit",
        "--config",
        QUICKSTART,
        "--config",
        SMOKE,
        DEEP,
        "data.dataset={name: synthetic, shape: [1, 8, 8], samples: 100}",
    )
    assert_one_line_error(proc, "needs inputs of at least 32x32, got 8x8; use larger images or a shallower model")


def test_ckpt_last_without_a_config_finds_the_one_run_or_says_which_path_to_pass(tmp_path):
    first = cli("fit", "--config", QUICKSTART, "--config", SMOKE)
    assert first.returncode == 0, first.stderr[-2000:]
    alone = cli("test", "--ckpt", "last")
    assert alone.returncode == 0, alone.stderr[-2000:]
    assert "--ckpt last: runs/smoke/quickstart/default/checkpoints/last.ckpt (the only run under runs/)" in alone.stdout
    assert "test/acc" in alone.stdout
    best = cli("test", "--ckpt", "best")  # the best checkpoint, by checkpoint.monitor; epochs from 1
    assert best.returncode == 0
    assert "--ckpt best: runs/smoke/quickstart/default/checkpoints/best-epoch001-" in best.stdout

    second = cli("fit", "--config", QUICKSTART, "--config", SMOKE, "model.norm=bn_post")
    assert second.returncode == 0, second.stderr[-2000:]
    ambiguous = cli("test", "--ckpt", "last")
    assert_one_line_error(ambiguous, "--ckpt last needs the run's config to tell which of 2 runs")
    suggested = shlex.split(re.search(r"e\.g\. (--ckpt \S+)", ambiguous.stderr).group(1))
    fixed = cli("test", *suggested)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    with_config = cli("test", "--ckpt", "last", "--config", QUICKSTART, "--config", SMOKE, "model.norm=bn_post")
    assert with_config.returncode == 0, with_config.stderr[-2000:]
    by_override = cli("test", "--ckpt", "last", "model.norm=bn_post")  # the variant it names
    assert (
        by_override.returncode == 0
        and "--ckpt last: runs/smoke/quickstart/norm=bn_post/checkpoints/last.ckpt" in by_override.stdout
    ), by_override.stderr[-2000:]


MY_LAYERS = """
from torch import nn
from cnnkit import ACTIVATIONS, POOLINGS

ACTIVATIONS.register("my_act", nn.SiLU, description="my own activation")
POOLINGS.register("lp", lambda kernel_size: nn.LPPool2d(2, kernel_size), description="L2 pooling")
POOLINGS.register("fractional", lambda kernel_size: nn.FractionalMaxPool2d(kernel_size, output_ratio=0.5),
                  description="fractional max pooling")
"""


def test_list_and_describe_take_imports_like_fit(tmp_path):
    (tmp_path / "my_layers.py").write_text(MY_LAYERS)
    listed = cli("list", "activations", "imports=[my_layers.py]")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^  my_act\s+my own activation$", listed.stdout, re.M), listed.stdout
    filtered = cli("list", "activations", "my*", "imports=[my_layers.py]")
    assert filtered.stdout.splitlines() == [
        "activations:",
        "  my_act  my own activation",
        "            keys: inplace=false",
    ]
    described = cli("describe", "--config", QUICKSTART, "imports=[my_layers.py]", "model.act=my_act")
    assert described.returncode == 0 and "SiLU" in described.stdout, described.stderr


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("backbone.")}


def test_describe_follows_a_users_pooling_or_says_unknown(tmp_path):
    (tmp_path / "my_layers.py").write_text(MY_LAYERS)
    lp = cli("describe", "--config", QUICKSTART, "imports=[my_layers.py]", "model.pool=lp")
    assert lp.returncode == 0, lp.stderr
    rows = _rows(lp.stdout)
    # LPPool2d(2, 2): stride None means the kernel size, no padding; conv 3x3 → RF 3, pool 2/2 → RF 4, jump 2
    assert rows["backbone.0.1"][1:] == ["LPPool2d", "32x4x4", "0", "2/2/0", "4", "2", "0"]
    assert rows["backbone.0.2.conv"][5:7] == ["8", "2"]
    frac = cli("describe", "--config", QUICKSTART, "imports=[my_layers.py]", "model.pool=fractional")
    rows = _rows(frac.stdout)
    assert rows["backbone.0.1"][4:7] == ["-", "unknown", "unknown"]
    assert rows["backbone.0.2.conv"][5:7] == ["unknown", "unknown"]  # everything after it too


@pytest.mark.parametrize("word", ["norm", "norms", "Norm"])
def test_list_takes_a_registrys_singular_name(word, tmp_path):
    proc = cli("list", word)
    assert proc.returncode == 0 and proc.stdout.startswith("norms:\n") and "bn_pre" in proc.stdout


def test_list_datasets_shows_image_folders_keys_and_the_readme_lists_them(tmp_path):
    proc = cli("list", "datasets", "image_folder")
    assert "keys: root, layout=class_dirs, image_size=null, channels=null, splits=null, num_classes=null" in proc.stdout
    readme = (REPO / "README.md").read_text()
    for key in ("root", "layout", "image_size", "channels", "splits", "num_classes"):
        assert f"`data.dataset.{key}`" in readme, key
