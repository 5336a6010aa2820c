"""Which keys of a run's stored config differ from a new one, and which of them matter.

A finished run is reused, and an unfinished one resumed, only when the config that made it and the
one asked for now give the same result. The stored ``config.yaml`` is the basis (not a hash), so a
refusal can name the keys that differ.
"""

from __future__ import annotations

from typing import Any, Iterable

from cnnkit.config import schema
from cnnkit.config.schema import SPEC_KEYS, keys_with, same_entry

# The key sets of run reuse, from the roles the schema declares (schema.roles).
RESULT_NEUTRAL = keys_with(schema.PLACE)  # ignored when deciding whether a finished run is reusable
RESUME_FREE = keys_with(schema.HOW)  # a run may resume with other values
LENGTH = keys_with(schema.LENGTH)  # a finished run trains on when these grow (see ``length_bound_schedule``)
LIMITS = keys_with(schema.LIMIT)  # a limited run is a smoke test, never the recipe's result


def format_value(value: Any) -> str:
    """A value as it reads in messages, tables and titles: names plain, mappings as name(arg=value,...)."""
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


def _ignored(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def differences(old: Any, new: Any, ignore: Iterable[str] = (), key: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every difference, in the new config's key order.

    Mappings on both sides are compared key by key; anything else (a list, a name replaced by a
    ``{name: ...}`` spec of another entry) is one value. A registry spec's entry name counts as the
    same after the registry's normalization (``Relu`` is ``relu``), and ``relu`` is ``{name: relu}``.
    """
    ignore = tuple(ignore)
    if key in SPEC_KEYS:
        old, new = _as_mapping(old, new), _as_mapping(new, old)
        if isinstance(old, dict) and isinstance(new, dict) and same_entry(old.get("name"), new.get("name")):
            new = {**new, "name": old.get("name")}
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for k in list(new) + [k for k in old if k not in new]:
            path = f"{key}.{k}" if key else str(k)
            if not _ignored(path, ignore):
                found += differences(old.get(k), new.get(k), ignore, path)
        return found
    return [] if old == new else [(key, old, new)]


def _as_mapping(spec: Any, other: Any) -> Any:
    """A spec given by name alone as ``{name: ...}``, where the other side is a mapping of the same entry."""
    if isinstance(spec, str) and isinstance(other, dict) and same_entry(spec, other.get("name")):
        return {"name": spec}
    if isinstance(spec, str) and same_entry(spec, other):
        return {"name": spec}
    return spec


def describe(diffs: list[tuple[str, Any, Any]], most: int = 4) -> str:
    """``trainer.max_epochs 1 → 15, model.backbone simple_cnn(channels=[32,64]) → mlp (+2 more)``."""

    def show(value: Any) -> str:
        return "null" if value is None else format_value(value)

    shown = ", ".join(f"{key} {show(old)} → {show(new)}" for key, old, new in diffs[:most])
    return shown + (f" (+{len(diffs) - most} more)" if len(diffs) > most else "")
