"""``python -m cnnkit``: a thin argparse front over the Python API.

Nothing heavy is imported at module level: ``--help`` needs neither torch nor Lightning, and
``list`` needs no Lightning. A user's mistake prints one line and exits 2; ``--debug`` (or
``CNNKIT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import logging
import os
import signal
import sys
import warnings
from typing import Optional, Sequence

EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_INTERNAL = 1

REGISTRY_NAMES = ("norms", "activations", "poolings", "inits", "backbones", "datasets", "transforms",
                  "optimizers", "schedulers", "callbacks")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line, not usage text plus a line."""

    def error(self, message: str) -> None:
        self.exit(EXIT_USER_ERROR, f"cnnkit: error: {message} (see '{self.prog} --help')\n")


def _add_config_args(parser: argparse.ArgumentParser, ckpt_help: Optional[str]) -> None:
    parser.add_argument("--config", "-c", action="append", default=[], metavar="FILE",
                        help="YAML config file; repeat to merge several (later wins)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides applied last, e.g. model.norm=bn_post trainer.max_epochs=3")
    if ckpt_help:
        parser.add_argument("--ckpt", metavar="PATH|last", help=ckpt_help)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")


def build_parser() -> Parser:
    parser = Parser(prog="cnnkit", description="Train and evaluate CNN classifiers from YAML recipes.",
                    epilog="Run 'cnnkit COMMAND --help' for a command's options.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    fit = commands.add_parser("fit", help="train a model (then test the best checkpoint)",
                              description="Train the config's model in runs/<name>/<variant>/.")
    _add_config_args(fit, "resume training from this checkpoint ('last': the run's checkpoints/last.ckpt)")
    fit.add_argument("--init-from", metavar="PATH", help="start from a checkpoint's weights (fine-tuning)")
    fit.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    fit.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                     help="run only the matrix combinations with this value (repeatable)")

    for name, help_text in (("validate", "evaluate a checkpoint on the validation split"),
                            ("test", "evaluate a checkpoint on the test split")):
        sub = commands.add_parser(name, help=help_text, description=f"{help_text.capitalize()}; the model is "
                                  f"rebuilt from the config stored in the checkpoint.")
        _add_config_args(sub, "checkpoint to evaluate ('last': the run's last.ckpt; needs --config)")

    predict = commands.add_parser("predict", help="write class probabilities to a CSV",
                                  description="Predict a split or a folder of images; writes file,class,probability.")
    _add_config_args(predict, "checkpoint to predict with ('last': the run's last.ckpt; needs --config)")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--split", choices=("train", "val", "test"), help="a split of the configured dataset "
                        "(default: test)")
    source.add_argument("--input", metavar="DIR", help="a folder of images (searched recursively)")
    predict.add_argument("--output", "-o", metavar="CSV", help="where to write (default: the run directory)")

    describe = commands.add_parser("describe", help="show the model's layers, shapes, receptive fields, MACs",
                                   description="One row per layer of the config's model: output shape, parameters, "
                                               "kernel/stride/padding, receptive field and jump, multiply-accumulates; "
                                               "then totals and the saving from parameter sharing. Reads no data.")
    _add_config_args(describe, None)
    describe.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    report = commands.add_parser("report", help="figures and a REPORT.md table from a recipe's runs",
                                 description="Read runs/<recipe>/*/ (metrics.csv, status.json and the analysis "
                                             "callbacks' files) and write PNG figures and REPORT.md there.")
    report.add_argument("runs", metavar="RUNS_DIR", help="a recipe's run directory, e.g. runs/bn_placement")
    report.add_argument("--no-wandb", action="store_true",
                        help="do not add the figures to the runs' W&B runs (done when the runs used W&B)")
    report.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    sweep = commands.add_parser("sweep", help="write a W&B sweep YAML from a recipe's matrix",
                                description="Turn a recipe's matrix into a W&B grid sweep whose command runs "
                                            "'cnnkit fit --config RECIPE key=value ...' (a matrix key given as an "
                                            "override narrows the matrix to that value).")
    sweep.add_argument("recipe", metavar="RECIPE", help="the recipe YAML")
    sweep.add_argument("--output", "-o", metavar="FILE", help="where to write (default: stdout)")
    sweep.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    listing = commands.add_parser("list", help="list registered names (norms, backbones, ...)",
                                  description="List registry entries with one-line descriptions.")
    listing.add_argument("registry", nargs="?", choices=REGISTRY_NAMES, metavar="REGISTRY",
                         help=f"one of: {', '.join(REGISTRY_NAMES)} (default: all)")
    listing.add_argument("pattern", nargs="?", help="only names matching this (substring or glob)")
    listing.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return parser


