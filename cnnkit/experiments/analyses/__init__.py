"""Course analyses, one module each: its callback, the files it writes, its tables and figures.

A module ``cnnkit/experiments/analyses/<name>.py`` is the analysis ``<name>``. It defines ``ANALYSIS`` (an
``Analysis``: the files it reads from a run directory, its tables, its figures) and, when it measures
something during training, ``Callback`` (a Lightning callback), which a recipe adds with
``callbacks: [{name: <name>, ...}]``. ``cnnkit report`` summarizes and draws every analysis for
whichever run directories hold its files; those without a callback (the curves, the final metric,
the confusion matrix) read what every run writes. Adding an analysis is adding a module here —
nothing else names it. Modules whose name starts with ``_`` hold shared pieces.

An analysis of your own is one file too, outside cnnkit: list it under the recipe's ``imports:`` and
call ``register(MyReport(), MyCallback)`` in it (the report imports the runs' ``imports:`` again).

Discovery reads module names and docstrings without importing them, so ``cnnkit list`` and
config validation stay free of Lightning's import time.
"""

from __future__ import annotations

import ast
import pkgutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cnnkit.experiments.analyses._unit import Analysis
from cnnkit.registry import ANALYSES, CALLBACKS

if TYPE_CHECKING:
    from cnnkit.registry import Registry

HERE = Path(__file__).parent


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules([str(HERE)]) if not m.name.startswith("_"))


def summary(name: str) -> str:
    """The first paragraph of the module's docstring, on one line (what ``cnnkit list`` shows)."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text(encoding="utf-8"))) or name
    return " ".join(doc.split("\n\n")[0].split())


def has_callback(name: str) -> bool:
    """Whether the module defines ``Callback`` (read from its source: nothing is imported)."""
    tree = ast.parse((HERE / f"{name}.py").read_text(encoding="utf-8"))
    return any(
        isinstance(node, (ast.Assign, ast.ClassDef))
        and any(getattr(t, "id", None) == "Callback" for t in getattr(node, "targets", []))
        or getattr(node, "name", None) == "Callback"
        for node in tree.body
    )


def register_callbacks(registry: "Registry") -> None:
    for name in names():
        if has_callback(name):
            registry.register_lazy(name, f"{__name__}.{name}:Callback", summary(name))


def register(analysis: Analysis, callback: Optional[Any] = None, description: Optional[str] = None) -> Analysis:
    """An analysis defined outside this package: its report side and, when it measures during training, its
    Lightning callback (``callbacks: [{name: <analysis.name>}]``), both under ``analysis.name``."""
    ANALYSES.register(analysis.name, analysis, description=description)
    if callback is not None:
        CALLBACKS.register(analysis.name, callback, description=description)
    return analysis


def units() -> list[Analysis]:
    """Every analysis's report side, built-in and registered, in report order, then by name (imports them)."""
    return sorted((entry.load() for entry in ANALYSES.entries()), key=lambda unit: (unit.order, unit.name))


for _name in names():  # declared, not imported: ``cnnkit list`` reads their docstrings only
    ANALYSES.register_lazy(_name, f"{__name__}.{_name}:ANALYSIS", summary(_name))
register_callbacks(CALLBACKS)  # an analysis that measures during training is a callback by its name
