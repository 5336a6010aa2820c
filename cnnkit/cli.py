"""``python -m cnnkit``: a thin argparse front over the Python API.

Nothing heavy is imported at module level: ``--help`` needs neither torch nor Lightning, and
``list`` needs no Lightning. A user's mistake prints one line and exits 2; ``--debug`` (or
``CNNKIT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fnmatch
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from cnnkit.errors import CheckpointError, CnnkitError, ConfigError, first_line, own_message
from cnnkit.messages import error, first_process, note, say, show
from cnnkit.registry import REGISTRIES, import_user_code

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERNAL = 1

REGISTRY_NAMES = tuple(REGISTRIES)
TABLE_ROWS = 20  # predict prints its rows as a table up to this many images


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, not usage text plus a line."""

    def error(self, message: str) -> None:
        error(f"error: {message} (see '{self.prog} --help')")
        raise SystemExit(EXIT_USER_ERROR)


def _add_config_args(parser: argparse.ArgumentParser, ckpt_help: Optional[str]) -> None:
    parser.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="FILE",
        help="YAML config file; repeat to merge several (later wins)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides applied last, e.g. model.norm=bn_post trainer.max_epochs=3",
    )
    if ckpt_help:
        parser.add_argument("--ckpt", metavar="PATH|last", help=ckpt_help)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_output_args(parser)


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show Lightning's and W&B's own output too (model table, banners, run history)",
    )
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def build_parser() -> Parser:
    parser = Parser(
        prog="cnnkit",
        description="Train and evaluate CNN classifiers from YAML recipes.",
        epilog="Run 'cnnkit COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show Lightning's and W&B's own output too (model table, banners, run history)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    _add_training(commands)
    _add_evaluation(commands)
    _add_tools(commands)
    return parser


def _add_training(commands: Any) -> None:
    """``fit``."""
    fit = commands.add_parser(
        "fit",
        help="train a model (then test the best checkpoint)",
        description="Train the config's model in runs/<name>/<variant>/.",
    )
    _add_config_args(fit, "resume training from this checkpoint ('last': the run's checkpoints/last.ckpt)")
    fit.add_argument("--init-from", metavar="PATH", help="start from a checkpoint's weights (fine-tuning)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    fit.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE|VARIANT",
        help="run only the matrix combinations with this value (repeatable: all must match), "
        "or the variants of these names",
    )
    fit.add_argument(
        "--jobs",
        "-j",
        metavar="N|auto",
        help="train N matrix variants at once, in processes with their share of the cores (one per "
        "GPU); auto: from the devices and the model's size (default: the recipe's jobs:, else 1)",
    )
    fit.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="FILE",
        help="fit this recipe (repeatable: several fit as one command, with --jobs in one pool of "
        "workers); the --config files merge after each, then the overrides",
    )
    fit.add_argument(
        "--print-variants",
        action="store_true",
        help="print the variant names the command would fit, one a line in matrix order, and exit",
    )


def _add_evaluation(commands: Any) -> None:
    """``validate``, ``test`` and ``predict``: a checkpoint's numbers."""
    for name, help_text in (
        ("validate", "evaluate a checkpoint on the validation split"),
        ("test", "evaluate a checkpoint on the test split"),
    ):
        sub = commands.add_parser(
            name,
            help=help_text,
            description=f"{help_text.capitalize()}; the model is rebuilt from the config stored in the checkpoint.",
        )
        _add_config_args(
            sub,
            "checkpoint to evaluate ('last' / 'best': the run's last or best checkpoint, of "
            "the --config's run or the one run under runs/)",
        )

    predict = commands.add_parser(
        "predict",
        help="write class probabilities to a CSV",
        description="Predict a split or image files, folders and globs; writes a CSV "
        "(file, class, probability, label and correct where known, top-k) "
        "and prints a table for up to 20 images.",
    )
    _add_config_args(
        predict,
        "checkpoint to predict with ('last' / 'best': the run's last or best "
        "checkpoint, of the --config's run or the one run under runs/)",
    )
    source = predict.add_mutually_exclusive_group()
    source.add_argument(
        "--split", choices=("train", "val", "test"), help="a split of the configured dataset (default: test)"
    )
    source.add_argument(
        "--input",
        "-i",
        action="append",
        default=[],
        metavar="PATH",
        help="an image file, a folder (searched recursively) or a quoted glob; repeat per path",
    )
    predict.add_argument("--output", "-o", metavar="CSV", help="where to write (default: the run directory)")
    predict.add_argument("--top-k", type=int, default=3, metavar="K", help="classes listed per image (default 3)")


