"""The code's shape: public omegaconf API only, config nodes made plain only in cnnkit/config/, and an
import graph without cycles.

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
    for owner in (
        DictConfig,
        ListConfig,
        BaseContainer,
        Node,
        nodes.ValueNode,
        nodes.AnyNode,
        OmegaConf,
        omegaconf,
        config,
        config.b,
        nodes.AnyNode(1),
    ):  # instances: their slots (``_metadata``...) too
        names |= {name for name in dir(owner) if name.startswith("_") and not name.endswith("__")}
    return names


def test_no_omegaconf_private_api():
    private = _omegaconf_private_names()
    assert {"_get_node", "_value", "_metadata", "_get_flag"} <= private  # the scan knows what it looks for
    found = []
    for path, tree in TREES.items():
        where = path.relative_to(PACKAGE.parent)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{where}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("omegaconf"):
                if any(part.startswith("_") for part in node.module.split(".")) or any(
                    alias.name.startswith("_") for alias in node.names
                ):
                    found.append(f"{where}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}:{node.lineno}: import {a.name}"
                    for a in node.names
                    if a.name.startswith("omegaconf.") and "._" in f".{a.name}"
                ]
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
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
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
                return path[path.index(target) :] + [target]
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
    terminal = {m for m in reached if m == "cnnkit.console" or m.startswith("cnnkit.training.callbacks.progress")}
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
    while index >= 0 and (
        not lines[index].strip()
        or lines[index].lstrip().startswith(("from ", "import "))
        or lines[index].startswith(" " * (node.col_offset + 4))
    ):
        index -= 1
    return index >= 0 and lines[index].strip().startswith("# startup:")


def test_every_function_local_import_says_it_is_there_for_start_up_time():
    """Imports at the top of a module, but where one would slow ``--help``, ``list`` or a refusal down."""
    unmarked = []
    for path, node in _local_imports():
        if not _says_startup(path.read_text().splitlines(), node):
            unmarked.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    assert not unmarked, "function-local imports without a '# startup: <reason>' comment:\n" + "\n".join(unmarked)


# -- one writer to the terminal -----------------------------------------------------------------
WRITER = PACKAGE / "messages.py"
RANK_NAMES = {"rank_zero_only", "rank_zero_info", "rank_zero_warn", "rank_zero_debug", "is_global_zero"}
RANK_ENV_KEYS = {"RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"}


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {
        id(node.body[0].value)
        for node in nodes
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }


def _terminal_writes(tree: ast.AST) -> list[str]:
    """``print(``, ``sys.stdout.write``/``sys.stderr.write`` and a ``"cnnkit: "`` prefix written by hand."""
    found, docstrings = [], _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            found.append(f"{node.lineno}: print(")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr == "write"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr in ("stdout", "stderr")
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "sys"
        ):
            found.append(f"{node.lineno}: sys.{node.value.attr}.write")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "cnnkit: " in node.value
            and id(node) not in docstrings
        ):
            found.append(f"{node.lineno}: a 'cnnkit: ' prefix")
    return found


def _rank_checks(tree: ast.AST) -> list[str]:
    """Asking "am I rank 0" any other way than ``messages.first_process``: Lightning's rank-zero helpers, a
    comparison with ``global_rank``, or the launcher's rank variables read directly."""
    found = []
    for node in ast.walk(tree):
        names = (
            [node.id]
            if isinstance(node, ast.Name)
            else [node.attr]
            if isinstance(node, ast.Attribute)
            else [alias.name for alias in node.names]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        if RANK_NAMES & set(names):
            found.append(f"{node.lineno}: {sorted(RANK_NAMES & set(names))[0]}")
        elif isinstance(node, ast.Compare) and any(
            isinstance(side, ast.Attribute) and side.attr == "global_rank" for side in (node.left, *node.comparators)
        ):
            found.append(f"{node.lineno}: global_rank compared")
        elif isinstance(node, ast.Constant) and node.value in RANK_ENV_KEYS:
            found.append(f"{node.lineno}: {node.value!r} read")
    return found


def test_the_terminal_checks_see_what_they_forbid():
    writes = ast.parse('"""cnnkit: a docstring"""\nprint("x")\nsys.stderr.write("y")\nsay(f"cnnkit: {x}")\n')
    assert [line.split(":")[0] for line in _terminal_writes(writes)] == ["2", "3", "4"]
    ranks = ast.parse(
        "from lightning.pytorch.utilities.rank_zero import rank_zero_only\n"
        "first = trainer.global_rank == 0\nos.environ.get('LOCAL_RANK')\nshard = trainer.global_rank\n"
    )
    assert [line.split(":")[0] for line in _rank_checks(ranks)] == ["1", "2", "3"]


def test_only_messages_writes_to_the_terminal():
    """One place adds the prefix and decides which process speaks (argparse's own --help text aside)."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path, tree in TREES.items()
        if path != WRITER
        for line in _terminal_writes(tree)
    ]
    assert not found, "write through cnnkit.messages (say/note/warn/error/show) instead:\n" + "\n".join(found)


def test_one_rank_zero_function():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path, tree in TREES.items()
        if path != WRITER
        for line in _rank_checks(tree)
    ]
    assert not found, "ask cnnkit.messages.first_process() instead:\n" + "\n".join(found)


def test_the_writer_imports_no_other_cnnkit_module():
    """So every layer, the data and the registry too, can use it without a cycle or a slower --help."""
    assert not import_graph()["cnnkit.messages"]


# -- layers: which part of cnnkit may import which --------------------------------------------------
# Low → high; a module imports only from its own layer and those below. Why each sits where it does:
LAYERS = (
    "errors",  # the exceptions every layer raises: imports nothing of cnnkit
    "messages",  # the one writer to the terminal (prefix, first process): imports nothing of cnnkit
    "registry",  # names → entries, the extension point: knows no entry, only how to find them
    "nn.layers",  # norms, activations, poolings, inits: registered building blocks the config's plans parse
    "config",  # the typed config, its validation and plans: read before torch (``--help``, refusals)
    "runs",  # a run's directory and files, read from the config alone before anything trains
    "console",  # what the terminal shows: formats configs and runs, owns no computation
    "nn",  # the model built from the config (backbones, the network, its anatomy table)
    "data",  # datasets and loaders: knows the config, never the terminal (its caller says its notes)
    "training",  # the Lightning module, trainer, callbacks, evaluation: models and data together
    "experiments",  # recipes' matrices, sweeps, analyses and the report over finished runs
    "api",  # the public functions: one call per command
    "cli",  # argument parsing and exit codes over the api; the package's own entry points with it
)


def layer_of(module: str) -> int:
    """The index in ``LAYERS`` of the longest layer ``module`` is in; the package's entry modules are top."""
    inner = module.removeprefix("cnnkit").lstrip(".")
    if inner in ("", "__main__"):
        return len(LAYERS) - 1
    found = [name for name in LAYERS if inner == name or inner.startswith(name + ".")]
    assert found, f"{module} is in no layer: add its part of cnnkit to LAYERS"
    return LAYERS.index(max(found, key=len))


def test_lower_layers_never_import_higher_ones():
    assert layer_of("cnnkit.nn.layers.norms") < layer_of("cnnkit.config.plans") < layer_of("cnnkit.nn.model")
    upward = {
        (module, target)
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    }
    assert not upward, "imports from a higher layer (move the piece down): " + ", ".join(
        f"{a} → {b}" for a, b in sorted(upward)
    )


RUN_FILES = ("config.yaml", "status.json", "metrics.csv")


def test_only_the_runs_layer_names_a_runs_files():
    """RunDir reads them (``read_status``, ``read_config``, ``read_metrics``) and names them; a path built from
    the literal name elsewhere would be a second reader. Prose that mentions them (help, messages) is fine."""
    naming = []
    for path, tree in TREES.items():
        if path.parent.name == "runs":
            continue
        naming += [
            f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in RUN_FILES
        ]
    assert not naming, "a run's files named outside cnnkit/runs/ (use RunDir):\n" + "\n".join(naming)
    from cnnkit.runs import run_dir

    assert (run_dir.CONFIG_FILE, run_dir.STATUS_FILE, run_dir.METRICS_FILE) == RUN_FILES


CONVERSIONS = {"to_plain", "to_container", "to_object"}  # an omegaconf node made plain data


def _conversions(tree: ast.AST) -> list[int]:
    """Lines calling a conversion of a config node into plain data, by name or as an attribute."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in CONVERSIONS
    ]


def test_only_the_config_layer_converts_config_nodes():
    """Values leave the config layer plain (``config/plain.py``; ``one_of`` keys are strings), so no other
    module needs to know omegaconf's node types."""
    config = PACKAGE / "config"
    assert any(_conversions(tree) for path, tree in TREES.items() if config in path.parents)  # the scan sees them
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}"
        for path, tree in TREES.items()
        if config not in path.parents
        for line in _conversions(tree)
    ]
    assert not found, "convert config nodes in cnnkit/config/ (plain.spec/as_data...), not at:\n" + "\n".join(found)


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
