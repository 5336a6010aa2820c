"""Command-line overrides compose left to right; a matrix's values are the recipe's; a run is named from
what differs from the recipe, in words a shell takes without quotes."""

import json
import re

import pytest
import yaml

import cnnkit
from cnnkit.api import plan_recipe
from cnnkit.cli import main
from cnnkit.config.load import load_config, to_plain
from cnnkit.errors import ConfigError
from cnnkit.experiments.matrix import combinations

from .conftest import QUICKSTART, REPO, SMOKE, tiny_config

# Per registry-spec key: the recipe's entry with an argument, another entry, and an argument of that one.
SPECS = [
    ("model.norm", {"name": "bn_pre", "momentum": 0.01}, "gn", "groups", 8),
    ("model.act", {"name": "relu", "inplace": True}, "gelu", "approximate", "tanh"),
    ("model.pool", {"name": "max", "dilation": 1}, "avg", "ceil_mode", True),
    ("model.init", {"name": "kaiming", "mode": "fan_out"}, "xavier", "gain", 0.5),
    ("model.backbone", {"name": "simple_cnn", "channels": [8, 16], "hidden": [32]}, "mlp", "hidden", [16]),
    ("data.dataset", {"name": "digits", "image_size": 16}, "mnist", "download", True),
    ("optim.optimizer", {"name": "sgd", "momentum": 0.9, "nesterov": True}, "adam", "betas", [0.8, 0.99]),
    ("optim.scheduler", {"name": "cosine", "warmup_steps": 5}, "step", "gamma", 0.5),
]
IDS = [key for key, *_ in SPECS]


def recipe_with(tmp_path, key, spec):
    section, leaf = key.split(".")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"include": [QUICKSTART], section: {leaf: spec}}))
    return str(path)


def flow(value):
    return json.dumps(value)  # YAML reads JSON


def name_forms(key, name):
    return [f"{key}={name}", f"{key}={{name: {name}}}", f"{key}.name={name}"]


@pytest.mark.parametrize("key, spec, name, argument, value", SPECS, ids=IDS)
def test_a_name_override_replaces_the_entry_and_later_dotted_keys_set_its_arguments(
    tmp_path, key, spec, name, argument, value
):
    recipe = recipe_with(tmp_path, key, spec)
    dotted = f"{key}.{argument}={flow(value)}"
    for named in name_forms(key, name):
        cfg = load_config([recipe], [named, dotted])  # validated: the new entry takes the argument
        assert to_plain(_select(cfg, key)) == {"name": name, argument: value}, named  # the recipe's are gone
        alone = to_plain(_select(load_config([recipe], [named], validate_config=False), key))
        assert alone in (name, {"name": name}), named  # the new entry at its defaults


@pytest.mark.parametrize("key, spec, name, argument, value", SPECS, ids=IDS)
def test_a_dotted_key_before_a_name_override_is_an_error_naming_both(tmp_path, key, spec, name, argument, value):
    recipe = recipe_with(tmp_path, key, spec)
    dotted = f"{key}.{argument}={flow(value)}"
    for named in name_forms(key, name):
        with pytest.raises(ConfigError) as caught:
            load_config([recipe], [dotted, named], validate_config=False)
        message = str(caught.value)
        assert f"'{dotted}' comes before '{named}'" in message and "\n" not in message
        assert f"put '{dotted}' after '{named}'" in message


@pytest.mark.parametrize("key, spec, name, argument, value", SPECS, ids=IDS)
def test_a_dotted_key_alone_sets_an_argument_of_the_recipes_entry(tmp_path, key, spec, name, argument, value):
    recipe = recipe_with(tmp_path, key, spec)
    first = next(k for k in spec if k != "name")
    changed = {
        "momentum": 0.5,
        "inplace": False,
        "dilation": 2,
        "mode": "fan_in",
        "channels": [4, 8],
        "image_size": 12,
        "warmup_steps": 2,
    }[first]
    cfg = load_config([recipe], [f"{key}.{first}={flow(changed)}"])
    assert to_plain(_select(cfg, key)) == {**spec, first: changed}


