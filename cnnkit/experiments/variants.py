"""The variants a ``fit`` command would train, by name (``fit --print-variants``: a SLURM array task picks
its line). Reads the config alone: no torch."""

from __future__ import annotations

from collections.abc import Sequence

from cnnkit.config.load import load_config
from cnnkit.errors import ConfigError
from cnnkit.experiments.matrix import combinations


def variant_names(files: Sequence[str], overrides: Sequence[str] = (), only: Sequence[str] = ()) -> list[str]:
    """The variant names, in matrix order, for these arguments (narrowed as ``api.plan_runs`` narrows)."""
    base = load_config(files, overrides, validate_config=False)
    if not base.matrix:
        if only:
            raise ConfigError("--only needs a recipe with a matrix: section")
        return [base.variant]
    pinned = [o for o in overrides if o.partition("=")[0] in base.matrix]  # a matrix key's override narrows
    return [name for name, _, _ in combinations(base, [*only, *pinned])]
