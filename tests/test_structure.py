"""The code's shape: public omegaconf API only, and an import graph without cycles.

Read from the sources with ``ast`` (nothing is imported), so a private attribute or a cycle added
anywhere in cnnkit/ fails here, whichever path of the program would reach it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import omegaconf
from omegaconf import DictConfig, ListConfig, Node, OmegaConf, nodes
from omegaconf.basecontainer import BaseContainer

PACKAGE = Path(__file__).resolve().parents[1] / "cnnkit"
TREES = {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def _omegaconf_private_names() -> set[str]:
    """Every ``_``-prefixed attribute omegaconf's config, node and helper classes have (dunders aside)."""
    config = OmegaConf.create({"a": 1, "b": [2]})
    names = set()
    for owner in (DictConfig, ListConfig, BaseContainer, Node, nodes.ValueNode, nodes.AnyNode, OmegaConf, omegaconf,
                  config, config.b, nodes.AnyNode(1)):  # instances: their slots (``_metadata``...) too
        names |= {name for name in dir(owner) if name.startswith("_") and not name.endswith("__")}
    return names


def test_no_omegaconf_private_api():
    private = _omegaconf_private_names()
    assert {"_get_node", "_value", "_metadata", "_get_flag"} <= private  # the scan knows what it looks for
    found = []
    for path, tree in TREES.items():
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in private
                    and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{where}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("omegaconf"):
                if any(part.startswith("_") for part in node.module.split(".")) or \
                        any(alias.name.startswith("_") for alias in node.names):
                    found.append(f"{where}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                found += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                          if a.name.startswith("omegaconf.") and "._" in f".{a.name}"]
    assert not found, "omegaconf's private API (use OmegaConf.select/is_missing/to_container...):\n" + "\n".join(found)