def _select(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_the_issues_commands_compose_at_the_command_line(capsys):
    assert main(["fit", "--config", QUICKSTART, "model.norm=gn", "model.norm.groups=8", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["norm"] == {"name": "gn", "groups": 8} and printed["variant"] == "norm=gn-groups8"
    assert (
        main(["fit", "--config", QUICKSTART, "data.dataset=mnist", "data.dataset.download=true", "--print-config"]) == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["dataset"] == {"name": "mnist", "download": True} and printed["variant"] == "dataset=mnist"
    assert main(["fit", "--config", QUICKSTART, "model.norm.groups=8", "model.norm=gn"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "cnnkit: error: override 'model.norm.groups=8' comes before 'model.norm=gn', which replaces "
        "model.norm with a new entry (its arguments start from that entry's defaults): put "
        "'model.norm.groups=8' after 'model.norm=gn'"
    )


MATRIX = """include: [{quickstart}, {smoke}]
name: placement
matrix:
  {key}: {values}
"""


@pytest.mark.parametrize(
    "key, values, override, taken_by, left_out",
    [
        ("model.norm", "[none, bn_pre, gn]", "model.norm.eps=0.001", ["bn_pre", "gn"], ["none"]),
        ("optim.optimizer", "[sgd, adam]", "optim.optimizer.momentum=0.5", ["sgd"], ["adam"]),
        ("data.dataset", "[digits, mnist]", "data.dataset.download=true", ["mnist"], ["digits"]),
    ],
    ids=["norm", "optimizer", "dataset"],
)
def test_a_matrixs_values_come_before_the_command_line_and_an_argument_is_left_out_where_not_taken(
    tmp_path, capsys, key, values, override, taken_by, left_out
):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(MATRIX.format(quickstart=QUICKSTART, smoke=SMOKE, key=key, values=values))
    argument, value = override.split("=")[0].rsplit(".", 1)[1], yaml.safe_load(override.split("=")[1])
    _, plans = plan_recipe([str(recipe)], [override])
    specs = {cfg.variant.split("=")[1]: to_plain(_select(cfg, key)) for cfg, _ in plans}
    for name in taken_by:
        assert specs[name] == {"name": name, argument: value}
    for name in left_out:
        assert specs[name] == name  # exactly the recipe's
    note = capsys.readouterr().err.strip()
    leaf = key.rsplit(".", 1)[1]
    assert note == (
        f"cnnkit: note: {override} is left out of {len(left_out)} of {len(plans)} variants, whose "
        f"{leaf} '{left_out[0]}' takes no argument '{argument}': {leaf}={left_out[0]}"
    )


def test_a_matrix_override_that_no_variant_takes_fails_before_anything_trains(tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(MATRIX.format(quickstart=QUICKSTART, smoke=SMOKE, key="model.norm", values="[none, input]"))
    with pytest.raises(ConfigError, match="model.norm: norm 'none' has no argument 'eps'"):
        cnnkit.fit_recipe([str(recipe)], ["model.norm.eps=0.001"])
    assert not (tmp_path / "runs").exists()


def test_the_bn_placement_recipe_sets_eps_where_its_norm_takes_it(capsys):
    _, plans = plan_recipe([str(REPO / "recipes/bn_placement.yaml")], ["model.norm.eps=1e-3"])
    norms = [to_plain(cfg.model.norm) for cfg, _ in plans]
    assert len(norms) == 36 and norms.count("none") == 12
    assert sorted(n["name"] for n in norms if n != "none") == ["bn_post"] * 12 + ["bn_pre"] * 12
    assert all(n["eps"] == 1e-3 for n in norms if n != "none")
    assert capsys.readouterr().err.strip() == (
        "cnnkit: note: model.norm.eps=1e-3 is left out of 12 of 36 variants, whose norm 'none' takes no argument "
        "'eps': act=sigmoid+norm=none+lr=1+seed=0, act=sigmoid+norm=none+lr=1+seed=1, "
        "act=sigmoid+norm=none+lr=1+seed=2 (+9 more)"
    )


@pytest.mark.parametrize(
    "override",
    [
        "model.act=relu",
        "model.act=Relu",
        "model.act={name: RELU}",
        "model.norm.name=BN-Pre",
        "optim.lr=0.05",
        "optim.optimizer={name: sgd, momentum: 0.9, nesterov: true}",
        "optim.scheduler=Cosine",
        "seed=0",
        "data.dataset=digits",
        "model.backbone.channels=[32, 64]",
    ],
)
def test_an_override_that_changes_nothing_names_no_new_variant(override):
    assert tiny_config(override).variant == "default"


def test_a_no_op_override_finds_the_recipes_own_run():
    first = cnnkit.fit(tiny_config())
    again = cnnkit.fit(tiny_config("model.act=Relu", "model.norm={name: bn_pre}"))
    assert again.kept and again.run_dir == first.run_dir and first.run_dir.name == "default"


TYPEABLE = re.compile(r"[A-Za-z0-9._=+-]+")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["model.norm=gn", "model.norm.groups=8"], "norm=gn-groups8"),
        (["model.norm={name: bn_pre, momentum: 0.01}"], "norm=bn_pre-momentum0.01"),
        (["model.norm.eps=1e-3"], "norm=bn_pre-eps0.001"),
        (["imports=[my_norms.py]", "model.norm=bn_post"], "norm=bn_post+imports=my_norms.py"),
        (["imports=[plugins/a b.py, 'x*(1).py']"], "imports=plugins_a_b.py-x__1_.py"),
        (["data.augment=[random_crop, {name: cutout, size: 4}]"], "augment=random_crop-cutout-size4"),
        (["model.backbone={name: mlp, hidden: [16, 8]}", "optim.lr=0.5"], "backbone=mlp-hidden16-8+lr=0.5"),
        (["data.dataset={name: mnist, root: 'data/my mnist', download: true}"], "dataset=mnist-rootdata_my_mnist"),
        (["optim.optimizer.nesterov=false"], "optimizer=sgd-momentum0.9-nesterovfalse"),
        (["optim.lr=1.0e+30"], "lr=1e+30"),
    ],
)
def test_run_names_are_typed_without_quotes(overrides, expected):
    cfg = load_config([QUICKSTART], overrides, validate_config=False)
    assert cfg.variant == expected and TYPEABLE.fullmatch(cfg.variant)


def test_matrix_names_are_typed_without_quotes_and_select_with_only(tmp_path):
    recipe = tmp_path / "m.yaml"
    recipe.write_text(
        "matrix:\n  model.norm: [none, {name: bn_pre, momentum: 0.01}]\n"
        "  data.augment: [[], [random_crop, horizontal_flip]]\n"
    )
    cfg = load_config([str(recipe)])
    names = [name for name, _, _ in combinations(cfg)]
    assert names == [
        "norm=none+augment=none",
        "norm=none+augment=random_crop-horizontal_flip",
        "norm=bn_pre-momentum0.01+augment=none",
        "norm=bn_pre-momentum0.01+augment=random_crop-horizontal_flip",
    ]
    assert all(TYPEABLE.fullmatch(n) for n in names)
    only = combinations(cfg, ["norm=bn_pre-momentum0.01", "augment=random_crop-horizontal_flip"])
    assert [n for n, _, _ in only] == [names[3]]


def test_fit_without_a_recipe_says_how_to_give_one(capsys):
    assert main(["fit", "model.norm=gn"]) == 2
    assert capsys.readouterr().err.strip() == (
        "cnnkit: error: fit needs a recipe: --config FILE (e.g. --config recipes/quickstart.yaml); to train the "
        "built-in defaults without one, name the run: name=NAME"
    )
    assert main(["fit", "name=mine", "trainer.max_epochs=0"]) == 2  # past that check, to the config's own
    assert "trainer.max_epochs must be >= 1" in capsys.readouterr().err


def test_a_rerun_compares_entry_names_as_the_registry_reads_them():
    from cnnkit.config.diff import RESULT_NEUTRAL, differences

    stored = {"model": {"act": "relu", "norm": {"name": "bn_pre", "momentum": 0.1}}, "data": {"dataset": "mnist"}}
    assert (
        differences(
            stored,
            {
                "model": {"act": "Relu", "norm": {"name": "BN-Pre", "momentum": 0.1}},
                "data": {"dataset": {"name": "mnist", "download": True}},
            },
            RESULT_NEUTRAL,
        )
        == []
    )
    assert differences(
        stored, {"model": {"act": {"name": "relu", "inplace": True}, "norm": "bn_pre"}, "data": {"dataset": "mnist"}}
    ) == [("model.act.inplace", None, True), ("model.norm.momentum", 0.1, None)]
    assert differences(stored, {"model": {**stored["model"], "act": "gelu"}, "data": stored["data"]}) == [
        ("model.act", "relu", "gelu")
    ]
