"""Loading, merging and validating a config of the one schema (``schema.py``).

Merge order: schema defaults ← ``--config`` files (repeatable, later wins; each may ``include:``
other files relative to itself) ← a matrix combination's values (the recipe's own) ← command-line
overrides (``model.norm=bn_post``), left to right, each its own layer. Everything is checked here,
before a run directory exists or a step is taken: unknown keys, wrong types, unknown registry
names, arguments a part does not take, values out of range.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf import errors as oc_errors

from cnnkit.config.batch import per_device_batch
from cnnkit.config.loader_choice import uses_tensor_path
from cnnkit.config.naming import variant_from_overrides
from cnnkit.config.schema import CHOICES, SCHEMA_VERSION, SPEC_KEYS, Config, ModelConfig, same_entry, to_plain
from cnnkit.errors import ConfigError, first_line, key_context
from cnnkit.messages import warn
from cnnkit.registry import import_user_code

if TYPE_CHECKING:
    from cnnkit.registry import Plan

INCLUDE_KEY = "include"
_MISSING = object()


# -- reading files ------------------------------------------------------------------------------
def read_config_file(path: str, _seen: tuple[str, ...] = ()) -> list[tuple[str, DictConfig]]:
    """A YAML file and the files it includes, in merge order, each with its path for messages."""
    if not os.path.exists(path):
        raise ConfigError(f"config file '{path}' not found")
    if os.path.isdir(path):
        raise ConfigError(f"config file '{path}' is a directory; pass a .yaml file")
    real = os.path.realpath(path)
    if real in _seen:
        raise ConfigError(f"config file '{path}' includes itself (include chain: {' -> '.join(_seen)})")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"config file '{path}': YAML syntax error{where}: {problem}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file '{path}' cannot be read: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{path}' must be a mapping of keys to values (e.g. 'model: ...'), got a {type(data).__name__}"
        )
    includes = data.pop(INCLUDE_KEY, []) or []
    if isinstance(includes, str):
        includes = [includes]
    layers: list[tuple[str, DictConfig]] = []
    base_dir = os.path.dirname(os.path.abspath(path))
    for item in includes:
        layers.extend(read_config_file(os.path.join(base_dir, item), _seen + (real,)))
    try:
        layers.append((path, OmegaConf.create(data)))
    except oc_errors.OmegaConfBaseException as err:
        raise ConfigError(f"config file '{path}': {_first_line(err)}") from err
    return layers


def parse_override(item: str) -> DictConfig:
    """One ``key=value`` override as a config layer of its own."""
    if "=" not in item or item.startswith("="):
        raise ConfigError(f"override '{item}' must look like key=value (e.g. model.norm=bn_post)")
    try:
        return OmegaConf.from_dotlist([item])
    except Exception as err:
        raise ConfigError(
            f"override '{item}' is not valid YAML ({_first_line(err)}); write mappings and lists as "
            "'key={name: value, other: [1, 2]}' with a space after each ':' and quote the whole override"
        ) from err


def spec_roles(layer: DictConfig) -> dict[str, str]:
    """Which registry specs a layer touches, and how: ``name`` (it names the entry: a name, a mapping
    with ``name``, or ``<key>.name=...``) or ``arguments`` (it sets arguments of whatever entry is there)."""
    roles = {}
    for key in SPEC_KEYS:
        value = OmegaConf.select(layer, key, default=_MISSING)
        if isinstance(value, str) or (isinstance(value, DictConfig) and "name" in value):
            roles[key] = "name"
        elif isinstance(value, DictConfig):
            roles[key] = "arguments"
    return roles


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, DictConfig]]:
    """The command line's overrides as layers, in order; an argument set before a name override that
    replaces its entry would be dropped without a word, so that order is an error naming both."""
    layers = [(item, parse_override(item)) for item in overrides]
    for index, (item, layer) in enumerate(layers):
        for key, role in spec_roles(layer).items():
            earlier = next((o for o, e in layers[:index] if spec_roles(e).get(key) == "arguments"), None)
            if role == "name" and earlier is not None:
                raise ConfigError(
                    f"override '{earlier}' comes before '{item}', which replaces {key} with a new entry (its "
                    f"arguments start from that entry's defaults): put '{earlier}' after '{item}'"
                )
    return layers


# -- merging with clear errors -----------------------------------------------------------------
def _first_line(err: Exception) -> str:
    return first_line(err, type(err).__name__)


def _known_keys(schema: DictConfig, full_key: str) -> tuple[str, list[str]]:
    parent, _, leaf = full_key.rpartition(".")
    node: Any = schema
    for part in filter(None, parent.split(".")):
        node = node.get(part) if isinstance(node, DictConfig) else None
    keys = list(node.keys()) if isinstance(node, DictConfig) else []
    return leaf, [str(k) for k in keys]


def _as_written(node: DictConfig, key: Any) -> Any:
    """``node[key]`` without resolving it: a child config, or a value as written (``${...}`` and ``???`` too).

    A half-merged config may hold an interpolation whose target a later layer adds, so reading must not
    resolve it."""
    if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
        return OmegaConf.to_container(OmegaConf.masked_copy(node, [key]), resolve=False)[key]
    return node[key]


def _replace_renamed_specs(base: Any, layer: Any) -> None:
    """A later spec naming another entry replaces the earlier one instead of merging arguments into it,
    and arguments for a spec given by name alone go to that entry.

    ``{name: cifar10, root: data}`` followed by ``{name: digits}`` must not become digits with a root;
    ``dataset: digits`` followed by ``data.dataset.image_size=32`` is ``{name: digits, image_size: 32}``.
    (Within config files a spec naming the same entry adds its arguments; a command-line override that
    names an entry always replaces it, see ``load_config``.)
    """
    if not isinstance(base, DictConfig) or not isinstance(layer, DictConfig):
        return
    for key in layer.keys():
        if key not in base:
            continue
        old, new = _as_written(base, key), _as_written(layer, key)
        if isinstance(new, DictConfig) and "name" not in new and isinstance(old, str):
            base[key] = {"name": old}
        elif isinstance(old, DictConfig) and isinstance(new, DictConfig):
            if "name" in old and "name" in new and not same_entry(old.get("name"), new.get("name")):
                base[key] = None
            else:
                _replace_renamed_specs(old, new)


def _merge(base: DictConfig, layer: DictConfig, source: str, replace: Sequence[str] = ()) -> None:
    """``layer`` into ``base``, in place (a copy per layer would cost more than the merge); the registry
    specs at ``replace`` start anew from the layer's entry."""
    try:
        for key in replace:
            OmegaConf.update(base, key, None, force_add=True)
        _replace_renamed_specs(base, layer)
        base.merge_with(layer)
    except oc_errors.ConfigKeyError as err:
        full_key = getattr(err, "full_key", None) or ""
        leaf, known = _known_keys(base, full_key)
        close = difflib.get_close_matches(leaf, known, n=1)
        prefix = full_key.rpartition(".")[0] + "." if "." in full_key else ""
        hint = f"did you mean '{prefix + close[0]}'? " if close else ""
        parent = full_key.rpartition(".")[0] or "the top level"
        raise ConfigError(
            f"{source}: unknown config key '{full_key}'; {hint}keys under {parent}: {', '.join(known)}"
        ) from err
    except oc_errors.ValidationError as err:
        full_key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{source}: config key '{full_key}': {_first_line(err)}") from err
    except oc_errors.OmegaConfBaseException as err:
        full_key = getattr(err, "full_key", None)
        where = f"config key '{full_key}': " if full_key else ""
        raise ConfigError(f"{source}: {where}{_first_line(err)}") from err
    check_choices(base, f"{source}: ")