def _add_tools(commands: Any) -> None:
    """``describe``, ``report``, ``sweep`` and ``list``: about models, runs and the registry."""
    describe = commands.add_parser(
        "describe",
        help="show the model's layers, shapes, receptive fields, MACs",
        description="One row per layer of the config's model: output shape, parameters, "
        "kernel/stride/padding, receptive field and jump, multiply-accumulates; "
        "then totals and the saving from parameter sharing. Reads no data.",
    )
    _add_config_args(describe, None)
    describe.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    report = commands.add_parser(
        "report",
        help="figures and a REPORT.md table from a recipe's runs",
        description="Read runs/<recipe>/*/ (metrics.csv, status.json and the analysis "
        "callbacks' files) and write PNG figures and REPORT.md there.",
    )
    report.add_argument("runs", metavar="RUNS_DIR", help="a recipe's run directory, e.g. runs/bn_placement")
    report.add_argument(
        "--wandb",
        action="store_true",
        help="also add the figures to the runs' W&B runs (each W&B session writes a new local run "
        "folder, so a run whose figures were added unchanged before is skipped)",
    )
    report.add_argument("--no-wandb", action="store_true", help=argparse.SUPPRESS)  # the default now; scripts pass it
    _add_output_args(report)

    sweep = commands.add_parser(
        "sweep",
        help="write a W&B sweep YAML from a recipe's matrix",
        description="Turn a recipe's matrix into a W&B grid sweep whose command runs "
        "'cnnkit fit --config RECIPE key=value ...' (a matrix key given as an "
        "override narrows the matrix to that value).",
    )
    sweep.add_argument("recipe", metavar="RECIPE", help="the recipe YAML")
    sweep.add_argument("--output", "-o", metavar="FILE", help="where to write (default: stdout)")
    sweep.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    _add_list(commands)


def _add_list(commands: Any) -> None:
    """``list``: the registries' entries, a user's own through ``imports=``."""
    listing = commands.add_parser(
        "list",
        help="list registered names (norms, backbones, ...)",
        description="List registry entries with one-line descriptions; naming one "
        "registry also shows each entry's config keys and defaults. "
        "'imports=[my_layers.py]' (or --config) adds your own entries.",
    )
    listing.add_argument(
        "items",
        nargs="*",
        metavar="[REGISTRY] [PATTERN] [KEY=VALUE]",
        help=f"a registry ({', '.join(REGISTRY_NAMES)}; singular too), a substring or glob, "
        f"and config overrides such as 'imports=[my_layers.py]'",
    )
    listing.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="FILE",
        help="a config whose imports: register your own entries",
    )
    listing.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


# -- commands -----------------------------------------------------------------------------------
def _print_config(args: argparse.Namespace) -> int:
    # startup: not on the --help path
    from cnnkit.config.load import load_config, to_yaml

    if getattr(args, "ckpt", None) and args.command != "fit":
        from cnnkit.api import checkpoint_config  # startup: not on the --help path

        cfg = checkpoint_config(args.ckpt, args.config, args.overrides)[0]
    else:
        cfg = load_config(args.config, args.overrides)
    show(to_yaml(cfg), end="")
    return 0


def _take_recipes(args: argparse.Namespace) -> None:
    """``fit --recipe A --recipe B -c overlay.yaml``: each recipe's files (the recipe, then the --config
    files) in ``args.recipes``; a single one is the same command as ``--config A -c overlay.yaml``."""
    if args.command != "fit":  # (sweep's positional is also called recipe)
        return
    recipes = args.recipe
    args.recipes = [[recipe, *args.config] for recipe in recipes] if recipes else [args.config]
    if len(args.recipes) == 1:
        args.config = args.recipes[0]
        return
    for flag, given in (("--print-config", args.print_config), ("--print-variants", args.print_variants)):
        if given:
            raise ConfigError(f"{flag} shows one recipe: give it --config FILE (or one --recipe)")
    if args.ckpt not in (None, "last"):
        raise ConfigError(f"--ckpt {args.ckpt} is one run's checkpoint: with several recipes use --ckpt last")


