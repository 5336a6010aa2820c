import pytest
from omegaconf import OmegaConf

from cnnkit.config.load import SCHEMA_VERSION, load_config, to_plain
from cnnkit.config.schema import (
    ARGUMENT_ROLES,
    CHOICES,
    HOW,
    LENGTH,
    LIMIT,
    NAME_ORDER,
    PLACE,
    keys_with,
    schema_fields,
)
from cnnkit.errors import ConfigError

from .conftest import QUICKSTART


def write(path, text):
    path.write_text(text)
    return str(path)


def test_files_merge_in_order_and_overrides_win(tmp_path):
    a = write(tmp_path / "a.yaml", "model: {norm: bn_post}\noptim: {lr: 0.5}\n")
    b = write(tmp_path / "b.yaml", "optim: {lr: 0.2}\n")
    cfg = load_config([a, b], ["trainer.max_epochs=3"])
    assert (cfg.model.norm, cfg.optim.lr, cfg.trainer.max_epochs) == ("bn_post", 0.2, 3)
    assert load_config([a, b], ["optim.lr=0.01"]).optim.lr == 0.01


def test_include_is_relative_to_the_including_file(tmp_path):
    (tmp_path / "parts").mkdir()
    write(tmp_path / "parts" / "base.yaml", "model: {act: tanh}\ntrainer: {max_epochs: 2}\n")
    top = write(tmp_path / "top.yaml", "include: [parts/base.yaml]\ntrainer: {max_epochs: 4}\n")
    cfg = load_config([top])
    assert cfg.model.act == "tanh" and cfg.trainer.max_epochs == 4