def check_choices(cfg: DictConfig, source: str = "") -> None:
    """Every ``one_of`` key holds one of its names (an interpolation is checked once resolved)."""
    for key, choices in CHOICES.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if OmegaConf.is_interpolation(node, leaf):
            continue
        value = node[leaf]
        if value not in choices:
            raise ConfigError(
                f"{source}config key '{key}': Invalid value '{value}', expected one of [{', '.join(choices)}]"
            )


def migrate(stored: dict[str, Any]) -> dict[str, Any]:
    """Bring a config saved by an older cnnkit up to this schema (new keys take their defaults)."""
    version = stored.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(
            f"config has schema_version {version}, newer than this cnnkit understands ({SCHEMA_VERSION}); "
            f"upgrade cnnkit"
        )
    # Renamed or moved keys of future versions are translated here, oldest first.
    return {**stored, "schema_version": SCHEMA_VERSION}


def load_config(
    files: Sequence[str] = (),
    overrides: Sequence[str] = (),
    base: dict[str, Any] | None = None,
    validate_config: bool = True,
    combination: Sequence[str] = (),
) -> DictConfig:
    """Schema ← ``base`` (e.g. a checkpoint's config) ← files ← ``combination`` ← overrides, resolved and
    validated.

    ``combination`` is one matrix combination's ``key=value`` values: they belong to the recipe, so
    the command line's overrides come after them. Overrides apply left to right, each as its own
    layer: one that names a registry entry (``model.norm=gn``, ``model.norm={name: gn, ...}``,
    ``model.norm.name=gn``) replaces the entry, its arguments back at the entry's defaults, and later
    dotted keys (``model.norm.groups=8``) set the new entry's arguments.

    Without a ``base`` or a matrix, and unless ``variant`` is set, the variant is named from the
    overrides whose values differ from the recipe's (``matrix.variant_from_overrides``): the same
    command always finds the same run directory, on every DDP rank.
    """
    cfg = OmegaConf.structured(Config)
    if base is not None:
        _merge(cfg, OmegaConf.create(migrate(base)), "stored config")
    for path in files:
        for source, layer in read_config_file(path):
            _merge(cfg, layer, f"config file '{source}'")
    for item in combination:
        layer = parse_override(item)
        _merge(cfg, layer, f"matrix value '{item}'", _named_specs(layer))
    recipe = cfg.copy() if overrides else cfg
    for item, layer in parse_overrides(overrides):
        _merge(cfg, layer, f"override '{item}'", _named_specs(layer))
    cfg = _resolved(cfg)
    check_choices(cfg)
    explicit = cfg.variant != "default" or any(o.partition("=")[0].strip() == "variant" for o in overrides)
    if base is None and not cfg.matrix and not explicit:  # a matrix names its variants itself
        cfg.variant = variant_from_overrides(overrides, cfg, _resolved(recipe))
    check_matrix(cfg)
    if validate_config:
        validate(cfg)
    return cfg


