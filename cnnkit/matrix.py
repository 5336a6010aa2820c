"""Variant names: a recipe's ``matrix:`` combinations, and a single fit's command-line overrides.

Matrix combinations come in a fixed order (keys as written, values as listed), each named by its
values (``norm=bn_pre+lr=0.5+seed=1``), with its own run directory and W&B run, grouped by the
recipe. A single fit is named the same way from the overrides that change its result, so two
different commands never share a run directory and the same command finds its run again.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Sequence

from omegaconf import DictConfig

from .config import to_plain
from .errors import ConfigError


def format_value(value: Any) -> str:
    """A value as it appears in a variant name: names plain, mappings as name(arg=value,...)."""
    if isinstance(value, dict):
        args = ",".join(f"{k}={format_value(v)}" for k, v in value.items() if k != "name")
        if "name" not in value:
            return args
        return f"{value['name']}({args})" if args else str(value["name"])
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# Overrides that name a single fit's variant, in this order (within a section, the schema's order);
# trainer, checkpoint and logging keys say how to run, not what, so resuming on more devices or for
# longer finds the same run. Where the data lives or whether it may be downloaded names nothing.
NAMING_KEYS = ("model", "optim", "data.dataset", "data.augment", "data.batch_size", "loss", "seed",
               "eval_stats", "tta", "imports")
NOT_NAMING = ("data.dataset.download",)
MAX_NAME = 80


def _naming_rank(key: str) -> int | None:
    if any(key == k or key.startswith(k + ".") for k in NOT_NAMING):
        return None
    for rank, prefix in enumerate(NAMING_KEYS):
        if key == prefix or key.startswith(prefix + "."):
            return rank
    return None


def _safe(name: str) -> str:
    """A name usable as one directory: no path separators or spaces; long ones shortened with a stable digest."""
    name = "".join("_" if c in "/\\" or c.isspace() else c for c in name)
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]  # never hash(): it differs per process
    head = name[:MAX_NAME - 9]
    head = head[:head.rfind("+")] if "+" in head else head  # whole key=value parts only
    return f"{head}-{digest}"


def variant_from_overrides(overrides: Sequence[str], cfg: Any) -> str:
    """``norm=bn_post+act=sigmoid+lr=0.5`` for ``model.norm=bn_post model.act=sigmoid optim.lr=0.5``.

    Only keys that change a result count (``NAMING_KEYS``), in a fixed order whatever the command
    line's order; values are read from the resolved ``cfg`` (interpolations included); no such
    override gives ``default``.
    """
    from omegaconf import OmegaConf

    keys = {item.partition("=")[0].strip() for item in overrides}
    keys = [k for k in keys if _naming_rank(k) is not None]
    if not keys:
        return "default"
    keys.sort(key=lambda k: (_naming_rank(k), _field_index(k), k))
    shown = [k[:-len(".name")] if k.endswith(".name") else k for k in keys]  # model.norm.name=gn → norm=gn
    short = _short_keys(shown)
    values = {k: to_plain(OmegaConf.select(cfg, k)) for k in keys}
    return _safe("+".join(f"{short[s]}={format_value(values[k])}" for k, s in zip(keys, shown)))


def _field_index(key: str) -> int:
    """The position of a key's field in its schema section (``model.norm`` comes before ``model.act``)."""
    from dataclasses import fields

    from .config import Config

    parts = key.split(".")
    section = next((f for f in fields(Config) if f.name == parts[0]), None)
    if section is None or len(parts) < 2 or section.default_factory is None:
        return 0
    try:
        names = [f.name for f in fields(section.default_factory())]
    except TypeError:  # a plain dict or list section
        return 0
    return names.index(parts[1]) if parts[1] in names else len(names)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}


def _override(key: str, value: Any) -> str:
    import json

    return f"{key}={json.dumps(value)}" if not isinstance(value, str) else f"{key}={value}"


def combinations(cfg: DictConfig, only: Sequence[str] = ()) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(variant name, dotlist overrides, values by key) for each combination, in order, narrowed by ``only``."""
    matrix = to_plain(cfg.matrix)
    if not matrix:
        return [(cfg.variant, [], {})]
    keys = list(matrix)
    short = _short_keys(keys)
    wanted = []
    for item in only:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--only '{item}' must look like key=value (e.g. --only norm=bn_pre)")
        matches = [k for k in keys if k == key or short[k] == key]
        if not matches:
            raise ConfigError(f"--only '{item}': '{key}' is not a matrix key; matrix keys: "
                              f"{', '.join(short[k] for k in keys)}")
        wanted.append((matches[0], value))
    result = []
    for values in itertools.product(*(matrix[k] for k in keys)):
        chosen = dict(zip(keys, values))
        if not all(_matches(v, chosen[k]) for k, v in wanted):
            continue
        name = "+".join(f"{short[k]}={format_value(v)}" for k, v in chosen.items())
        result.append((name.replace("/", "_"), [_override(k, v) for k, v in chosen.items()], chosen))
    if not result:
        raise ConfigError(f"--only {' '.join(only)} matches none of the matrix's combinations")
    return result


def _matches(text: str, value: Any) -> bool:
    """Whether ``--only key=text`` selects ``value``: as the variant name spells it, or the same number."""
    if text in (format_value(value), str(value)):
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    return False


def group_name(variant: str) -> str:
    """The variant without its seed: the runs a report averages over."""
    parts = [p for p in variant.split("+") if not p.startswith("seed=")]
    return "+".join(parts) or "default"
