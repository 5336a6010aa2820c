"""One registry class: config names → interchangeable parts (norms, activations, backbones, ...).

Names are flat (no scopes) and normalized, so ``BN-Pre``, ``bn_pre`` and ``bnpre`` are one name.
Built-in entries live in ordinary modules that register themselves on import; a registry imports
them the first time it is asked for anything, so ``import cnnkit`` stays light: its listed modules,
and every module of its packages (a new file in ``cnnkit/nn/layers/`` or ``cnnkit/nn/backbones/`` is found
without being named anywhere). Entries may also be declared lazily by import path (``list`` then
shows them without importing their module). Third-party packages plug in through the
``cnnkit.plugins`` entry-point group; a user's own modules through the config's ``imports:``.

The registries are declared once, at the end of this module: the command line, the package's
exports and the plans read them from ``REGISTRIES``.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator, Mapping

from cnnkit.errors import RegistryError
from cnnkit.messages import say

PLUGIN_GROUP = "cnnkit.plugins"
NO_PLUGINS_ENV = "CNNKIT_NO_PLUGINS"
IMPORTS_HINT = "defined in your own code? list it under `imports:` in the config, or install a plugin"


def normalize(name: str) -> str:
    """The key a name is stored under: case, '-' and '_' do not matter."""
    return name.lower().replace("-", "").replace("_", "")


def definition_site(obj: Any) -> str:
    """Where an object was defined, for error messages (file:line, else module.qualname)."""
    try:
        path = inspect.getsourcefile(obj)
        line = inspect.getsourcelines(obj)[1]
        return f"{path}:{line}"
    except (TypeError, OSError):
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _qualified_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


def _import_path(path: str) -> Any:
    module_name, _, attr = path.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


@dataclass
class Entry:
    """One registered name. ``target`` is None until a lazily declared entry is first used."""

    name: str
    description: str
    target: Any = None
    import_path: str | None = None
    aliases: tuple[str, ...] = ()
    preset: dict[str, Any] = field(default_factory=dict)
    traits: dict[str, Any] = field(default_factory=dict)  # facts about the entry (a backbone's smallest input)

    def load(self) -> Any:
        if self.target is None:
            self.target = _import_path(self.import_path)
        return self.target

    @property
    def origin(self) -> str:
        return self.import_path or definition_site(self.target)

    def arguments(self, skip: tuple[str, ...] = ()) -> list[str]:
        """``key=default`` (``key`` when required) for each argument a config may set, preset values as defaults."""
        try:
            params = inspect.signature(self.load()).parameters.values()
        except (TypeError, ValueError):
            return []
        shown = []
        for p in params:
            if p.name in skip or p.kind not in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            ):
                continue
            default = self.preset.get(p.name, p.default)
            if default is inspect.Parameter.empty:
                shown.append(p.name)
            else:
                value = list(default) if isinstance(default, tuple) else default
                text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
                shown.append(f"{p.name}={text}")
        return shown


class Registry:
    """Maps names to callables that build one kind of part.

    ``register`` works as a decorator or a call; ``build(spec, **overrides)`` accepts a name or
    a mapping ``{name: ..., **kwargs}`` and checks kwargs against the target's signature first.
    """

    def __init__(
        self, kind: str, builtins: tuple[str, ...] = (), packages: tuple[str, ...] = (), inputs: tuple[str, ...] = ()
    ):
        """``builtins``: modules that register the built-in entries; ``packages``: every module in them does;
        ``inputs``: what cnnkit passes when it builds an entry, which a config never sets."""
        self.kind = kind  # plural, as used on the command line: "norms", "backbones", ...
        self.singular = kind[:-1] if kind.endswith("s") else kind
        self.inputs = inputs
        self._builtins = builtins
        self._packages = packages
        self._builtins_loaded = not builtins and not packages
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    # -- registration -------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        target: Any = None,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        description: str | None = None,
        override: bool = False,
        traits: Mapping[str, Any] | None = None,
        **preset: Any,
    ) -> Any:
        """Register ``target`` under ``name``; without ``target`` return a decorator.

        ``preset`` kwargs are bound to the entry (``register("gn8", GroupNormScheme, groups=8)``);
        ``traits`` are facts about it that tools and tests read (``{"min_size": 32}`` for a backbone).
        """
        if target is None:

            def decorator(obj: Any) -> Any:
                self.register(
                    name, obj, aliases=aliases, description=description, override=override, traits=traits, **preset
                )
                return obj

            return decorator
        name = name or getattr(target, "__name__", None)
        if not name:
            raise RegistryError(f"cannot register {target!r} in {self.kind}: give it a name")
        if description is None:
            doc = inspect.getdoc(target) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        entry = Entry(
            name=name,
            description=description,
            target=target,
            aliases=tuple(aliases),
            preset=dict(preset),
            traits=dict(traits or {}),
        )
        self._add(entry, override)
        return target

    def register_lazy(
        self,
        name: str,
        import_path: str,
        description: str,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        override: bool = False,
        **preset: Any,
    ) -> None:
        """Declare an entry by ``"package.module:attribute"``; nothing is imported until used."""
        entry = Entry(
            name=name, description=description, import_path=import_path, aliases=tuple(aliases), preset=dict(preset)
        )
        self._add(entry, override)

    def _add(self, entry: Entry, override: bool) -> None:
        key = normalize(entry.name)
        existing = self._entries.get(key) or self._entries.get(self._aliases.get(key, ""))
        if existing is not None and not override and not self._same_definition(existing, entry):
            raise RegistryError(
                f"{self.kind}: name '{entry.name}' is already taken by {existing.origin}; "
                f"cannot also register {entry.origin} (pass override=True to replace it)"
            )
        if existing is not None:
            self._remove(existing)
        self._entries[key] = entry
        for alias in entry.aliases:
            alias_key = normalize(alias)
            taken = self._entries.get(alias_key)
            if taken is not None and taken is not entry:
                raise RegistryError(
                    f"{self.kind}: alias '{alias}' of '{entry.name}' is already a name ({taken.origin})"
                )
            self._aliases[alias_key] = key

    @staticmethod
    def _same_definition(old: Entry, new: Entry) -> bool:
        """Re-registering the same thing (a re-imported module, a re-run notebook cell) is a no-op."""
        if old.preset != new.preset:
            return False
        if old.target is not None and new.target is not None:
            return old.target is new.target or _qualified_name(old.target) == _qualified_name(new.target)
        if old.import_path and new.import_path:
            return old.import_path == new.import_path
        declared, real = (old, new) if old.import_path else (new, old)
        return declared.import_path == _qualified_name(real.target)

    def _remove(self, entry: Entry) -> None:
        self._entries.pop(normalize(entry.name), None)
        for alias in entry.aliases:
            self._aliases.pop(normalize(alias), None)

    # -- lookup -------------------------------------------------------------------------------
    def _load_builtins(self) -> None:
        if not self._builtins_loaded:
            self._builtins_loaded = True
            for module in self._builtins:
                importlib.import_module(module)
            for name in self._packages:
                package = importlib.import_module(name)
                for found in pkgutil.iter_modules(package.__path__):  # __path__: where its files are looked for
                    if not found.name.startswith("_"):
                        importlib.import_module(f"{name}.{found.name}")

    def _find(self, name: str) -> Entry | None:
        key = normalize(name)
        return self._entries.get(key) or self._entries.get(self._aliases.get(key, ""))

    def get_entry(self, name: str) -> Entry:
        if not isinstance(name, str):
            raise RegistryError(f"{self.kind}: expected a name, got {name!r}")
        self._load_builtins()
        entry = self._find(name)
        if entry is None and load_plugins():
            entry = self._find(name)
        if entry is None:
            raise RegistryError(self._unknown_message(name))
        return entry

    def get(self, name: str) -> Any:
        """The registered target (class or function) under ``name``."""
        entry = self.get_entry(name)
        try:
            return entry.load()
        except Exception as err:  # a lazily declared entry whose module cannot be imported
            raise RegistryError(
                f"{self.kind}: '{entry.name}' is declared at {entry.import_path} but could not be "
                f"loaded: {type(err).__name__}: {err}"
            ) from err

    def _unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(normalize(name), [normalize(n) for n in names], n=3, cutoff=0.5)
        by_key = {normalize(n): n for n in names}
        hint = f"did you mean {', '.join(repr(by_key[c]) for c in close)}? " if close else ""
        return f"unknown {self.singular} '{name}'; {hint}available: {', '.join(names)}. ({IMPORTS_HINT})"

    def __contains__(self, name: str) -> bool:
        self._load_builtins()
        return self._find(name) is not None

    def names(self) -> list[str]:
        self._load_builtins()
        load_plugins()
        return sorted(entry.name for entry in self._entries.values())

    def entries(self) -> Iterator[Entry]:
        for name in self.names():
            yield self._find(name)

    # -- building -----------------------------------------------------------------------------
    def plan(self, spec: Any, given: tuple[str, ...] = (), offered: tuple[str, ...] = ()) -> "Plan":
        """Resolve ``spec`` and check its arguments against the inputs cnnkit will add, calling nothing.

        ``given`` inputs are always passed (they win over the spec); ``offered`` ones only when the
        target takes them and the spec did not set them. The same plan serves validation (which
        stops here) and construction (``Plan.build`` with the inputs' values).
        """
        name, kwargs = split_spec(spec, self.kind)
        entry = self.get_entry(name)
        target = self.get(name)
        plan = Plan(f"{self.singular} '{entry.name}'", target, {**entry.preset, **kwargs}, tuple(given), tuple(offered))
        passed = {*plan.kwargs, *given, *(k for k in offered if plan.takes(k))}
        check_kwargs(target, dict.fromkeys(passed), plan.what)
        return plan

    def build(self, spec: Any, optional: Mapping[str, Any] | None = None, **given: Any) -> Any:
        """Plan and build in one go: ``given`` inputs always passed, ``optional`` ones if taken."""
        optional = dict(optional or {})
        return self.plan(spec, tuple(given), tuple(optional)).build(**optional, **given)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


@dataclass(frozen=True)
class Plan:
    """One part, checked and ready to build: the target, the config's arguments, the inputs it gets."""

    what: str  # "backbone 'resnet20'", for messages
    target: Callable[..., Any]
    kwargs: dict[str, Any]  # the entry's preset, then the config spec's arguments
    given: tuple[str, ...] = ()  # inputs always passed, over the spec
    offered: tuple[str, ...] = ()  # inputs passed when the target takes them and the spec did not set them

    def takes(self, key: str) -> bool:
        accepted = accepted_kwargs(self.target)
        return accepted is None or key in accepted

    def build(self, **inputs: Any) -> Any:
        expected = {*self.given, *self.offered}
        if set(inputs) != expected:
            raise TypeError(f"{self.what}: built with inputs {sorted(inputs)}, planned with {sorted(expected)}")
        merged = {k: inputs[k] for k in self.offered if self.takes(k) and k not in self.kwargs}
        merged.update(self.kwargs)
        merged.update({k: inputs[k] for k in self.given})
        return self.target(**merged)


def split_spec(spec: Any, kind: str = "registry") -> tuple[str, dict[str, Any]]:
    """A spec is a name or a mapping with a ``name`` key and keyword arguments."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
        if not isinstance(name, str):
            squeezed = [k for k in kwargs if isinstance(k, str) and ":" in k]
            hint = (
                " (in YAML flow style put a space after each colon: {name: bn_pre, momentum: 0.1})" if squeezed else ""
            )
            raise RegistryError(
                f"a mapping spec needs a 'name' key (e.g. {{name: ..., <argument>: ...}}), got {dict(spec)}{hint}"
            )
        return name, kwargs
    hint = (
        " (YAML reads off/on/no/yes/true/false as booleans: quote the name, e.g. 'off')"
        if isinstance(spec, bool)
        else ""
    )
    raise RegistryError(f"expected a name or a mapping with 'name', got {spec!r}{hint}")


def accepted_kwargs(target: Callable[..., Any]) -> list[str] | None:
    """The keyword arguments ``target`` takes; None if it takes any (``**kwargs``) or cannot be inspected."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]


def check_kwargs(target: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> None:
    """Fail before the call, with a close match, instead of a TypeError deep inside ``__init__``."""
    accepted = accepted_kwargs(target)
    if accepted is None:
        return
    params = inspect.signature(target).parameters
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            if isinstance(key, str) and ":" in key:  # {name:bn_pre} is one key in YAML's flow style
                hint = " (in YAML flow style put a space after each colon: {name: bn_pre, momentum: 0.1})"
            raise RegistryError(f"{what} has no argument '{key}'{hint}; it accepts: {', '.join(accepted) or 'nothing'}")
    missing = [n for n in accepted if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise RegistryError(f"{what} needs argument(s) {', '.join(repr(m) for m in missing)}")


# -- plugins ------------------------------------------------------------------------------------
_plugins_loaded = False
plugin_failures: list[str] = []


def load_plugins() -> bool:
    """Import every ``cnnkit.plugins`` entry point once. Returns True if this call loaded any.

    A broken plugin is reported on stderr and skipped; ``CNNKIT_NO_PLUGINS=1`` turns this off.
    """
    global _plugins_loaded
    if _plugins_loaded or os.environ.get(NO_PLUGINS_ENV, "") not in ("", "0"):
        return False
    _plugins_loaded = True

    loaded = False
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.ismodule(obj):
                obj()
            loaded = True
        except Exception as err:  # one bad plugin must not break cnnkit
            message = f"plugin '{ep.name}' ({ep.value}) failed to load and was skipped: {type(err).__name__}: {err}"
            plugin_failures.append(message)
            say(message)
    return loaded


def reset_plugins() -> None:
    """Forget which plugins were loaded (tests install new ones)."""
    global _plugins_loaded
    _plugins_loaded = False
    plugin_failures.clear()


# -- user code named in a config ---------------------------------------------------------------
_imported_files: dict[str, Any] = {}


def import_user_code(items: list[str] | tuple[str, ...]) -> None:
    """Import modules or ``.py`` files listed under ``imports:``; they register their entries.

    This is the one way a config causes code to run, and it is explicit.
    """
    for item in items:
        try:
            if item.endswith(".py"):
                path = os.path.abspath(item)
                if path in _imported_files:
                    continue
                if not os.path.isfile(path):
                    raise RegistryError(
                        f"imports: file '{item}' not found (paths are relative to the working directory {os.getcwd()})"
                    )
                module_name = "cnnkit_user_" + "".join(c if c.isalnum() else "_" for c in path)
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(module_name, None)
                    raise
                _imported_files[path] = module
            else:
                importlib.import_module(item)
        except RegistryError:
            raise
        except ModuleNotFoundError as err:
            if err.name and item.startswith(err.name):
                raise RegistryError(
                    f"imports: module '{item}' not found; is it installed, or did you mean a file path ending in .py?"
                ) from err
            raise RegistryError(f"imports: '{item}' failed to import: {type(err).__name__}: {err}") from err
        except Exception as err:
            raise RegistryError(f"imports: '{item}' failed to import: {type(err).__name__}: {err}") from err


# -- the registries -----------------------------------------------------------------------------
REGISTRIES: dict[str, Registry] = {}  # by kind, in the order ``cnnkit list`` shows them


def _declare(
    kind: str, builtins: tuple[str, ...] = (), packages: tuple[str, ...] = (), inputs: tuple[str, ...] = ()
) -> Registry:
    REGISTRIES[kind] = Registry(kind, builtins, packages, inputs)
    return REGISTRIES[kind]


# each exported as its kind in capitals (``cnnkit.NORMS``)
NORMS = _declare("norms", packages=("cnnkit.nn.layers",))
ACTIVATIONS = _declare("activations", packages=("cnnkit.nn.layers",))
POOLINGS = _declare("poolings", packages=("cnnkit.nn.layers",), inputs=("kernel_size",))  # the backbone's pool size
INITS = _declare("inits", packages=("cnnkit.nn.layers",))
BACKBONES = _declare(
    "backbones", packages=("cnnkit.nn.backbones",), inputs=("input_shape", "num_classes", "norm", "act", "pool", "bias")
)
DATASETS = _declare("datasets", builtins=("cnnkit.data.datasets",))
TRANSFORMS = _declare(
    "transforms", builtins=("cnnkit.data.transforms",), inputs=("size",)
)  # the images' (height, width), for crops that default to it
OPTIMIZERS = _declare("optimizers", builtins=("cnnkit.training.optim",), inputs=("params", "lr", "weight_decay"))
SCHEDULERS = _declare(
    "schedulers", builtins=("cnnkit.training.optim",), inputs=("optimizer", "total_steps", "steps_per_epoch", "lr")
)
# the course analyses register their own callbacks (one module each, found by name: experiments/analyses/)
CALLBACKS = _declare("callbacks", builtins=("cnnkit.training.callbacks", "cnnkit.experiments.analyses"))
ANALYSES = _declare("analyses", builtins=("cnnkit.experiments.analyses",))  # report units: ``Analysis`` objects
