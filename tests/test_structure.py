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


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in TREES}


def _resolve(name: str) -> str | None:
    """The cnnkit module an imported name lives in (``cnnkit.config.load.load_config`` → ``cnnkit.config.load``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module → the cnnkit modules it imports, at module level or inside a function, absolute or relative.

    ``from . import x`` counts as importing the submodule ``x`` where there is one, else the package."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, set())
        for node in ast.walk(TREES[path]):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                found = _resolve(target) if target.startswith("cnnkit") else None
                if found and found != module:
                    edges.add(found)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_import_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "cnnkit.config.load" in graph["cnnkit.api"]  # a module-level import
    assert "cnnkit.training.module" in graph["cnnkit.training.builders"]  # function-local
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = _cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_data_layer_never_imports_the_terminal():
    graph = import_graph()
    reached, todo = set(), [m for m in graph if m.startswith("cnnkit.data")]
    while todo:
        module = todo.pop()
        if module not in reached:
            reached.add(module)
            todo.extend(graph[module])
    terminal = {m for m in reached
                if m == "cnnkit.console" or m.startswith("cnnkit.training.callbacks.progress")}
    assert not terminal, f"cnnkit.data reaches {sorted(terminal)}"


def _local_imports():
    """(file, line) of every import inside a function."""
    for path, tree in TREES.items():
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        yield path, node


def _says_startup(lines: list[str], node: ast.stmt) -> bool:
    """A ``# startup:`` comment on the import's line or above its group of imports (blank lines between)."""
    if "# startup:" in lines[node.lineno - 1]:
        return True
    index = node.lineno - 2
    while index >= 0 and (not lines[index].strip() or lines[index].lstrip().startswith(("from ", "import "))
                          or lines[index].startswith(" " * (node.col_offset + 4))):
        index -= 1
    return index >= 0 and lines[index].strip().startswith("# startup:")


def test_every_function_local_import_says_it_is_there_for_start_up_time():
    """Imports at the top of a module, but where one would slow ``--help``, ``list`` or a refusal down."""
    unmarked = []
    for path, node in _local_imports():
        if not _says_startup(path.read_text().splitlines(), node):
            unmarked.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not unmarked, "function-local imports without a '# startup: <reason>' comment:\n" + "\n".join(unmarked)


LONGEST_FUNCTION = 60  # lines, decorators aside: a longer function is split into named steps


def _long_functions(trees: dict[Path, ast.Module]) -> list[str]:
    """``file:line: name (N lines)`` for every function or method over ``LONGEST_FUNCTION`` lines."""
    long = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    where = path.relative_to(PACKAGE.parent) if path.is_absolute() else path
                    long.append(f"{where}:{node.lineno}: {node.name} ({length} lines)")
    return long


def test_the_length_scan_counts_methods_and_nested_functions():
    body = "\n".join(f"        x{i} = {i}" for i in range(LONGEST_FUNCTION - 1))
    source = f"class A:\n    def short(self):\n        pass\n\n    def long(self):\n{body}\n"
    assert _long_functions({Path("a.py"): ast.parse(source)}) == []
    source += "        x = 1\n"  # one more line: the method is over the limit
    assert _long_functions({Path("a.py"): ast.parse(source)}) == [f"a.py:5: long ({LONGEST_FUNCTION + 1} lines)"]


def test_no_function_is_longer_than_sixty_lines():
    long = _long_functions(TREES)
    assert not long, f"functions over {LONGEST_FUNCTION} lines (split them into named steps):\n" + "\n".join(long)
