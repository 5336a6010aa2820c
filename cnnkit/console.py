"""What a cnnkit command prints: a header line per run, a summary block, a line per matrix variant.

Lightning and W&B print banners, availability lines, model tables and run histories of their own;
while cnnkit drives Lightning (``lightning_quiet``, the same for the command line and the Python
API) only their warnings and errors show (``--verbose`` or ``CNNKIT_VERBOSE=1`` shows everything),
and the caller's logging and warning settings are restored afterwards. Progress while a run trains
is ``callbacks/progress.py``'s; results go to stdout, notes and errors to stderr.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shlex
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

from cnnkit.config.diff import format_value
from cnnkit.config.plain import spec
from cnnkit.messages import first_process, note, show

_verbose: Optional[bool] = None  # set by the command line; else CNNKIT_VERBOSE decides

# Lightning's warnings that say nothing a cnnkit user can act on: cnnkit chooses the workers and the
# checkpoint directory itself, and a tiny smoke run logs less often than every log_every_n_steps.
HARMLESS_WARNINGS = (
    r".*does not have many workers.*",
    r".*is smaller than the logging interval.*",
    r"Checkpoint directory .* exists and is not empty",
    r".*isinstance\(treespec, LeafSpec\)",
    r".*The `srun` command is available on your system but is not used.*",
)


def verbose() -> bool:
    """Whether Lightning's and W&B's own output is wanted (``--verbose``, or ``CNNKIT_VERBOSE=1``)."""
    if _verbose is not None:
        return _verbose
    return os.environ.get("CNNKIT_VERBOSE", "") not in ("", "0")


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def _lightning_loggers() -> list[str]:
    """The loggers of Lightning's subpackages, found without importing Lightning (several seconds here).

    Lightning resets the level of ``lightning``, ``lightning.pytorch`` and ``lightning.fabric`` when
    imported, but not of the subpackages below them, whose modules all log through them.
    """
    spec = importlib.util.find_spec("lightning")
    if spec is None or not spec.submodule_search_locations:
        return []
    names = []
    for root in spec.submodule_search_locations:
        for package in ("pytorch", "fabric"):
            folder = os.path.join(root, package)
            if os.path.isdir(folder):
                names += [
                    f"lightning.{package}.{entry}"
                    for entry in sorted(os.listdir(folder))
                    if not entry.startswith("__")
                    and (os.path.isdir(os.path.join(folder, entry)) or entry.endswith(".py"))
                ]
    return [name[:-3] if name.endswith(".py") else name for name in names]


def configure(verbose_output: bool) -> None:
    """Set once by the command line (``--verbose``)."""
    global _verbose
    _verbose = verbose_output


@contextmanager
def lightning_quiet() -> Iterator[None]:
    """While cnnkit runs Lightning: its info lines (devices, "fit stopped", "restoring states") and its
    harmless warnings only when ``verbose()``, its product tip never; then the caller's settings again."""
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    added = _not_a_tip not in tips.filters
    tips.addFilter(_not_a_tip)
    levels: dict[str, int] = {}
    try:
        if not verbose():
            for name in _lightning_loggers():
                logger = logging.getLogger(name)
                levels[name] = logger.level
                logger.setLevel(logging.WARNING)
        with _ignored(() if verbose() else HARMLESS_WARNINGS):
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if added:
            tips.removeFilter(_not_a_tip)


@contextmanager
def _ignored(patterns: Sequence[str]) -> Iterator[None]:
    """Warnings matching ``patterns`` ignored for a while. The filters that modules imported meanwhile
    set (Lightning's, scipy's) outlive it, as they would have without it."""
    with warnings.catch_warnings():
        for pattern in patterns:
            warnings.filterwarnings("ignore", message=pattern)
        ours = list(warnings.filters)
        try:
            yield
        finally:
            imported = [f for f in warnings.filters if f not in ours]
    for action, message, category, module, lineno in reversed(imported):
        warnings.filterwarnings(
            action, message.pattern if message else "", category, module.pattern if module else "", lineno
        )


