"""The Python API under the CLI: load a config, fit it, evaluate or predict from a checkpoint.

    cfg = cnnkit.load_config(["recipes/quickstart.yaml"], ["model.norm=bn_post"])
    result = cnnkit.fit(cfg)          # FitResult(status, metrics, run_dir, ...)
    model = cnnkit.build_model(cfg)   # the nn.Module alone

Everything a user can get wrong is checked before the run directory is touched.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from .checkpoint import read_checkpoint, resolve_checkpoint
from .config import key_context, load_config, to_plain, to_yaml
from .errors import CheckpointError, ConfigError, DataError, first_line, own_message
from .runs import RunDir, atomic_write_text

__all__ = ["FitResult", "load_config", "fit", "fit_recipe", "evaluate", "predict", "describe", "build_model",
           "build_datamodule", "build_module", "data_info"]


@dataclass
class FitResult:
    status: str  # finished | diverged
    run_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: Optional[Path] = None
    last_checkpoint: Optional[Path] = None
    diverged: Optional[dict[str, Any]] = None


# -- building blocks ------------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig):
    from .data.datamodule import ClassificationDataModule

    return ClassificationDataModule(cfg.data, seed=cfg.seed)


def build_module(cfg: DictConfig, data_info: dict[str, Any]):
    from .module import ClassifierModule

    return ClassifierModule(to_plain(cfg), data_info)


def data_info(cfg: DictConfig) -> dict[str, Any]:
    """Input shape and classes of the config's dataset, read from its entry (no data needed)."""
    from .registry import DATASETS

    return DATASETS.build(to_plain(cfg.data.dataset)).info()


def build_model(cfg: DictConfig, info: Optional[dict[str, Any]] = None):
    """The network alone (a ``torch.nn.Module``); ``info`` defaults to the config's dataset's."""
    from .model import build_classifier

    info = info or data_info(cfg)
    return build_classifier(cfg.model, info["input_shape"], info["num_classes"])


def describe(cfg: DictConfig) -> dict[str, Any]:
    """Layer-by-layer shapes, parameters, receptive fields and MACs of the config's model."""
    from .anatomy import describe_model

    info = data_info(cfg)
    report = describe_model(build_model(cfg, info), info["input_shape"])
    report["num_classes"] = info["num_classes"]
    return report


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    return rank_zero_only.rank == 0


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def _quiet_known_noise() -> None:
    """Drop Lightning's product tip and messages about Lightning's own internals: nothing to act on.

    A run directory holding checkpoints is expected here (resume and --overwrite are explicit).
    """
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def _build_trainer(cfg: DictConfig, run: Optional[RunDir], loggers: Any, callbacks: list[Any]):
    import lightning as L
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from .checkpoint_io import AtomicCheckpointIO
    from .registry import CALLBACKS

    _quiet_known_noise()
    t = cfg.trainer
    progress = to_plain(t.progress_bar)
    if progress == "rich":
        try:
            import rich  # noqa: F401
        except ImportError as err:
            raise ConfigError("trainer.progress_bar=rich needs the 'rich' package: pip install rich "
                            "(or use trainer.progress_bar=tqdm)") from err
        callbacks.append(RichProgressBar())
    elif progress == "tqdm":
        callbacks.append(TQDMProgressBar())
    for i, spec in enumerate(cfg.callbacks):
        with key_context(f"callbacks[{i}]"):
            try:
                callbacks.append(CALLBACKS.build(to_plain(spec)))
            except (ValueError, TypeError) as err:
                raise ConfigError(first_line(err)) from err
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator, devices=to_plain(t.devices), strategy=t.strategy, num_nodes=t.num_nodes,
        precision=t.precision, max_epochs=t.max_epochs, max_steps=t.max_steps,
        gradient_clip_val=t.gradient_clip_val, accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic, log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch, enable_model_summary=t.enable_model_summary,
        enable_progress_bar=progress != "none", logger=loggers, callbacks=callbacks,
        enable_checkpointing=run is not None, default_root_dir=str(run.path) if run else None,
        benchmark=t.cudnn_benchmark, detect_anomaly=t.detect_anomaly, plugins=[AtomicCheckpointIO()],
    )
    for limit in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if t[limit] is not None:
            kwargs[limit] = t[limit]
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError) as err:
        raise ConfigError(f"trainer: {first_line(err)}") from err