def _named_specs(layer: DictConfig) -> list[str]:
    return [key for key, role in spec_roles(layer).items() if role == "name"]


def _resolved(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its interpolations resolved, in place: a bad ``${...}`` fails here, not in training."""
    try:
        OmegaConf.resolve(cfg)
    except oc_errors.OmegaConfBaseException as err:
        full_key = getattr(err, "full_key", None)
        raise ConfigError(f"config key '{full_key}': cannot resolve interpolation: {_first_line(err)}") from err
    return cfg


def plain_stored(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a run's config.yaml, a checkpoint's) filled up to this schema, as plain data."""
    return to_plain(load_config(base=stored, validate_config=False))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg)))


# -- validation ---------------------------------------------------------------------------------
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(cfg: DictConfig) -> None:
    """Check everything a run needs from the config before anything is built or written."""
    # startup: torch only when this runs
    from cnnkit.config import plans

    import_user_code(list(cfg.imports))
    norm = _check_model(cfg.model, plans)
    _check_data(cfg.data, plans, norm, cfg.model)
    _check_optim(cfg, plans)
    _check_trainer(cfg, plans)
    for key in ("name", "variant"):
        value = cfg[key]
        _require(
            bool(value) and "/" not in value and value not in (".", ".."),
            f"{key} must be a non-empty name without '/', got {value!r}",
        )