def _cmd_fit(args: argparse.Namespace) -> int:
    if not any(args.recipes) and not any(o.partition("=")[0].strip() == "name" for o in args.overrides):
        # without a recipe every such run would land, unnamed, in runs/default/
        raise ConfigError(
            "fit needs a recipe: --config FILE (e.g. --config recipes/quickstart.yaml); to train "
            "the built-in defaults without one, name the run: name=NAME"
        )
    if args.print_variants:
        # startup: the config alone, no torch (a SLURM array task runs it first)
        from cnnkit.experiments.variants import variant_names

        show("\n".join(variant_names(args.config, args.overrides, args.only)))
        return 0
    # startup: not on the --help path
    from cnnkit import api
    from cnnkit.experiments.jobs import parse_jobs

    results = api.fit_recipes(
        args.recipes,
        args.overrides,
        only=args.only,
        ckpt=args.ckpt,
        init_from=args.init_from,
        overwrite=args.overwrite,
        jobs=None if args.jobs is None else parse_jobs(args.jobs),
    )
    # startup: not on the --help path
    from cnnkit.console import summary_block

    if not first_process() or len(results) != 1 or len(results[0]) != 1:  # under DDP every rank runs this
        return 0  # a matrix (or several) reported as it ran
    result = results[0][0]
    if result.kept and not args.ckpt:
        say(
            f"{result.run_dir.parent.name}/{result.run_dir.name} {result.status} before with the same "
            f"config; kept it (--overwrite redoes it)"
        )
    # a diverged run is a failed command: its block goes to stderr, and the exit code says so
    (say if result.status == "diverged" else note)(summary_block(result))
    return EXIT_DIVERGED if result.status == "diverged" else 0


def _require_ckpt(args: argparse.Namespace) -> None:
    if not args.ckpt:
        raise CheckpointError(f"{args.command} needs --ckpt PATH (or --ckpt last with --config)")


def _paths_among(tokens: Sequence[str]) -> list[str]:
    """Bare tokens that name files or folders: a path is never read as a KEY=VALUE override."""
    return [token for token in tokens if os.path.exists(token)]


def _path_hint(command: Optional[str], paths: list[str]) -> str:
    shown = " ".join(f"'{p}'" for p in paths[:3]) + (" ..." if len(paths) > 3 else "")
    if command == "predict":
        return (
            f"{shown} is a path, not an option or KEY=VALUE override: repeat --input per path "
            f"(--input a.png --input b.png) or quote a glob (--input 'images/*.png')"
        )
    return f"{shown} is a path, not a KEY=VALUE override: pass a checkpoint as --ckpt PATH, a config as --config FILE"


def _cmd_evaluate(args: argparse.Namespace) -> int:
    # startup: not on the --help path
    from cnnkit import api
    from cnnkit.console import metric_text

    _require_ckpt(args)
    metrics = api.evaluate(args.command, args.ckpt, args.config, args.overrides)
    note(f"{args.command}: {metric_text(metrics, every=True) or 'no metrics'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    # startup: not on the --help path
    from cnnkit import api
    from cnnkit.console import shown_path, text_table

    _require_ckpt(args)
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {args.top_k}")
    predictions = api.predict(
        args.ckpt,
        args.config,
        args.overrides,
        split=args.split,
        inputs=args.input,
        output=args.output,
        top_k=args.top_k,
    )
    if len(predictions.rows) <= TABLE_ROWS:
        rows = [[shown_path(row[0]) if args.input else row[0], *row[1:]] for row in predictions.rows]
        show("\n".join(text_table([predictions.header, *rows], left=2)))
    else:
        note(f"{len(predictions.rows)} images: more than {TABLE_ROWS}, so no table here (the CSV has them all)")
    accuracy = predictions.accuracy()
    scored = (
        f"; accuracy {accuracy[0]:.4f} on the {accuracy[1]} with a known label"
        if accuracy
        else (f"; {predictions.no_labels}" if predictions.no_labels else "")
    )
    count = len(predictions.rows)
    note(f"wrote {count} prediction{'s' if count != 1 else ''} to {shown_path(predictions.path)}{scored}")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    # startup: not on the --help path
    from cnnkit import api
    from cnnkit.console import model_parts
    from cnnkit.nn.anatomy import format_text

    cfg = api.load_config(args.config, args.overrides)
    if args.format == "json":  # stdout is the JSON alone: notes about the data go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            report = api.describe(cfg)
    else:
        report = api.describe(cfg)
    if args.format == "json":
        show(json.dumps(report, indent=2))
    else:
        shape = "x".join(map(str, report["input_shape"]))
        title = " · ".join([*model_parts(cfg.model), f"input {shape}", f"{report['num_classes']} classes"])
        show(format_text(report, title), end="")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    # startup: not on the --help path
    from cnnkit.experiments.report import build_report

    report = build_report(args.runs, log_to_wandb=args.wandb)
    figures = sorted(p.name for p in report.parent.glob("*.png"))
    note(f"wrote {report}" + (f" and {', '.join(figures)} beside it" if figures else ""))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    # startup: not on the --help path
    from cnnkit.experiments.sweep import sweep_config, write_sweep

    text = write_sweep(sweep_config(args.recipe))
    if args.output:
        from cnnkit.runs.atomic import atomic_write_text  # startup: not on the --help path

        atomic_write_text(Path(args.output), text)
        say(f"wrote {args.output}; start it with: wandb sweep {args.output}")
    else:
        show(text, end="")
    return 0


def _matches(pattern: Optional[str], *texts: str) -> bool:
    if not pattern:
        return True
    pattern = pattern.lower()
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatch(t.lower(), pattern) for t in texts[:-1])
    return any(pattern in t.lower() for t in texts)


