"""A recipe's ``matrix:`` combinations, in a fixed order (keys as written, values as listed), each named by
its values (``norm=bn_pre+lr=0.5+seed=1``; spelled as ``config/naming.py`` spells a single fit's name),
with its own run directory and W&B run, grouped by the recipe.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Sequence

from omegaconf import DictConfig

from cnnkit.config.diff import format_value
from cnnkit.config.naming import name_value, short_keys
from cnnkit.config.plain import matrix as matrix_of
from cnnkit.errors import ConfigError


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}" if not isinstance(value, str) else f"{key}={value}"


def combinations(cfg: DictConfig, only: Sequence[str] = ()) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(variant name, dotlist overrides, values by key) for each combination, in order, narrowed by ``only``."""
    matrix = matrix_of(cfg)
    if not matrix:
        return [(cfg.variant, [], {})]
    keys = list(matrix)
    short = short_keys(keys)
    named = {
        "+".join(f"{short[k]}={name_value(v)}" for k, v in zip(keys, values))
        for values in itertools.product(*(matrix[k] for k in keys))
    }
    wanted, names = [], [item for item in only if item in named]  # whole variant names select those variants
    for item in only:
        if item in names:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--only '{item}' must look like key=value (e.g. --only norm=bn_pre)")
        matches = [k for k in keys if k == key or short[k] == key]
        if not matches:
            raise ConfigError(
                f"--only '{item}': '{key}' is not a matrix key; matrix keys: {', '.join(short[k] for k in keys)}"
            )
        wanted.append((matches[0], value))
    result = []
    for values in itertools.product(*(matrix[k] for k in keys)):
        chosen = dict(zip(keys, values))
        name = "+".join(f"{short[k]}={name_value(v)}" for k, v in chosen.items())
        if not all(selects(v, chosen[k]) for k, v in wanted) or (names and name not in names):
            continue
        result.append((name, [_override(k, v) for k, v in chosen.items()], chosen))
    if not result:
        raise ConfigError(f"--only {' '.join(only)} matches none of the matrix's combinations")
    return result


def selects(text: str, value: Any) -> bool:
    """Whether ``--only key=text`` selects ``value``: as the variant name or a message spells it, or the
    same number."""
    if text in (name_value(value), format_value(value), str(value)):
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