def _check_model(model: DictConfig, plans: Any) -> Any:
    """The model's parts, built where that is how their values are checked; returns the norm's plan."""
    model_plan = plans.model_plan(model)
    with key_context("model.act"):
        model_plan.act.build()  # takes no inputs: building it checks the values, not only the names
    with key_context("model.init"):
        model_plan.init.build()
    _warn_unused_model_keys(model, model_plan.backbone, model_plan.norm)
    return model_plan.norm


def _check_data(data: DictConfig, plans: Any, norm: Any, model: DictConfig) -> None:
    dataset_plan = plans.dataset_plan(data)
    augment_plans = plans.augment_plans(data)
    _check_loader(data, dataset_plan, augment_plans)
    _require(data.batch_size >= 1, f"data.batch_size must be >= 1, got {data.batch_size}")
    if norm.batch_stats:
        _require(
            data.batch_size >= 2,
            f"data.batch_size={data.batch_size} with norm '{to_plain(model.norm)}', which normalizes with "
            f"batch statistics: training needs at least 2 samples per batch; raise data.batch_size or pick "
            f"a norm without batch statistics (gn, ln, none)",
        )
    _require(
        data.eval_batch_size is None or data.eval_batch_size >= 1,
        f"data.eval_batch_size must be >= 1, got {data.eval_batch_size}",
    )
    _require(
        data.num_workers is None or data.num_workers >= 0, f"data.num_workers must be >= 0, got {data.num_workers}"
    )