def test_quickstart_recipe_resolves():
    cfg = load_config([QUICKSTART])
    assert cfg.name == "quickstart" and cfg.model.norm == "bn_pre" and cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("model: {nrm: bn_pre}\n", [], "unknown config key 'model.nrm'; did you mean 'model.norm'?"),
        ("", ["trainer.max_epochs=abc"], "config key 'trainer.max_epochs'"),
        ("", ["model.norm=bn_pree"], "model.norm: unknown norm 'bn_pree'; did you mean 'bn_pre'"),
        ("", ["optim.lr=0"], "optim.lr must be > 0"),
        ("", ["optim.lr=-1"], "optim.lr must be > 0"),
        ("", ["data.batch_size=1"], "at least 2 samples per batch"),
        ("", ["model.norm={name: bn_pre, momentum: 1.5}"], "momentum must be in [0, 1]"),
        ("", ["model.norm=off"], "quote the name"),
        ("", ["model.backbone={name: simple_cnn, chanels: [3]}"], "did you mean 'channels'"),
        ("", ["optim.optimizer={name: sgd, momentun: 0.9}"], "did you mean 'momentum'"),
        ("", ["optim.scheduler=cosin"], "did you mean 'cosine'"),
        ("", ["data.augment=[hflipp]"], "unknown transform 'hflipp'"),
        ("", ["metrics.average=weighted"], "metrics.average"),
        ("", ["trainer.max_epochs=0"], "trainer.max_epochs must be >= 1"),
        ("", ["name=a/b"], "name must be a non-empty name without '/'"),
        ("", ["nonsense"], "must look like key=value"),
        ("x: ${nope}\n", [], "unknown config key 'x'"),
        ("name: ${nope}\n", [], "cannot resolve interpolation"),
    ],
)
def test_config_errors_name_the_key_and_the_fix(tmp_path, text, overrides, message):
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config([path], overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_batch_size_one_is_fine_without_batch_statistics():
    assert load_config([], ["data.batch_size=1", "model.norm=gn"]).data.batch_size == 1


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file 'missing.yaml' not found"):
        load_config(["missing.yaml"])
    with pytest.raises(ConfigError, match="YAML syntax error at line 2"):
        load_config([write(tmp_path / "bad.yaml", "a: [1,\n b")])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config([write(tmp_path / "list.yaml", "- 1\n- 2\n")])
    with pytest.raises(ConfigError, match="includes itself"):
        load_config([write(tmp_path / "loop.yaml", "include: [loop.yaml]\n")])


def test_older_schema_loads_with_defaults_and_newer_is_refused():
    stored = to_plain(load_config([QUICKSTART]))
    del stored["loss"]  # a key an older cnnkit did not have
    cfg = load_config(base=stored)
    assert cfg.loss.label_smoothing == 0.0 and cfg.schema_version == SCHEMA_VERSION
    with pytest.raises(ConfigError, match="newer than this cnnkit"):
        load_config(base={**stored, "schema_version": SCHEMA_VERSION + 1})


def test_plain_config_has_no_omegaconf_objects_or_enums():
    plain = to_plain(load_config([QUICKSTART]))
    assert plain["eval_stats"] == "running" and plain["logger"]["wandb"]["mode"] == "auto"
    assert isinstance(plain["model"]["backbone"], dict)
    OmegaConf.create(plain)  # round-trips


def test_a_model_key_the_backbone_does_not_take_is_one_warning_line(capsys):
    from cnnkit.config import load as config
    from cnnkit.config.load import load_config

    config._SAID.clear()  # said once per process

    load_config([], ["model.backbone=resnet20", "model.pool=min"])
    assert capsys.readouterr().err.splitlines() == [
        "cnnkit: warning: model.pool=min has no effect: backbone 'resnet20' takes no pool"
    ]
    load_config([], ["model.backbone=resnet20"])  # the schema's pool: max is not the user's choice
    load_config([], ["model.backbone=logistic", "model.norm=input", "data.dataset=two_scales"])  # inputs only
    load_config([], ["model.backbone=simple_cnn", "model.pool=min"])  # it takes a pool
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_one_of_key_is_a_plain_string_that_takes_only_its_names(tmp_path, key):
    """Each name is taken as is (no conversion reaches the code); any other value, from a file, an override or
    an interpolation, is one line naming the source, the key and the names allowed."""
    for name in CHOICES[key]:
        value = OmegaConf.select(load_config([], [f"{key}={name}"], validate_config=False), key)
        assert type(value) is str and value == name
    with pytest.raises(
        ConfigError,
        match=rf"^override '{key}=Nope': config key '{key}': Invalid value 'Nope', "
        rf"expected one of \[{', '.join(CHOICES[key])}\]$",
    ):
        load_config([], [f"{key}=Nope"], validate_config=False)
    path = write(tmp_path / "c.yaml", OmegaConf.to_yaml(OmegaConf.from_dotlist([f"{key}=nope"])))
    with pytest.raises(ConfigError, match=rf"^config file '{path}': config key '{key}': Invalid value 'nope'"):
        load_config([path], validate_config=False)
    with pytest.raises(ConfigError, match=rf"^config key '{key}': Invalid value 'default'"):
        load_config([], [f"{key}=${{name}}"], validate_config=False)


def test_key_roles_are_schema_metadata_of_existing_keys():
    """Run reuse and variant names read their keys from the schema's roles: each role is a known one, each
    key exists in the config, and no two naming keys share a place in a name."""
    cfg = load_config([], validate_config=False)
    declared = [f.metadata for _, f in schema_fields() if f.metadata.get("role") or "names" in f.metadata]
    assert {m["role"] for m in declared if "role" in m} == {PLACE, HOW, LENGTH, LIMIT}
    places = [m["names"] for m in declared if "names" in m]
    assert len(places) == len(set(places)) == len(NAME_ORDER)
    for key in {*NAME_ORDER, *(k for role in (PLACE, HOW, LENGTH, LIMIT) for k in keys_with(role))} - {*ARGUMENT_ROLES}:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
    assert not set(keys_with(PLACE)) & set(NAME_ORDER) and not set(keys_with(HOW)) & set(NAME_ORDER)
