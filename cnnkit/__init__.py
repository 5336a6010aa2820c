"""cnnkit: a PyTorch Lightning training template for CNN classifiers, with a plugin-style registry.

Importing cnnkit is cheap; torch and Lightning load when something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from cnnkit.registry import REGISTRIES

__version__ = "0.1.0"

_LAZY = {
    # registries (light): each under its kind in capitals
    **{name: "cnnkit.registry" for name in ("Registry", *(kind.upper() for kind in REGISTRIES))},
    # the Python API
    **{
        name: "cnnkit.api"
        for name in (
            "load_config",
            "fit",
            "fit_recipe",
            "fit_recipes",
            "evaluate",
            "predict",
            "describe",
            "build_model",
            "build_module",
            "build_datamodule",
            "data_info",
            "FitResult",
        )
    },
    # extension points
    "NormScheme": "cnnkit.nn.layers.norms",
    "ConvNormAct": "cnnkit.nn.layers.blocks",
    "LinearNormAct": "cnnkit.nn.layers.blocks",
    "CnnkitError": "cnnkit.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnnkit' has no attribute {name!r}")