def _check_optim(cfg: DictConfig, plans: Any) -> None:
    optim = cfg.optim
    _require(optim.lr > 0, f"optim.lr must be > 0, got {optim.lr}")
    _require(optim.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {optim.weight_decay}")
    _require(
        optim.reference_batch_size >= 1, f"optim.reference_batch_size must be >= 1, got {optim.reference_batch_size}"
    )
    plans.optimizer_plan(optim)
    plans.scheduler_plan(optim)
    _require(
        0.0 <= cfg.loss.label_smoothing < 1.0, f"loss.label_smoothing must be in [0, 1), got {cfg.loss.label_smoothing}"
    )


def _check_trainer(cfg: DictConfig, plans: Any) -> None:
    trainer = cfg.trainer
    _require(
        trainer.max_epochs >= 1 or trainer.max_steps > 0,
        "trainer.max_epochs must be >= 1 (or set trainer.max_steps > 0)",
    )
    _require(
        trainer.accumulate_grad_batches >= 1,
        f"trainer.accumulate_grad_batches must be >= 1, got {trainer.accumulate_grad_batches}",
    )
    _require(trainer.log_every_n_steps >= 1, f"trainer.log_every_n_steps must be >= 1, got {trainer.log_every_n_steps}")
    _require(
        trainer.gradient_clip_val is None or trainer.gradient_clip_val > 0,
        f"trainer.gradient_clip_val must be > 0 (or null), got {trainer.gradient_clip_val}",
    )
    plans.callback_plans(cfg)
    _check_devices(cfg)
    check_threads(trainer.threads)
    check_jobs(to_plain(cfg.jobs), "jobs")


def _auto_or_count(value: Any) -> bool:
    """``auto`` or a whole number >= 1 (how many jobs, how many threads)."""
    return value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def check_jobs(value: Any, where: str = "--jobs") -> None:
    """``jobs``/``--jobs``: ``auto`` or a whole number >= 1; anything else is one line naming the fix."""
    if not _auto_or_count(value):
        raise ConfigError(f"{where} must be a whole number >= 1 or auto, got {value!r}")


def check_threads(value: Any) -> None:
    """``trainer.threads`` is ``auto`` or a whole number >= 1."""
    if not _auto_or_count(value):
        raise ConfigError(f"trainer.threads must be auto or a whole number >= 1, got {value!r}")


def _check_loader(data: DictConfig, dataset: "Plan", augment: list["Plan"]) -> None:
    traits = getattr(dataset.target, "in_memory", None)  # a DatasetSource's; an entry that is not one: unknown
    in_memory = traits(data.cache) if callable(traits) else None
    _require(data.cache_budget > 0, f"data.cache_budget must be > 0 (GiB), got {data.cache_budget}")
    uses_tensor_path(data.loader, in_memory, [plan.target for plan in augment])


def known_world_size(trainer: DictConfig) -> Optional[int]:
    """Processes the config asks for when it says how many (``devices: auto`` / -1 depend on the machine)."""
    devices = to_plain(trainer.devices)
    if isinstance(devices, list):
        count = len(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    elif isinstance(devices, str) and devices.isdigit() and int(devices) > 0:
        count = int(devices)
    elif isinstance(devices, str) and "," in devices:
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        return None
    return count * trainer.num_nodes


def _check_devices(cfg: DictConfig) -> None:
    world = known_world_size(cfg.trainer)
    if world is not None:
        per_device_batch(cfg.data.batch_size, world, cfg.trainer.accumulate_grad_batches)
    if cfg.trainer.progress_bar == "rich":
        _require(
            importlib.util.find_spec("rich") is not None,
            "trainer.progress_bar=rich needs the 'rich' package: pip install rich (or use trainer.progress_bar=tqdm)",
        )


_SAID: set[str] = set()


def _warn_unused_model_keys(model: DictConfig, backbone: "Plan", norm: Any) -> None:
    """A model key set away from its default that the backbone does not take does nothing: say so once.

    A norm scheme without layers still standardizes the inputs (outside the backbone), so only a
    scheme with layers counts as unused.
    """
    # startup: torch only when this runs
    from cnnkit.nn.layers.norms import NormScheme

    defaults = ModelConfig()
    for key in ("norm", "act", "pool", "bias"):
        value = to_plain(model[key])
        if backbone.takes(key) or value in (getattr(defaults, key), "none"):  # none: nothing asked
            continue
        if key == "norm" and type(norm).make is NormScheme.make:
            continue
        message = f"model.{key}={value} has no effect: {backbone.what} takes no {key}"
        if message not in _SAID:
            _SAID.add(message)
            warn(message)


def check_matrix(cfg: DictConfig) -> None:
    """Every matrix key names a config key and lists values (checked before any variant is made)."""
    for key, values in cfg.matrix.items():
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING or key == "matrix" or key.startswith("matrix."):
            leaf_keys = _all_keys(OmegaConf.to_container(cfg, resolve=False))
            close = difflib.get_close_matches(key, leaf_keys, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"matrix: key '{key}' does not exist in the config{hint}")
        _require(
            isinstance(values, ListConfig) and len(values) > 0,
            f"matrix: '{key}' needs a non-empty list of values, got {to_plain(values)!r}",
        )
    check_report_keys(cfg)


def check_report_keys(cfg: DictConfig) -> None:
    """``report.compare``/``along``/``where`` name matrix keys, so a typo fails before anything trains rather
    than leaving the answer silent (a value the matrix lacks, e.g. after narrowing it, the answer reports)."""
    matrix = to_plain(cfg.matrix)
    named = [
        ("report.compare", cfg.report.compare),
        ("report.along", cfg.report.along),
        *((f"report.where.{key}", key) for key in cfg.report.where),
    ]
    for where, key in named:
        if key is not None and key not in matrix:
            raise ConfigError(f"{where}: '{key}' is not a matrix key; matrix keys: {', '.join(matrix) or 'none'}")


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a plain (``to_container``) config, nested ones included."""
    keys = []
    if isinstance(node, dict):
        for key, child in node.items():
            path = f"{prefix}{key}"
            keys.append(path)
            keys.extend(_all_keys(child, path + "."))
    return keys
