"""Run names: a single fit is named by the overrides whose values differ from the recipe's, a matrix's
variants by their values (``experiments/matrix.py``), both spelled the same way.

Two different commands never share a run directory, a command that changes nothing finds the recipe's
own run, and the same command finds its run again. A name is typed in a shell without quotes:
``key=value`` parts joined by ``+``; within a value only letters, digits, ``.``, ``_`` and ``-``, and a
number's exponent sign (see ``name_value``).
"""

from __future__ import annotations

import hashlib
from dataclasses import fields
from typing import Any, Sequence

from cnnkit.config.diff import differences
from cnnkit.config.plain import as_data, spec
from cnnkit.config.schema import HOW, NAME_ORDER, PLACE, Config, keys_with, spec_key


def name_value(value: Any) -> str:
    """A value as it reads in a run directory's name, typed without quotes in any shell.

    A spec is its name, then ``-<argument><value>`` per argument (``{name: gn, groups: 8}`` →
    ``gn-groups8``); a list joins its items with ``-`` (``[32, 64]`` → ``32-64``), an empty one is
    ``none``; a float as ``%g`` (``1e+30``), booleans and null as YAML writes them; in text any other
    character than a letter, a digit, ``.``, ``_`` or ``-`` becomes ``_`` (``plugins/a b.py`` →
    ``plugins_a_b.py``).
    """
    if isinstance(value, (dict, list, tuple)) and not value:
        return "none"
    if isinstance(value, dict):
        parts = [name_value(value["name"])] if "name" in value else []
        return "-".join(parts + [f"{name_value(k)}{name_value(v)}" for k, v in value.items() if k != "name"])
    if isinstance(value, (list, tuple)):
        return "-".join(name_value(v) for v in value)
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        return f"{value:g}"  # 1e+30 keeps its sign: a number's '+' splits no name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in str(value))


# Overrides that name a single fit's variant, in this order (within a section, the schema's order): the
# schema's ``names`` metadata. A run's length and limits name it too, so a shorter or limited run never shares
# a directory with the full one (``--ckpt last`` with a new length still finds the run it extends:
# api.plan_recipe); the other trainer, checkpoint and logging keys say how to run, not what, so a resume on
# more devices finds the same run. Where the data lives or whether it may be downloaded names nothing.
NAMING_KEYS = NAME_ORDER
NOT_NAMING = keys_with(PLACE) + keys_with(HOW)
MAX_NAME = 80


def _naming_rank(key: str) -> int | None:
    if any(key == k or key.startswith(k + ".") for k in NOT_NAMING):
        return None
    for rank, prefix in enumerate(NAMING_KEYS):
        if key == prefix or key.startswith(prefix + "."):
            return rank
    return None


def _safe(name: str) -> str:
    """A name usable as one directory: long ones shortened with a stable digest."""
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha1(name.encode("utf-8")).hexdigest()[:8]  # never hash(): it differs per process
    head = name[: MAX_NAME - 9]
    head = head[: head.rfind("+")] if "+" in head else head  # whole key=value parts only
    return f"{head}-{digest}"


def variant_from_overrides(overrides: Sequence[str], cfg: Any, recipe: Any = None) -> str:
    """``norm=bn_post+act=sigmoid+lr=0.5`` for ``model.norm=bn_post model.act=sigmoid optim.lr=0.5``.

    Only keys that change a result count (``NAMING_KEYS``), and only where the resolved value
    differs from the ``recipe``'s (the config without the command line's overrides; registry names
    compared normalized), in a fixed order whatever the command line's order. A registry spec is
    named whole (``model.norm=gn model.norm.groups=8`` → ``norm=gn-groups8``). Values are read from
    the resolved ``cfg`` (interpolations included); no such override gives ``default``.
    """
    touched = [item.partition("=")[0].strip() for item in overrides]
    if recipe is None:
        changed = touched
    else:
        changed = [
            key
            for key, _, _ in differences(as_data(recipe), as_data(cfg))
            if any(key == t or key.startswith(t + ".") or t.startswith(key + ".") for t in touched)
        ]
    keys = list(dict.fromkeys(spec_key(k) or k for k in changed if _naming_rank(k) is not None))
    if not keys:
        return "default"
    keys.sort(key=lambda k: (_naming_rank(k), _field_index(k), k))
    short = short_keys(keys)
    return _safe("+".join(f"{short[k]}={name_value(_naming_value(k, cfg))}" for k in keys))


def _naming_value(key: str, cfg: Any) -> Any:
    """The value a key shows in a name: a spec without the arguments that name nothing."""
    value = spec(cfg, key)
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if _naming_rank(f"{key}.{k}") is not None}
        return value["name"] if list(value) == ["name"] else value
    return value


def _field_index(key: str) -> int:
    """The position of a key's field in its schema section (``model.norm`` comes before ``model.act``)."""
    parts = key.split(".")
    section = next((f for f in fields(Config) if f.name == parts[0]), None)
    if section is None or len(parts) < 2 or section.default_factory is None:
        return 0
    try:
        names = [f.name for f in fields(section.default_factory())]
    except TypeError:  # a plain dict or list section
        return 0
    return names.index(parts[1]) if parts[1] in names else len(names)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (leaf if leaves.count(leaf) == 1 else k) for k, leaf in zip(keys, leaves)}
