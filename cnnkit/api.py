"""The Python API under the CLI: load a config, fit it, evaluate or predict from a checkpoint.

    cfg = cnnkit.load_config(["recipes/quickstart.yaml"], ["model.norm=bn_post"])
    result = cnnkit.fit(cfg)          # FitResult(status, metrics, run_dir, ...)
    model = cnnkit.build_model(cfg)   # the nn.Module alone

Everything a user can get wrong is checked before the run directory is touched.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from cnnkit.config.diff import LENGTH, RESULT_NEUTRAL, RESUME_FREE, differences
from cnnkit.config.diff import describe as describe_differences
from cnnkit.config.load import (
    SPEC_KEYS,
    load_config,
    parse_override,
    plain_stored,
    spec_roles,
    to_yaml,
    validate,
)
from cnnkit.config.naming import name_value
from cnnkit.config.plain import as_data, spec
from cnnkit.console import active_matrix, matrix_display, quiet, run_header, verbose
from cnnkit.errors import CheckpointError, ConfigError, key_context
from cnnkit.experiments.jobs import Recipe, run_jobs
from cnnkit.experiments.matrix import combinations, format_value
from cnnkit.experiments.placement import resolve_jobs, visible_gpus
from cnnkit.messages import first_process, note, say
from cnnkit.registry import REGISTRIES, RegistryError, accepted_kwargs, import_user_code, split_spec
from cnnkit.runs.atomic import atomic_write_text
from cnnkit.runs.checkpoint import read_checkpoint, resolve_checkpoint
from cnnkit.runs.result import FitResult
from cnnkit.runs.run_dir import KEEP, NEW, RunDir, length_bound
from cnnkit.training.builders import build_datamodule, build_model, build_module, data_info, load_weights
from cnnkit.training.evaluation import checkpoint_config, evaluate, predict
from cnnkit.training.threads import FitThreads
from cnnkit.training.trainer import build_trainer

__all__ = [
    "FitResult",
    "load_config",
    "fit",
    "fit_recipe",
    "fit_recipes",
    "evaluate",
    "predict",
    "describe",
    "build_model",
    "build_datamodule",
    "build_module",
    "data_info",
    "checkpoint_config",
]


def describe(cfg: DictConfig) -> dict[str, Any]:
    """Layer-by-layer shapes, parameters, receptive fields and MACs of the config's model."""
    # startup: torch only when this runs
    from cnnkit.nn.anatomy import describe_model

    info = data_info(cfg)
    report = describe_model(build_model(cfg, info), info.input_shape)
    report["num_classes"] = info.num_classes
    return report


# -- fit ------------------------------------------------------------------------------------------
@quiet
def fit(
    cfg: DictConfig, ckpt: Optional[str] = None, init_from: Optional[str] = None, overwrite: bool = False
) -> FitResult:
    """Train ``cfg`` in its run directory; ``ckpt`` (a path or ``last``) resumes, ``init_from`` fine-tunes.

    A finished run made with the same config is kept, not retrained (``overwrite`` redoes it).
    SIGINT/SIGTERM end it as ``interrupted`` (``lifecycle.RunInterrupted``).
    """
    started = time.monotonic()
    _one_of_overwrite_and_ckpt(overwrite, ckpt)
    run = RunDir.for_config(cfg)
    if ckpt in (None, "last") and not overwrite:  # a requeued SLURM job (or array task) continues where it stopped
        ckpt = _requeued_checkpoint(run) or ckpt
    first_rank = first_process()  # under strategy=ddp the other ranks re-run this command and follow
    verdict = run.verdict(cfg, resume=ckpt is not None, overwrite=overwrite, first_rank=first_rank, init_from=init_from)
    if verdict == KEEP:
        return _kept(run, cfg, resumed=ckpt is not None)

    with FitThreads(cfg.trainer.threads) as threads:  # registered before set-up: see training/threads.py
        return _train(cfg, run, verdict, ckpt, init_from, first_rank, started, threads)