def _set_input_statistics(module, datamodule) -> None:
    from .layers.input_norm import InputStandardize

    if isinstance(module.model.input_norm, InputStandardize):
        module.model.input_norm.set_statistics(*datamodule.input_statistics())


def _load_weights(module, checkpoint: dict[str, Any], path: Path, strict: bool) -> None:
    """Copy a checkpoint's weights in; with ``strict=False`` tensors of another shape are skipped."""
    state = checkpoint.get("state_dict", {})
    own = module.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong_shape:
            parts = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                     for label, keys in (("missing", missing), ("unexpected", unexpected),
                                         ("different shape", wrong_shape)) if keys]
            raise CheckpointError(f"checkpoint '{path}' does not fit the configured model ({'; '.join(parts)}); "
                                  f"use the config it was trained with")
        module.load_state_dict(state)
        return
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"--init-from '{path}': no weight of that checkpoint fits this model")
    module.load_state_dict(usable, strict=False)
    skipped = len(state) - len(usable)
    print(f"cnnkit: initialized {len(usable)} tensors from '{path}'"
          f"{f', skipped {skipped} that do not fit' if skipped else ''}", file=sys.stderr)


# -- fit ------------------------------------------------------------------------------------------
def fit(cfg: DictConfig, ckpt: Optional[str] = None, init_from: Optional[str] = None,
        overwrite: bool = False) -> FitResult:
    """Train ``cfg`` in its run directory; ``ckpt`` (a path or ``last``) resumes, ``init_from`` fine-tunes."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .callbacks.rng_state import RngState
    from .loggers import RunCSVLogger, finish_wandb, make_wandb_logger, stored_wandb_id

    run = RunDir.for_config(cfg)
    requeued = sorted(run.path.glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime) if run.path.is_dir() else []
    if ckpt is None and requeued:  # a SLURM job requeued after Lightning's pre-emption checkpoint
        ckpt = str(requeued[-1])
    if ckpt == "last" and run.resume_verdict(cfg, _is_rank_zero()) == "done":
        return _already_finished(run)
    resume_path = resolve_checkpoint(ckpt, run) if ckpt else None
    if _is_rank_zero():  # under strategy=ddp the other ranks re-run this command and find the directory made
        run.check(resume=resume_path is not None, overwrite=overwrite)
    resume_checkpoint = read_checkpoint(resume_path) if resume_path else None
    init_path = resolve_checkpoint(init_from, None) if init_from else None
    init_checkpoint = read_checkpoint(init_path) if init_path else None

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    datamodule.load()
    module = build_module(cfg, datamodule.info)
    if resume_checkpoint is not None:
        _load_weights(module, resume_checkpoint, resume_path, strict=True)  # fails early if it does not fit
    else:
        _set_input_statistics(module, datamodule)
        if init_checkpoint is not None:
            _load_weights(module, init_checkpoint, init_path, strict=False)

    csv_logger = RunCSVLogger(run.path, keep_before_step=resume_checkpoint["global_step"]
                              if resume_checkpoint else None)
    checkpointing = ModelCheckpoint(
        dirpath=str(run.checkpoints), filename="best-epoch{epoch:03d}-step{step:06d}",
        auto_insert_metric_name=False, monitor=cfg.checkpoint.monitor, mode=to_plain(cfg.checkpoint.mode),
        save_top_k=cfg.checkpoint.save_top_k, save_last=cfg.checkpoint.save_last,
        every_n_epochs=cfg.checkpoint.every_n_epochs, enable_version_counter=False,
    )
    callbacks: list[Any] = [checkpointing, RngState()]
    if cfg.checkpoint.every_n_steps:  # both write last.ckpt (no last-v1.ckpt): the newest save wins
        callbacks.append(ModelCheckpoint(dirpath=str(run.checkpoints), save_top_k=0, save_last=True,
                                         every_n_train_steps=cfg.checkpoint.every_n_steps,
                                         enable_version_counter=False))
    trainer = _build_trainer(cfg, run, [csv_logger], callbacks)  # config errors surface here

    if _is_rank_zero():
        run.prepare(resume=resume_path is not None, overwrite=overwrite)
        atomic_write_text(run.config_file, to_yaml(cfg))
        run.write_running(int(resume_checkpoint["global_step"]) if resume_checkpoint else 0)

    wandb_logger = None
    failed = True
    try:
        wandb_logger = make_wandb_logger(cfg, run.path, stored_wandb_id(run.path, resume_checkpoint)
                                         if resume_checkpoint else None)
        if wandb_logger is not None:
            trainer.loggers = [csv_logger, wandb_logger]
            if _is_rank_zero():
                module.wandb_run_id = wandb_logger.experiment.id
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_path) if resume_path else None,
                    weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics["params"] = float(sum(p.numel() for p in module.model.parameters()))
        if module.diverged is None and datamodule.load().test is not None:
            best = checkpointing.best_model_path
            results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
            metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
            matrix = module.test_confusion.compute().tolist()  # a collective under DDP: every rank computes
            if _is_rank_zero():
                confusion = {"class_names": module.class_names, "matrix": matrix}
                atomic_write_text(run.path / "confusion.json", json.dumps(confusion) + "\n")
        failed = False
    except BaseException as err:
        if _is_rank_zero():
            reason = f"{type(err).__name__}: {own_message(err)}".strip().splitlines()[0]
            run.write_status("failed", step=int(trainer.global_step), reason=reason)
        raise
    finally:
        finish_wandb(wandb_logger, failed)

    step = int(trainer.global_step)
    last = run.last_checkpoint if run.last_checkpoint.is_file() else None
    best = Path(checkpointing.best_model_path) if checkpointing.best_model_path else None
    best = best if best and best.is_file() else None  # a diverged run skipped its later saves
    if module.diverged is not None:
        status = "diverged"
        d = module.diverged
        d["reason"] = f"non-finite {d['what']} at step {d['step']} (lr {d['lr']:g})"
        d["last_good"] = str(last) if last else None
        if _is_rank_zero():
            run.write_status(status, step=d["step"], lr=d["lr"], reason=d["reason"], last_good=d["last_good"])
    else:
        status = "finished"
        if _is_rank_zero():
            run.write_status(status, step=step, metrics=metrics, best_checkpoint=str(best) if best else None)
    return FitResult(status=status, run_dir=run.path, metrics=metrics, best_checkpoint=best,
                     last_checkpoint=last, diverged=module.diverged)


def _already_finished(run: RunDir) -> FitResult:
    _say(f"cnnkit: run '{run.path}' already finished; nothing to resume (raise trainer.max_epochs to train "
         f"on, or start over with --overwrite)")
    status = run.read_status()
    best = status.get("best_checkpoint")
    return FitResult(status="finished", run_dir=run.path, metrics=status.get("metrics", {}),
                     best_checkpoint=Path(best) if best else None,
                     last_checkpoint=run.last_checkpoint if run.last_checkpoint.is_file() else None)


def fit_recipe(files: Sequence[str], overrides: Sequence[str] = (), only: Sequence[str] = (),
               ckpt: Optional[str] = None, init_from: Optional[str] = None,
               overwrite: bool = False) -> list[FitResult]:
    """Fit every combination of the recipe's ``matrix:`` (or its one run), in order.

    A variant that already finished (or diverged) is kept and skipped unless ``overwrite``; with
    ``ckpt="last"`` unfinished variants resume. A diverged variant is a result: the matrix goes on.
    """
    from .matrix import combinations

    base = load_config(files, overrides)
    if not base.matrix:
        if only:
            raise ConfigError("--only needs a recipe with a matrix: section")
        return [fit(base, ckpt=ckpt, init_from=init_from, overwrite=overwrite)]
    # an override of a matrix key narrows the matrix to that value (what a W&B sweep agent passes)
    pinned = [o for o in overrides if o.partition("=")[0] in base.matrix]
    combos = combinations(base, [*only, *pinned])
    results = []
    for index, (variant, combo, values) in enumerate(combos, 1):
        cfg = load_config(files, [*overrides, *combo, f"variant={variant}"])
        cfg.logger.wandb.tags = list(cfg.logger.wandb.tags) + [f"{k}={v}" for k, v in combo_tags(values)]
        run = RunDir.for_config(cfg)
        previous = run.read_status()
        if previous.get("status") in ("finished", "diverged") and not overwrite:
            _say(f"cnnkit: [{index}/{len(combos)}] {variant}: {previous['status']} before, kept "
                 f"(--overwrite redoes it)")
            results.append(FitResult(status=previous["status"], run_dir=run.path,
                                     metrics=previous.get("metrics", {})))
            continue
        _say(f"cnnkit: [{index}/{len(combos)}] {cfg.name}/{variant}")
        resume = ckpt if ckpt and (ckpt != "last" or run.last_checkpoint.is_file()) else None
        results.append(fit(cfg, ckpt=resume, init_from=init_from, overwrite=overwrite))
    return results


def _say(message: str) -> None:
    """A progress line on stderr, from rank 0 only."""
    if _is_rank_zero():
        print(message, file=sys.stderr)


def combo_tags(values: dict[str, Any]) -> list[tuple[str, str]]:
    from .matrix import format_value

    return [(key.rsplit(".", 1)[-1], format_value(value)) for key, value in values.items()]


# -- evaluation and prediction from a checkpoint ----------------------------------------------------
def checkpoint_config(ckpt: str, files: Sequence[str] = (),
                      overrides: Sequence[str] = ()) -> tuple[DictConfig, Path, dict[str, Any]]:
    """The config a checkpoint was trained with, updated by ``files`` and ``overrides``."""
    run = RunDir.for_config(load_config(files, overrides)) if ckpt == "last" else None
    path = resolve_checkpoint(ckpt, run)
    checkpoint = read_checkpoint(path)
    cfg = load_config(files, overrides, base=checkpoint["hyper_parameters"]["config"])
    return cfg, path, checkpoint


def _module_from_checkpoint(cfg: DictConfig, path: Path, checkpoint: dict[str, Any]):
    module = build_module(cfg, checkpoint["hyper_parameters"]["data_info"])
    _load_weights(module, checkpoint, path, strict=True)
    return module


def evaluate(stage: str, ckpt: str, files: Sequence[str] = (), overrides: Sequence[str] = ()) -> dict[str, float]:
    """``stage`` is ``validate`` or ``test``: metrics of a checkpoint's model on that split."""
    cfg, path, checkpoint = checkpoint_config(ckpt, files, overrides)
    module = _module_from_checkpoint(cfg, path, checkpoint)
    datamodule = build_datamodule(cfg)
    stored, current = checkpoint["hyper_parameters"]["data_info"], datamodule.info
    if stored["num_classes"] != current["num_classes"] or list(stored["input_shape"]) != current["input_shape"]:
        raise CheckpointError(
            f"checkpoint '{path}' was trained on inputs {stored['input_shape']} with {stored['num_classes']} classes; "
            f"the configured data has {current['input_shape']} with {current['num_classes']}"
        )
    trainer = _build_trainer(cfg, None, False, [])
    run_stage = trainer.validate if stage == "validate" else trainer.test
    results = run_stage(module, datamodule=datamodule)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def predict(ckpt: str, files: Sequence[str] = (), overrides: Sequence[str] = (), split: Optional[str] = None,
            input_dir: Optional[str] = None, output: Optional[str] = None) -> Path:
    """Class probabilities for a split or a folder of images, written as CSV (file, class, probability)."""
    from torch.utils.data import DataLoader

    from .data.image_files import IMAGE_EXTENSIONS, ImageFiles

    cfg, path, checkpoint = checkpoint_config(ckpt, files, overrides)
    module = _module_from_checkpoint(cfg, path, checkpoint)
    info = checkpoint["hyper_parameters"]["data_info"]
    batch = cfg.data.eval_batch_size or cfg.data.batch_size
    if input_dir is not None:
        if not os.path.isdir(input_dir):
            raise DataError(f"predict: input folder '{input_dir}' does not exist")
        images = sorted(os.path.join(d, f) for d, _, fs in os.walk(input_dir) for f in fs
                        if f.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise DataError(f"predict: no images ({', '.join(IMAGE_EXTENSIONS)}) under '{input_dir}'")
        channels, height, width = info["input_shape"]
        dataset = ImageFiles([(p, -1) for p in images], (height, width), channels, "input")
        source = Path(input_dir).name or "input"
    else:
        split = split or "test"
        dataset = build_datamodule(cfg).load().get(split)
        source = split
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=cfg.data.num_workers or 0)
    trainer = _build_trainer(cfg, None, False, [])
    probabilities = trainer.predict(module, dataloaders=loader)
    out = Path(output) if output else RunDir.for_config(cfg).path / f"predictions-{source}.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "class", "probability"])
    names = dataset.names()
    row = 0
    for probs in probabilities:
        best_p, best_c = probs.max(dim=-1)
        for p, c in zip(best_p.tolist(), best_c.tolist()):
            writer.writerow([names[row], info["class_names"][c], f"{p:.6f}"])
            row += 1
    atomic_write_text(out, buffer.getvalue())
    return out
