"""``cnnkit sweep RECIPE``: a W&B grid sweep from a recipe's matrix.

The sweep's command runs ``python -m cnnkit fit --config RECIPE key=value ...`` for each point:
every process (and every DDP rank) parses the same recipe plus the same overrides, and the
overrides of matrix keys narrow the matrix to that one combination.
"""

from __future__ import annotations

from typing import Any

import yaml

from cnnkit.config.load import load_config
from cnnkit.config.plain import matrix as matrix_of
from cnnkit.errors import ConfigError


def sweep_config(recipe: str) -> dict[str, Any]:
    cfg = load_config([recipe])
    matrix = matrix_of(cfg)
    if not matrix:
        raise ConfigError(f"sweep: '{recipe}' has no matrix: section to sweep over")
    metric = cfg.report.metric.replace("test/", "val/")
    return {
        "name": cfg.name,
        "method": "grid",
        "metric": {"name": metric, "goal": "minimize" if metric.endswith("loss") else "maximize"},
        "parameters": {key: {"values": values} for key, values in matrix.items()},
        "command": ["${env}", "python", "-m", "cnnkit", "fit", "--config", recipe, "${args_no_hyphens}"],
    }


def write_sweep(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)