def _one_of_overwrite_and_ckpt(overwrite: bool, ckpt: Optional[str]) -> None:
    """``--overwrite`` deletes a run to redo it and ``--ckpt`` resumes it: together they would delete what
    was to be resumed (and every finished run of a matrix)."""
    if overwrite and ckpt:
        raise ConfigError(
            f"--overwrite redoes runs from scratch and --ckpt {ckpt} resumes them: give one of the two "
            f"(--ckpt last alone keeps the finished runs and resumes the rest)"
        )


def _train(
    cfg: DictConfig,
    run: RunDir,
    verdict: str,
    ckpt: Optional[str],
    init_from: Optional[str],
    first_rank: bool,
    started: float,
    threads: Any,
) -> FitResult:
    """``fit``'s training, once the verdict allows it and the thread count is set."""
    # startup: lightning, torch only when this runs
    import lightning as L

    from cnnkit.training.loggers import wandb_run

    start = _Start.read(cfg, run, ckpt, init_from)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule, module = _build(cfg, run, start)
    trainer, lifecycle, best = _trainer(cfg, run, start, init_from, threads)  # config errors surface here
    _open(run, cfg, fresh=verdict == NEW, first_rank=first_rank)
    lifecycle.start(start.step)
    if first_rank and active_matrix() is None:  # a matrix variant is one line of its matrix instead
        parameters = sum(p.numel() for p in module.model.parameters())
        note(run_header(cfg, run.path, datamodule.describe(), parameters, trainer))
    with lifecycle.recording_failures(trainer), wandb_run(cfg, run.path, start.wandb_id(run)) as wandb_logger:
        wandb_sync = _log_to_wandb(wandb_logger, trainer, lifecycle, first_rank)
        trainer.fit(module, datamodule=datamodule, ckpt_path=start.resume_arg, weights_only=True)
        metrics = _test(trainer, module, datamodule, lifecycle, best)
    return _ended(
        run,
        cfg,
        trainer,
        lifecycle,
        best,
        metrics,
        seconds=time.monotonic() - started,
        wandb_sync=wandb_sync,
        limits=_limits(cfg),
    )


@dataclass
class _Start:
    """The checkpoint a fit resumes (``--ckpt``) or takes its first weights from (``--init-from``), read."""

    resume_path: Optional[Path] = None
    resume: Optional[dict[str, Any]] = None
    init_path: Optional[Path] = None
    init: Optional[dict[str, Any]] = None

    @classmethod
    def read(cls, cfg: DictConfig, run: RunDir, ckpt: Optional[str], init_from: Optional[str]) -> "_Start":
        resume_path = resolve_checkpoint(ckpt, run) if ckpt else None
        resume = read_checkpoint(resume_path) if resume_path else None
        if resume is not None:
            _check_resumable(resume_path, resume, cfg)
        init_path = resolve_checkpoint(init_from, None) if init_from else None
        return cls(resume_path, resume, init_path, read_checkpoint(init_path) if init_path else None)

    @property
    def step(self) -> int:
        return int(self.resume["global_step"]) if self.resume is not None else 0

    @property
    def resume_arg(self) -> Optional[str]:
        return str(self.resume_path) if self.resume_path else None

    def wandb_id(self, run: RunDir) -> Optional[str]:
        """The W&B run a resumed fit continues."""
        # startup: wandb's logger module imports lightning
        from cnnkit.training.loggers import stored_wandb_id

        return stored_wandb_id(run.path, self.resume) if self.resume is not None else None


def _build(cfg: DictConfig, run: RunDir, start: _Start) -> tuple[Any, Any]:
    """The datamodule (a resumed run follows its checkpoint's data path) and the module with its first weights."""
    datamodule = build_datamodule(cfg)
    if start.resume is not None:
        datamodule.follow((start.resume.get("cnnkit") or {}).get("data_path"))
    datamodule.load()
    module = build_module(cfg, datamodule.info, datamodule=None if start.resume else datamodule, run_dir=run.path)
    if start.resume is not None:
        load_weights(module, start.resume, start.resume_path, strict=True)  # fails early if it does not fit
    elif start.init is not None:
        load_weights(module, start.init, start.init_path, strict=False)
    return datamodule, module


