"""One build plan per part: validation and construction make the same plans, and every config error
is raised before Lightning's Trainer exists."""

from __future__ import annotations

import re

import pytest

from cnnkit.config.load import load_config
from cnnkit.errors import ConfigError
from cnnkit.nn.layers.blocks import parse_bias

from .conftest import QUICKSTART, REPO, cli


def test_a_good_config_does_construct_a_trainer(tmp_path, trainers):
    """The recording fixture sees construction (so the bad-input tests of test_cli and test_reliability,
    which assert that none was, can fail)."""
    assert cli("fit", "--config", QUICKSTART, "--config", str(REPO / "configs/debug/smoke.yaml")).returncode == 0
    assert len(trainers) >= 1


def test_validation_makes_plans_and_builds_nothing_with_stand_in_arguments():
    config_source = (REPO / "cnnkit" / "config" / "load.py").read_text()
    assert not re.search(r"kernel_size=2|params=None|\.prepare\(", config_source)
    for path in (REPO / "cnnkit").rglob("*.py"):
        assert not re.search(r"[A-Z]+\.prepare\(|_INPUTS = \{", path.read_text()), path


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "callbacks=[{name: landscape, every_n_step: 5}]",
            "callbacks[0]: callback 'landscape' has no argument 'every_n_step' (did you mean 'every_n_steps'?)",
        ),
        ("trainer.devices=3", "data.batch_size=64 is the global batch: it must divide evenly by world size 3"),
        ("data.loader=tensor", "data.loader=tensor needs a data set held in memory"),
        ("model.bias=maybe", "model.bias: bias must be one of auto, true, false, got 'maybe'"),
        ("optim.optimizer={name: sgd, momentun: 0.9}", "did you mean 'momentum'"),
        ("optim.scheduler={name: cosine, warmup_step: 3}", "did you mean 'warmup_steps'"),
        ("model.pool={name: max, kernel: 3}", "model.pool: pooling 'max' has no argument 'kernel'"),
    ],
)
def test_errors_the_config_alone_determines_are_raised_by_validation(override, message, tmp_path):
    # files decoded per epoch (data.cache=none) are not in memory: the tensor path cannot serve them
    extra = (
        ["data.dataset={name: image_folder, root: nowhere, num_classes: 2}", "data.cache=none"]
        if "loader" in override
        else []
    )
    with pytest.raises(ConfigError) as caught:
        load_config([QUICKSTART], [override, *extra])
    assert message in str(caught.value)


def test_bias_is_parsed_once_into_auto_true_or_false():
    assert [parse_bias(v) for v in ("auto", "AUTO", True, "true", False, "False")] == [
        "auto",
        "auto",
        True,
        True,
        False,
        False,
    ]
    cfg = load_config([QUICKSTART], ["model.bias=false"])
    from cnnkit.config.plans import model_plan

    assert model_plan(cfg.model).bias is False
    with pytest.raises(ConfigError, match="bias must be one of auto, true, false, got 'yes please'"):
        parse_bias("yes please")