# -- commands -----------------------------------------------------------------------------------
def _print_config(args: argparse.Namespace) -> int:
    from .config import load_config, to_yaml

    if getattr(args, "ckpt", None) and args.command != "fit":
        from .api import checkpoint_config

        cfg = checkpoint_config(args.ckpt, args.config, args.overrides)[0]
    else:
        cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from . import api

    results = api.fit_recipe(args.config, args.overrides, only=args.only, ckpt=args.ckpt,
                             init_from=args.init_from, overwrite=args.overwrite)
    from .runs import process_rank

    if process_rank() != 0:  # under strategy=ddp every rank runs this command; one reports
        return 0
    for result in results:
        where = f"{result.run_dir.parent.name}/{result.run_dir.name}"
        if result.kept and len(results) == 1 and not args.ckpt:
            print(f"cnnkit: {where} {result.status} before with the same config; kept it (--overwrite redoes it)",
                  file=sys.stderr)
        if result.status == "diverged":
            d = result.diverged or {}
            kept = f"last good checkpoint {d['last_good']}" if d.get("last_good") else "no checkpoint kept"
            print(f"cnnkit: {where} diverged: {d.get('reason', 'non-finite training loss')}; {kept}; "
                  f"marked diverged in {result.run_dir}/status.json", file=sys.stderr)
            continue
        summary = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result.metrics.items()) if k.endswith("/acc"))
        print(f"cnnkit: {result.status} {where} in {result.run_dir}" + (f": {summary}" if summary else ""))
    if len(results) == 1 and results[0].status == "diverged":
        return EXIT_DIVERGED
    return 0


def _require_ckpt(args: argparse.Namespace) -> None:
    if not args.ckpt:
        from .errors import CheckpointError

        raise CheckpointError(f"{args.command} needs --ckpt PATH (or --ckpt last with --config)")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import api

    _require_ckpt(args)
    api.evaluate(args.command, args.ckpt, args.config, args.overrides)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import api

    _require_ckpt(args)
    out = api.predict(args.ckpt, args.config, args.overrides, split=args.split, input_dir=args.input,
                      output=args.output)
    print(f"cnnkit: wrote predictions to {out}")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    import json

    from . import api
    from .config import to_plain
    from .anatomy import format_text

    cfg = api.load_config(args.config, args.overrides)
    if args.format == "json":  # stdout is the JSON alone: notes about the data go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            report = api.describe(cfg)
    else:
        report = api.describe(cfg)
    if args.format == "json":
        print(json.dumps(report, indent=2))
    else:
        model = cfg.model
        title = (f"{to_plain(model.backbone)} · norm {to_plain(model.norm)} · act {to_plain(model.act)} · "
                 f"pool {to_plain(model.pool)} · input {'x'.join(map(str, report['input_shape']))} · "
                 f"{report['num_classes']} classes")
        print(format_text(report, title), end="")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    print(f"cnnkit: wrote {build_report(args.runs, log_to_wandb=not args.no_wandb)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep_config, write_sweep

    text = write_sweep(sweep_config(args.recipe))
    if args.output:
        from pathlib import Path

        from .atomic import atomic_write_text

        atomic_write_text(Path(args.output), text)
        print(f"cnnkit: wrote {args.output}; start it with: wandb sweep {args.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _matches(pattern: Optional[str], *texts: str) -> bool:
    if not pattern:
        return True
    pattern = pattern.lower()
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatch(t.lower(), pattern) for t in texts[:-1])
    return any(pattern in t.lower() for t in texts)


def _cmd_list(args: argparse.Namespace) -> int:
    from .registry import REGISTRIES

    kinds = [args.registry] if args.registry else list(REGISTRY_NAMES)
    shown = 0
    for kind in kinds:
        rows = []
        for entry in REGISTRIES[kind].entries():
            if not _matches(args.pattern, entry.name, *entry.aliases, entry.description):
                continue
            name = entry.name + (f" ({', '.join(entry.aliases)})" if entry.aliases else "")
            traits = getattr(entry.target, "describe_traits", None)
            text = entry.description + (f" [{traits()}]" if callable(traits) else "")
            rows.append((name, text))
        if not rows:
            continue
        shown += len(rows)
        print(f"{kind}:")
        width = max(len(name) for name, _ in rows)
        for name, text in rows:
            print(f"  {name:<{width}}  {text}")
    if not shown:
        print(f"cnnkit: nothing matches '{args.pattern}'", file=sys.stderr)
        return 1
    return 0


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def _quiet_known_noise() -> None:
    """Drop Lightning's product tip and messages about Lightning's own internals: nothing to act on.

    A run directory holding checkpoints is expected here (resume and --overwrite are explicit).
    Set by the command-line entry point only: a library call leaves the process's filters alone.
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


COMMANDS = {"fit": _cmd_fit, "validate": _cmd_evaluate, "test": _cmd_evaluate, "predict": _cmd_predict,
            "describe": _cmd_describe, "report": _cmd_report, "sweep": _cmd_sweep, "list": _cmd_list}


def main(argv: Optional[Sequence[str]] = None) -> int:
    if hasattr(signal, "SIGXFSZ"):  # past a file-size limit a write then fails with EFBIG, reported below
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE overrides may come anywhere, also after an option (``fit --ckpt last a.b=1``)
    stray = [item for item in extra if "=" not in item or item.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    debug = args.debug or os.environ.get("CNNKIT_DEBUG", "") not in ("", "0")
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    _quiet_known_noise()
    try:
        if getattr(args, "print_config", False):
            return _print_config(args)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("cnnkit: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as err:
        from .errors import CnnkitError, first_line, own_message

        if type(err).__name__ == "RunInterrupted":  # lifecycle.RunInterrupted, without importing Lightning here
            print(f"cnnkit: {err}", file=sys.stderr)
            return err.exit_code
        if debug:
            raise
        if isinstance(err, CnnkitError):
            print(f"cnnkit: error: {own_message(err)}", file=sys.stderr)
            return err.exit_code
        detail = first_line(err)
        print(f"cnnkit: internal error: {type(err).__name__}: {detail} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