def _trainer(
    cfg: DictConfig, run: RunDir, start: _Start, init_from: Optional[str], threads: Any
) -> tuple[Any, Any, Any]:
    """The trainer with the run's CSV log and callbacks: (trainer, the run's lifecycle, the best checkpoint)."""
    # startup: lightning, torch only when this runs
    from cnnkit.runs.checkpoint_io import AtomicCheckpointIO
    from cnnkit.runs.lifecycle import RunLifecycle
    from cnnkit.training.callbacks.best_checkpoint import BestCheckpoint
    from cnnkit.training.callbacks.last_checkpoint import LastCheckpoint
    from cnnkit.training.callbacks.rng_state import RngState
    from cnnkit.training.callbacks.threads import ThreadShare
    from cnnkit.training.loggers import RunCSVLogger

    checkpoint_io = AtomicCheckpointIO()
    lifecycle = RunLifecycle(run, checkpoint_io, init_from=str(init_from) if init_from else None)
    csv_logger = RunCSVLogger(run.path, keep_before_step=start.step if start.resume is not None else None)
    best = BestCheckpoint(
        str(run.checkpoints),
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_top_k=cfg.checkpoint.save_top_k,
        every_n_epochs=cfg.checkpoint.every_n_epochs,
    )
    callbacks: list[Any] = [lifecycle, best, RngState(), ThreadShare(threads)]
    if cfg.checkpoint.save_last:
        callbacks.append(LastCheckpoint(str(run.checkpoints)))
    if cfg.checkpoint.every_n_steps:
        callbacks.append(LastCheckpoint(str(run.checkpoints), every_n_steps=cfg.checkpoint.every_n_steps))
    return build_trainer(cfg, run, [csv_logger], callbacks, checkpoint_io), lifecycle, best


def _open(run: RunDir, cfg: DictConfig, fresh: bool, first_rank: bool) -> None:
    """The run directory, emptied first for a fresh run, with the config it runs (rank 0 writes)."""
    if first_rank:
        run.prepare(fresh=fresh)
        atomic_write_text(run.config_file, to_yaml(cfg))


def _log_to_wandb(logger: Any, trainer: Any, lifecycle: Any, first_rank: bool) -> Optional[str]:
    """The trainer logs to W&B too (when it is on); the command that uploads an offline W&B run, if one."""
    # startup: wandb's logger module imports lightning
    from cnnkit.training.loggers import offline_sync_command

    if logger is None:
        return None
    trainer.loggers = [*trainer.loggers, logger]
    if not first_rank:
        return None
    lifecycle.wandb_run_id = logger.experiment.id  # saved in checkpoints: a resumed run continues it
    return offline_sync_command(logger)


def _test(trainer: Any, module: Any, datamodule: Any, lifecycle: Any, best: Any) -> dict[str, float]:
    """The last epoch's metrics, and the test split's on the best checkpoint when the run did not diverge."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["params"] = float(lifecycle.parameters)
    if lifecycle.divergence is None and datamodule.load().test is not None:
        results = trainer.test(
            module, datamodule=datamodule, ckpt_path=best.best_model_path or None, weights_only=True, verbose=verbose()
        )
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    return metrics


def _ended(
    run: RunDir, cfg: DictConfig, trainer: Any, lifecycle: Any, best: Any, metrics: dict[str, float], **details: Any
) -> FitResult:
    """A trained run's end, recorded in its status.json (finished or diverged), and its result."""
    last = run.last_checkpoint if run.last_checkpoint.is_file() else None
    best_path = Path(best.best_model_path) if best.best_model_path else None
    best_path = best_path if best_path and best_path.is_file() else None  # a diverged run skipped its later saves
    best_epoch, epochs = (best.best_epoch if best_path else None), int(trainer.current_epoch)
    diverged = None
    if lifecycle.divergence is not None:
        lifecycle.record_divergence(last)
        d = lifecycle.divergence
        diverged = {
            "step": d.step,
            "lr": d.lr,
            "what": d.what,
            "reason": d.reason,
            "last_good": str(last) if last else None,
        }
    else:
        lifecycle.finish(int(trainer.global_step), metrics, best_path, best_epoch, epochs)
    return FitResult.of(
        run,
        cfg,
        "diverged" if diverged else "finished",
        metrics,
        best_path,
        best_epoch,
        epochs,
        diverged=diverged,
        **details,
    )


