"""Each piece of shared arithmetic lives in one module: a source scan keeps it that way.

A copy of a formula in a second file is how two paths drift apart (BN's ε inside or outside the
square root, a seed formula changed in one loader only); these scans fail on such a copy.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SOURCES = {p.relative_to(REPO / "cnnkit").as_posix(): p.read_text() for p in (REPO / "cnnkit").rglob("*.py")}


def files_matching(pattern: str) -> list[str]:
    return sorted(name for name, text in SOURCES.items() if re.search(pattern, text))


@pytest.mark.parametrize(
    "what, pattern, home",
    [
        ("BN normalization", r"rsqrt|var\S*\s*\+\s*[\w.]*eps", ["nn/layers/bn_math.py"]),
        ("a running-statistics update", r"running_(mean|var)\.(mul_|add_|copy_)", ["nn/layers/bn_math.py"]),
        ("per-channel sums of squares", r"\(\w+ \* \w+\)\.sum\(1\)", ["nn/layers/bn_math.py"]),
        ("uint8 → float scaling", r"div_?\(255\)|/ ?255\b", ["data/pixels.py"]),
        ("a seed-mixing constant", r"1_000_003|7_919|10_000_019", ["data/seeding.py"]),
        ("a temporary-file rename", r"os\.replace|mkstemp", ["runs/atomic.py"]),
        ("the image-input check", r"def image_channels", ["nn/backbones/shapes.py"]),
        ("the classification loss", r"cross_entropy|nll_loss|CrossEntropyLoss|log_softmax", ["training/module.py"]),
    ],
)
def test_shared_arithmetic_is_written_in_one_module(what, pattern, home):
    assert files_matching(pattern) == home, f"{what} outside {home}"


def test_every_bn_variant_is_built_from_bn_math():
    users = files_matching(r"\bbn_math\b")
    for module in (
        "nn/layers/bn_scratch.py",
        "nn/layers/batch_stats.py",
        "nn/layers/input_norm.py",
        "training/distributed.py",
        "training/callbacks/precise_bn.py",
    ):
        assert module in users


def test_moments_of_a_batch_give_torchs_batch_statistics():
    from cnnkit.nn.layers import bn_math

    x = torch.randn(6, 3, 5, 4, dtype=torch.float64)
    moments = bn_math.Moments.zeros(3)
    moments.add(x[:2])
    moments.add(x[2:])  # two batches added = one batch of all
    mean, var = bn_math.batch_mean_var(x)
    torch.testing.assert_close(moments.mean, mean)
    torch.testing.assert_close(moments.var(), var)
    bn = nn.BatchNorm2d(3, momentum=0.3).double()
    reference = bn(x)
    ours = nn.BatchNorm2d(3, momentum=0.3).double()
    bn_math.update_running_stats(ours, moments.mean, moments.var(), moments.count)
    torch.testing.assert_close(bn_math.layer_normalize(ours, x, mean, var), reference)
    torch.testing.assert_close(ours.running_mean, bn.running_mean)
    torch.testing.assert_close(ours.running_var, bn.running_var)
