"""Which keys of a run's stored config differ from a new one, and which of them matter.

A finished run is reused, and an unfinished one resumed, only when the config that made it and the
one asked for now give the same result. The stored ``config.yaml`` is the basis (not a hash), so a
refusal can name the keys that differ.
"""

from __future__ import annotations

from typing import Any, Iterable

# Keys that never change what a run computes: ignored when deciding whether a finished run is reusable.
RESULT_NEUTRAL = (
    "schema_version", "name", "variant", "runs_dir",  # they place the run; equal for the same directory
    "matrix",  # adding a seed to a recipe's matrix keeps the variants already run
    "report", "logger",
    "trainer.progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "checkpoint.every_n_steps", "checkpoint.save_last",  # extra saves of the same states
    "data.dataset.download",  # whether missing data may be fetched
)
# Keys that say how to run, not what: a run may resume with other values.
RESUME_FREE = (
    "trainer.devices", "trainer.num_nodes", "trainer.accelerator", "trainer.strategy", "data.num_workers",
)
# The run's length: a finished run trains on when these grow (see ``length_bound_schedule``).
LENGTH = ("trainer.max_epochs", "trainer.max_steps")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → leaf value; lists stay whole (an augmentation list is one value)."""
    if isinstance(node, dict) and node:
        items: dict[str, Any] = {}
        for key, value in node.items():
            items.update(flatten(value, f"{prefix}{key}."))
        return items
    return {prefix[:-1]: node}


def _ignored(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def differences(old: dict[str, Any], new: dict[str, Any], ignore: Iterable[str] = ()) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every leaf that differs, in the new config's key order."""
    ignore = tuple(ignore)
    a, b = flatten(old), flatten(new)
    keys = list(b) + [k for k in a if k not in b]
    return [(k, a.get(k), b.get(k)) for k in keys if not _ignored(k, ignore) and a.get(k) != b.get(k)]


def describe(diffs: list[tuple[str, Any, Any]], most: int = 4) -> str:
    """``trainer.max_epochs 1 → 15, trainer.limit_train_batches 3 → null (+2 more)``."""
    def show(value: Any) -> str:
        return "null" if value is None else str(value)

    shown = ", ".join(f"{key} {show(old)} → {show(new)}" for key, old, new in diffs[:most])
    return shown + (f" (+{len(diffs) - most} more)" if len(diffs) > most else "")