def _limits(cfg: DictConfig) -> list[str]:
    return [
        f"{key}={cfg.trainer[key]}"
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
        if cfg.trainer[key] is not None
    ]


def _requeued_checkpoint(run: RunDir) -> Optional[str]:
    """Lightning's pre-emption checkpoint of a requeued SLURM job, when it is newer than last.ckpt."""
    if not run.path.is_dir():
        return None
    requeued = sorted(run.path.glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = run.last_checkpoint.stat().st_mtime if run.last_checkpoint.is_file() else float("-inf")
    return str(requeued[-1]) if requeued and requeued[-1].stat().st_mtime > last else None


def _check_resumable(path: Path, checkpoint: dict[str, Any], cfg: DictConfig) -> None:
    """Resuming continues the checkpoint's own run (its optimizer, schedule and step): its config must be
    this one, but for how to run it and its length; other weights to start from are ``--init-from``."""
    diffs = differences(
        plain_stored(checkpoint["hyper_parameters"]["config"]), as_data(cfg), RESULT_NEUTRAL + RESUME_FREE + LENGTH
    )
    if diffs:
        raise CheckpointError(
            f"checkpoint '{path}' was trained with another config ({describe_differences(diffs)}); "
            f"--ckpt resumes that run as it was: to start this config from its weights, "
            f"use --init-from {path}"
        )


def _kept(run: RunDir, cfg: DictConfig, resumed: bool) -> FitResult:
    """The result of a run that already holds what was asked for."""
    status = run.read_status()
    if first_process():
        _follow_report_section(run, cfg)
    if resumed:
        scheduler = length_bound(spec(cfg, "optim.scheduler"))
        longer = (
            f"its {scheduler} schedule is laid out over the run's length: train a longer run without "
            f"--ckpt last, in a directory of its own"
            if scheduler
            else "raise trainer.max_epochs to train on"
        )
        if active_matrix() is None:  # a matrix's line says kept
            say(f"run '{run.path}' already finished; nothing to resume ({longer})")
    return FitResult.recorded(run, cfg, status, status.get("status", "finished"), kept=True)


def _follow_report_section(run: RunDir, cfg: DictConfig) -> None:
    """A kept run's stored ``report:`` becomes the recipe's current one: it changes no result (what the
    report's answer is about: its question, metric, compared key, the course's expectation), and the
    report reads it from the runs."""
    stored = run.read_config()
    if stored is not None and stored.get("report") != as_data(cfg.report):
        stored["report"] = as_data(cfg.report)
        atomic_write_text(run.config_file, OmegaConf.to_yaml(OmegaConf.create(stored)))


def fit_recipe(
    files: Sequence[str],
    overrides: Sequence[str] = (),
    only: Sequence[str] = (),
    ckpt: Optional[str] = None,
    init_from: Optional[str] = None,
    overwrite: bool = False,
    jobs: Any = None,
) -> list[FitResult]:
    """Fit every combination of the recipe's ``matrix:`` (or its one run), in order.

    Every run directory is checked first, from its files alone: a finished variant made with the
    same config is kept, one made with another config refuses the whole command (naming the keys)
    before anything trains; every variant to train is validated before the first trains. With
    ``ckpt="last"`` unfinished variants resume. A diverged variant is a result: the matrix goes on.
    The matrix's values are the recipe's: the command line's overrides apply after them, and an
    argument override that a variant's entry does not take is left out of that variant, said once.
    ``jobs`` (default: the recipe's ``jobs:``) trains that many variants at once, each its own process
    (``jobs.py``); ``auto`` picks from the devices and the model's size.
    """
    return fit_recipes([files], overrides, only, ckpt, init_from, overwrite, jobs)[0]


def fit_recipes(
    recipes: Sequence[Sequence[str]],
    overrides: Sequence[str] = (),
    only: Sequence[str] = (),
    ckpt: Optional[str] = None,
    init_from: Optional[str] = None,
    overwrite: bool = False,
    jobs: Any = None,
) -> list[list[FitResult]]:
    """``fit_recipe`` for several recipes (each its list of config files) as one command: every refusal of
    every recipe comes before anything trains, and with ``jobs`` above 1 one pool trains all their variants,
    so no recipe's last variant leaves a core idle and the workers start once (``cnnkit fit --recipe``).
    ``jobs`` defaults to the first recipe's ``jobs:``; ``auto`` looks at the largest model of them all.
    One list of results per recipe, in matrix order."""
    if not recipes:
        raise ConfigError("fit needs a recipe: --config FILE or --recipe FILE")
    _one_of_overwrite_and_ckpt(overwrite, ckpt)
    if len(recipes) == 1:
        checked = [_checked(recipes[0], overrides, only, ckpt, init_from, overwrite)]
    else:
        checked = []
        for files in recipes:  # an error names its recipe; a run no recipe made trains fresh under --ckpt last
            with key_context(f"--recipe {files[0]}"):
                checked.append(_checked(files, overrides, only, ckpt, init_from, overwrite, missing_is_fresh=True))
        _one_recipe_per_run_directory(checked)
    if len(checked) == 1 and len(checked[0].runs) == 1:
        run = checked[0].runs[0]
        return [[fit(run.cfg, ckpt=run.resume, init_from=init_from, overwrite=overwrite)]]
    if first_process():
        to_train = [run.cfg for recipe in checked for run, keep in zip(recipe.runs, recipe.keep) if not keep]
        count = resolve_jobs(checked[0].base.jobs if jobs is None else jobs, to_train)
        if count > 1:
            _one_accelerator(checked)
            for recipe in checked:
                recipe.kept = {  # their lines say kept (under --ckpt last, no "nothing to resume" for each)
                    i: _kept(RunDir.for_config(run.cfg), run.cfg, resumed=False)
                    for i, (run, keep) in enumerate(zip(recipe.runs, recipe.keep), 1)
                    if keep
                }
            return run_jobs(checked, count, ckpt, init_from, overwrite, fit)
    return [_one_after_the_other(recipe, init_from, overwrite) for recipe in checked]


def _checked(
    files: Sequence[str],
    overrides: Sequence[str],
    only: Sequence[str],
    ckpt: Optional[str],
    init_from: Optional[str],
    overwrite: bool,
    missing_is_fresh: bool = False,
) -> Recipe:
    """A recipe's runs, each with its verdict from its run directory (a refusal raises now, in well under a
    second, before torch is imported), and every run to train validated. ``missing_is_fresh``: ``--ckpt
    last`` over several recipes starts a run that has no last checkpoint, as a matrix's variant does."""
    base, runs = plan_runs(files, overrides, only, ckpt)
    if missing_is_fresh:
        for run in runs:
            if run.resume == "last" and not RunDir.for_config(run.cfg).last_checkpoint.is_file():
                run.resume = None
    first_rank = first_process()
    keep = []
    for run in runs:
        verdict = RunDir.for_config(run.cfg).verdict(
            run.cfg, resume=run.resume is not None, overwrite=overwrite, first_rank=first_rank, init_from=init_from
        )
        keep.append(verdict == KEEP)
    for run, kept in zip(runs, keep):
        if not kept:  # a kept run needs nothing built
            validate(run.cfg)
    return Recipe(list(files), base, runs, keep)


def _one_recipe_per_run_directory(checked: Sequence[Recipe]) -> None:
    """Two recipes that make the same run (one recipe twice, or two files under one ``name``) would train
    into one directory at once: refused before anything trains."""
    made: dict[Path, str] = {}
    for recipe in checked:
        paths = [RunDir.for_config(run.cfg).path for run in recipe.runs]
        for path in paths:
            if path in made and Path(made[path]).resolve() == Path(recipe.files[0]).resolve():
                raise ConfigError(f"--recipe {recipe.files[0]} is given twice: give each recipe once")
            if path in made:
                raise ConfigError(
                    f"--recipe {made[path]} and --recipe {recipe.files[0]} both make {path}: give one of them "
                    f"another name (name=... in the recipe) or fit them apart"
                )
        made.update((path, recipe.files[0]) for path in paths)


def _one_accelerator(checked: Sequence[Recipe]) -> None:
    """One pool places its workers on one kind of device: the cores, or the GPUs."""
    on_gpus = {
        str(recipe.base.trainer.accelerator): bool(visible_gpus(recipe.base.trainer.accelerator, os.environ))
        for recipe in checked
    }
    if len(set(on_gpus.values())) > 1:
        raise ConfigError(
            f"the recipes train on GPUs and on the CPU (trainer.accelerator: {', '.join(sorted(on_gpus))}), and "
            f"one pool runs on one of them: fit them apart, or set trainer.accelerator=... for all"
        )


def _one_after_the_other(recipe: Recipe, init_from: Optional[str], overwrite: bool) -> list[FitResult]:
    """A recipe's runs in matrix order in this process, one line each under the matrix's bar."""
    base = recipe.base
    results: list[FitResult] = []
    with matrix_display(
        base.name,
        [run.cfg for run in recipe.runs],
        show_bar=base.trainer.progress_bar != "none",
        runs_dir=Path(base.runs_dir) / base.name,
        keys=list(base.matrix),
    ) as display:
        for index, run in enumerate(recipe.runs, 1):
            display.variant_started(index, run.cfg)
            results.append(fit(run.cfg, ckpt=run.resume, init_from=init_from, overwrite=overwrite))
            display.variant_ended(index, run.cfg, results[-1])
        display.close(results)
    return results


@dataclass
class PlannedRun:
    """One run a recipe makes: its config, the checkpoint it resumes from, and the command line that makes
    it alone (the overrides it takes, the ``--only`` values that select it): a ``--jobs`` job's command."""

    cfg: DictConfig
    resume: Optional[str]
    overrides: list[str] = field(default_factory=list)
    only: list[str] = field(default_factory=list)


def plan_recipe(
    files: Sequence[str], overrides: Sequence[str] = (), only: Sequence[str] = (), ckpt: Optional[str] = None
) -> tuple[DictConfig, list[tuple[DictConfig, Optional[str]]]]:
    """The recipe with the overrides, and each run it makes: (its config, the checkpoint it resumes from)."""
    base, runs = plan_runs(files, overrides, only, ckpt)
    return base, [(run.cfg, run.resume) for run in runs]


def plan_runs(
    files: Sequence[str], overrides: Sequence[str] = (), only: Sequence[str] = (), ckpt: Optional[str] = None
) -> tuple[DictConfig, list[PlannedRun]]:
    """``plan_recipe``, each run with the command line that makes it alone."""
    base = load_config(files, overrides, validate_config=False)
    if not base.matrix:
        if only:
            raise ConfigError("--only needs a recipe with a matrix: section")
        return base, [
            PlannedRun(_run_to_extend(files, overrides, base) if ckpt == "last" else base, ckpt, list(overrides))
        ]
    # an override of a matrix key narrows the matrix to that value (what a W&B sweep agent passes)
    pinned = [o for o in overrides if o.partition("=")[0] in base.matrix]
    variants = combinations(base, [*only, *pinned])
    configs = [
        load_config(files, [*overrides, f"variant={variant}"], validate_config=False, combination=combo)
        for variant, combo, _ in variants
    ]
    left_out = _arguments_left_out(overrides, configs)
    plans = []
    for cfg, (variant, combo, values) in zip(configs, variants):
        kept = [o for o in overrides if o not in left_out.get(variant, ())]
        if variant in left_out:
            cfg = load_config(files, [*kept, f"variant={variant}"], validate_config=False, combination=combo)
        cfg.logger.wandb.tags = list(cfg.logger.wandb.tags) + [f"{k}={v}" for k, v in combo_tags(values)]
        run = RunDir.for_config(cfg)
        resume = ckpt if ckpt and (ckpt != "last" or run.last_checkpoint.is_file()) else None
        plans.append(PlannedRun(cfg, resume, kept, [f"{k}={name_value(v)}" for k, v in values.items()]))
    return base, plans


def _run_to_extend(files: Sequence[str], overrides: Sequence[str], cfg: DictConfig) -> DictConfig:
    """``--ckpt last trainer.max_epochs=30``: the run made without the new length, if there is no run of
    that length to resume. A length names a run when it starts (a 3-epoch run never shares the recipe's
    directory) and may change when the run resumes."""
    if RunDir.for_config(cfg).last_checkpoint.is_file():
        return cfg
    unlengthened = [o for o in overrides if o.partition("=")[0].strip() not in LENGTH]
    if len(unlengthened) == len(overrides):
        return cfg
    extended = load_config(files, unlengthened, validate_config=False).variant
    if not (Path(cfg.runs_dir) / cfg.name / extended / "checkpoints" / "last.ckpt").is_file():
        return cfg
    return load_config(files, [*overrides, f"variant={extended}"], validate_config=False)


def _arguments_left_out(overrides: Sequence[str], configs: list[DictConfig]) -> dict[str, list[str]]:
    """Per variant, the argument overrides its registry entry does not take (``model.norm.eps=1e-3`` where
    ``norm: none``): left out there, said in one line each. An override that no variant takes stays, so
    validation names it as the mistake it is."""
    arguments = {}
    for item in overrides:
        layer = parse_override(item)
        for key, role in spec_roles(layer).items():
            if role == "arguments":
                arguments[item] = (key, list(OmegaConf.select(layer, key).keys()))
    skipped: dict[str, dict[str, str]] = {item: {} for item in arguments}  # override → {variant: its entry}
    for cfg in configs if arguments else ():
        import_user_code(list(cfg.imports))  # a user's own entries are looked up like the built-in ones
        for item, (key, names) in arguments.items():
            try:
                entry, _ = split_spec(spec(cfg, key))
                accepted = accepted_kwargs(REGISTRIES[SPEC_KEYS[key]].get(entry))
            except RegistryError:  # an unknown name: validation says so
                continue
            if accepted is not None and any(name not in accepted for name in names):
                skipped[item][cfg.variant] = entry
    left_out: dict[str, list[str]] = {}
    for item, where in skipped.items():
        if not where or len(where) == len(configs):
            continue
        key, names = arguments[item]
        shown = ", ".join(list(where)[:3]) + (f" (+{len(where) - 3} more)" if len(where) > 3 else "")
        entries = " or ".join(f"'{e}'" for e in sorted(set(where.values())))
        say(
            f"note: {item} is left out of {len(where)} of {len(configs)} variants, whose "
            f"{key.rsplit('.', 1)[-1]} {entries} takes no argument {', '.join(repr(n) for n in names)}: {shown}"
        )
        for variant in where:
            left_out.setdefault(variant, []).append(item)
    return left_out


def combo_tags(values: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key.rsplit(".", 1)[-1], format_value(value)) for key, value in values.items()]