def registry_kind(word: str) -> Optional[str]:
    """``norms``, ``norm``, ``Norm``, and a config key's name (``pool``, ``act``) → the registry; None for
    a word that names none."""
    key = word.lower().replace("-", "_")
    for kind in REGISTRY_NAMES:
        if key in (kind, kind[:-1]):
            return kind
    starting = [kind for kind in REGISTRY_NAMES if len(key) >= 3 and kind.startswith(key)]
    return starting[0] if len(starting) == 1 else None


def _cmd_list(args: argparse.Namespace) -> int:
    # startup: not on the --help path
    from cnnkit.config.load import load_config

    overrides = [item for item in args.items if "=" in item]
    words = [item for item in args.items if "=" not in item]
    kind = registry_kind(words[0]) if words else None
    if kind is None and len(words) > 1:
        close = difflib.get_close_matches(words[0].lower(), REGISTRY_NAMES, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"list: unknown registry '{words[0]}'; {hint}registries: {', '.join(REGISTRY_NAMES)}")
    patterns = words[1:] if kind else words
    if len(patterns) > 1:
        raise ConfigError(f"list takes one pattern, got {' '.join(patterns)} (quote a pattern with spaces)")
    pattern = patterns[0] if patterns else None
    if args.config or overrides:
        import_user_code(list(load_config(args.config, overrides, validate_config=False).imports))
    kinds = [kind] if kind else list(REGISTRY_NAMES)
    shown = 0
    for each in kinds:
        rows = []
        for entry in REGISTRIES[each].entries():
            if not _matches(pattern, entry.name, *entry.aliases, entry.description):
                continue
            name = entry.name + (f" ({', '.join(entry.aliases)})" if entry.aliases else "")
            traits = getattr(entry.target, "describe_traits", None)
            text = entry.description + (f" [{traits()}]" if callable(traits) else "")
            keys = entry.arguments(skip=REGISTRIES[each].inputs) if kind else None
            rows.append((name, text, keys))
        if not rows:
            continue
        shown += len(rows)
        show(f"{each}:")
        width = max(len(name) for name, _, _ in rows)
        for name, text, keys in rows:
            show(f"  {name:<{width}}  {text}")
            if keys:
                show(f"  {'':<{width}}    keys: {', '.join(keys)}")
    if not shown:
        close = difflib.get_close_matches((pattern or "").lower(), REGISTRY_NAMES, n=1) if not kind else []
        hint = f"did you mean the registry '{close[0]}'? " if close else ""
        where = f"in {kind}" if kind else f"in any registry ({', '.join(REGISTRY_NAMES)})"
        raise ConfigError(f"list: nothing matches '{pattern}' {where}; {hint}'python -m cnnkit list' shows every name")
    return 0


COMMANDS = {
    "fit": _cmd_fit,
    "validate": _cmd_evaluate,
    "test": _cmd_evaluate,
    "predict": _cmd_predict,
    "describe": _cmd_describe,
    "report": _cmd_report,
    "sweep": _cmd_sweep,
    "list": _cmd_list,
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit a write then fails with EFBIG, reported below
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come anywhere, also after an option (``fit --ckpt last a.b=1``)
    stray = [item for item in extra if "=" not in item or item.startswith("-")]
    paths = _paths_among([*getattr(args, "overrides", []), *extra])
    if paths:
        parser.error(_path_hint(args.command, paths))
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    debug = args.debug or os.environ.get("CNNKIT_DEBUG", "") not in ("", "0")
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    # startup: not on the --help path
    from cnnkit.console import configure

    configure(verbose_output=getattr(args, "verbose", False) or os.environ.get("CNNKIT_VERBOSE", "") not in ("", "0"))
    try:
        _take_recipes(args)
        if getattr(args, "print_config", False):
            return _print_config(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        error("interrupted")
        return 128 + signal.SIGINT
    except Exception as err:
        if type(err).__name__ in ("RunInterrupted", "JobsInterrupted"):  # without importing Lightning here
            error(str(err))
            return err.exit_code
        if debug:
            raise
        if isinstance(err, CnnkitError):
            error(f"error: {own_message(err)}")
            return err.exit_code
        detail = first_line(err)
        error(f"internal error: {type(err).__name__}: {detail} (rerun with --debug for the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