def quiet(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` runs under ``lightning_quiet`` (the API's fit, evaluate and predict)."""

    @functools.wraps(function)
    def quietly(*args: Any, **kwargs: Any) -> Any:
        with lightning_quiet():
            return function(*args, **kwargs)

    return quietly


def text_table(rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Rows (the first is the header) as aligned columns: the first ``left`` to the left, the rest right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) if i < left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]


def interactive(stream: Any = None) -> bool:
    """Whether ``stream`` (stdout) is a terminal that redraws a bar in place (one that reports no width,
    as some pseudo-terminals do, would draw a bar of nothing)."""
    stream = stream or sys.stdout
    if not getattr(stream, "isatty", lambda: False)() or os.environ.get("TERM") == "dumb":
        return False
    try:
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False


def epoch_label(trainer: Any) -> str:
    """``epoch 3/15``: the epoch a trainer is in, of how many."""
    total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    return f"epoch {trainer.current_epoch + 1}" + (f"/{total}" if total else "")


# -- one run ----------------------------------------------------------------------------------------
def _count(n: int) -> str:
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def _seconds(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{seconds:.1f} s" if seconds < 60 else f"{minutes} min {rest:02d} s"


def run_header(cfg: Any, run_path: Any, data: str, parameters: int, trainer: Any) -> str:
    """The line a run starts with:

    ``quickstart/default · cpu · 32-true · digits ... · simple_cnn bn_pre relu, 53.2 K parameters · runs/...``
    """
    device = trainer.strategy.root_device.type
    if trainer.world_size > 1:
        device = f"{trainer.world_size}× {device}"
    return (
        f"{cfg.name}/{cfg.variant} · {device} · {trainer.precision} · {data} · "
        f"{' '.join(model_parts(cfg.model))}, {_count(parameters)} parameters · {run_path}"
    )


def model_parts(model: Any) -> list[str]:
    """How a run's header and ``describe`` name the model: ``simple_cnn(...)``, ``norm bn_pre``, ``act relu``, ..."""
    return [
        format_value(spec(model, "backbone")),
        f"norm {format_value(spec(model, 'norm'))}",
        f"act {format_value(spec(model, 'act'))}",
        f"pool {format_value(spec(model, 'pool'))}",
    ]


def summary_block(result: Any) -> str:
    """The lines a finished (or diverged) fit ends with: its numbers, its checkpoint, its time, W&B (the first
    without the ``cnnkit: `` that ``messages`` adds)."""
    where = f"{result.run_dir.parent.name}/{result.run_dir.name}"
    took = f" in {_seconds(result.seconds)}" if result.seconds is not None else ""
    if result.status == "diverged":
        d = result.diverged or {}
        kept = f"last good checkpoint {d['last_good']}" if d.get("last_good") else "no checkpoint kept"
        lines = [
            f"{where} diverged{took}: {d.get('reason', 'non-finite training loss')}; {kept}; "
            f"marked diverged in {result.run_dir}/status.json"
        ]
    else:
        limited = f" [limited: {', '.join(result.limits)}]" if getattr(result, "limits", None) else ""
        lines = [f"{result.status} {where}{took}{limited} ({shown_path(result.run_dir)})"]
        tested = metric_text({k: v for k, v in result.metrics.items() if k.startswith("test/")}, every=True)
        last = metric_text({k: v for k, v in result.metrics.items() if not k.startswith("test/")}, every=True)
        if tested:  # the fit tests its best checkpoint; the other numbers are the last epoch's
            lines.append(f"  test ({tested_weights(result)}): {tested}")
        if last:
            lines.append(f"  last epoch: {last}")
        if result.best_checkpoint:
            lines.append(f"  best checkpoint: {command_path(result.best_checkpoint)}  (--ckpt best)")
    if result.wandb_sync:
        lines.append(f"  W&B is offline; upload the run with: {result.wandb_sync}")
    return "\n".join(lines)


def tested_weights(result: Any) -> str:
    """Which weights a fit's test metrics are of: ``best checkpoint by val/acc, epoch 9 of 15``."""
    if not result.best_checkpoint:  # checkpoint.save_top_k=0: the state training ended with
        return f"the weights after epoch {result.epochs}" if result.epochs else "the final weights"
    by = f" by {result.best_by}" if result.best_by else ""
    of = f" of {result.epochs}" if result.epochs else ""
    return f"best checkpoint{by}" + (f", epoch {result.best_epoch}{of}" if result.best_epoch else "")


def command_path(path: Any) -> str:
    """A path as it can be pasted into a shell: run directories hold ``=``, ``(``, ``[``."""
    return shlex.quote(shown_path(path))


def shown_path(path: Any) -> str:
    """A path relative to the working directory when it lies under it (as the user typed the command)."""
    text = str(path)
    relative = os.path.relpath(text)
    return relative if not relative.startswith("..") else text


METRIC_ORDER = ("test/acc", "test/loss", "val/acc", "val/loss", "train/acc", "train/loss_epoch")


def metric_text(metrics: dict[str, float], every: bool = False) -> str:
    """``test/acc 0.9750  test/loss 0.0833 ...``; only the accuracies unless ``every``."""
    keys = [k for k in METRIC_ORDER if k in metrics and (every or k.endswith("/acc"))]
    return "  ".join(f"{k} {metrics[k]:.4f}" for k in keys)


# -- a recipe's matrix ------------------------------------------------------------------------------
class MatrixDisplay:
    """One line per variant as it ends, under one live bar over the variants (on a terminal)."""

    def __init__(self, name: str, runs: Sequence[Any], show_bar: bool, runs_dir: Any, keys: Sequence[str]):
        self.name, self.total, self.runs_dir = name, len(runs), runs_dir
        self.recipes = len({getattr(run, "name", name) for run in runs})  # a pool over several: lines name theirs
        self.first_rank = first_process()
        self.started = time.monotonic()
        if self.first_rank:
            spanned = f" ({(', ' if self.recipes > 1 else ' × ').join(keys)})" if keys else ""
            note(f"{name}: {self.total} runs{spanned} in {runs_dir}")
        self.bar = None
        if show_bar and interactive() and self.first_rank:
            from tqdm.auto import tqdm  # startup: tqdm only for a matrix's bar on a terminal

            self.bar = tqdm(total=self.total, unit="run", dynamic_ncols=True, leave=False, file=sys.stdout)
        self.current = ""

    def write(self, line: str) -> None:
        if not self.first_rank:
            return
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)
        else:
            show(line)

    def label(self, cfg: Any) -> str:
        return f"{cfg.name}/{cfg.variant}" if self.recipes > 1 else cfg.variant

    def variant_started(self, index: int, cfg: Any) -> None:
        self.current = f"[{index}/{self.total}] {self.label(cfg)}"
        if self.bar is not None:
            self.bar.set_description_str(self.current, refresh=False)
            self.bar.set_postfix_str("starting")

    def epoch_ended(self, trainer: Any, shown: dict[str, Any]) -> None:
        """A variant's progress on the overall bar: its epoch and latest validation accuracy."""
        if self.bar is None:
            return
        val = f" val/acc {shown['val/acc']:.4f}" if "val/acc" in shown else ""
        self.bar.set_postfix_str(f"{epoch_label(trainer)}{val}")

    def variant_ended(self, index: int, cfg: Any, result: Any) -> None:
        took = f"  {_seconds(result.seconds)}" if result.seconds is not None else ""
        if result.kept:
            state = f"{result.status} before with the same config, kept"
        elif result.status == "diverged":
            state = f"diverged: {(result.diverged or {}).get('reason') or 'non-finite training loss'}"
        else:
            state = result.status
        headline = next((k for k in ("test/acc", "val/acc") if k in result.metrics), None)
        shown = f"{headline} {result.metrics[headline]:.4f}" if headline and result.status == "finished" else ""
        self.write(f"[{index}/{self.total}] {self.label(cfg)}  {state}{took}" + (f"  {shown}" if shown else ""))
        if self.bar is not None:
            self.bar.update(1)

    def close(self, results: Sequence[Any]) -> None:
        """One line per recipe: its runs, how they ended, and the command that compares them."""
        if self.bar is not None:
            self.bar.close()
        if not self.first_rank or not results:
            return
        took = _seconds(time.monotonic() - self.started)
        if self.recipes > 1:
            note(f"{self.name}: {len(results)} runs in {took}")
        by_recipe: dict[Any, list[Any]] = {}
        for result in results:
            by_recipe.setdefault(result.run_dir.parent if self.recipes > 1 else self.runs_dir, []).append(result)
        for runs_dir, ended in by_recipe.items():
            tally = ", ".join(f"{n} {state}" for state, n in ended_counts(ended).items())
            name, when = (runs_dir.name, "") if self.recipes > 1 else (self.name, f" in {took}")
            note(
                f"{name}: {len(ended)} runs{when} ({tally}) in {runs_dir}; compare them with: "
                f"python -m cnnkit report {command_path(runs_dir)}"
            )
            if any(r.wandb_sync for r in ended):
                runs = f"{command_path(runs_dir)}/*/wandb/offline-run-*"
                show(f"  W&B is offline; upload the runs with: wandb sync {runs}")


def ended_counts(results: Sequence[Any]) -> dict[str, int]:
    """How many runs ended each way (kept, finished, diverged, interrupted, ...), in the order first seen."""
    counts: dict[str, int] = {}
    for result in results:
        state = "kept" if result.kept else result.status
        counts[state] = counts.get(state, 0) + 1
    return counts


_matrix: Optional[MatrixDisplay] = None


@contextmanager
def matrix_display(
    name: str, runs: Sequence[Any], show_bar: bool, runs_dir: Any, keys: Sequence[str]
) -> Iterator[MatrixDisplay]:
    """While a matrix runs, its variants report to its display instead of a bar and a block each."""
    global _matrix
    _matrix = MatrixDisplay(name, runs, show_bar, runs_dir, keys)
    try:
        yield _matrix
    finally:
        if _matrix.bar is not None:
            _matrix.bar.close()
        _matrix = None


def active_matrix() -> Optional[MatrixDisplay]:
    return _matrix
