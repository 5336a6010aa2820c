"""Lightning's Trainer from a config: progress bar, callbacks by name, limits, checkpoint I/O."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from cnnkit.config.load import known_world_size
from cnnkit.config.plain import devices
from cnnkit.console import verbose
from cnnkit.errors import ConfigError, first_line, key_context
from cnnkit.runs.run_dir import RunDir


def check_accelerator(cfg: DictConfig) -> None:
    """What the machine decides, checked before Lightning starts: the accelerator exists, and the
    global batch divides over ``devices: auto`` / -1 once their count is known."""
    # startup: lightning, torch only when this runs
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator

    from cnnkit.config.batch import per_device_batch

    t = cfg.trainer
    accelerators = {"cpu": CPUAccelerator, "cuda": CUDAAccelerator, "gpu": CUDAAccelerator, "mps": MPSAccelerator}
    name = str(t.accelerator).lower()
    if name == "gpu" and MPSAccelerator.is_available():
        name = "mps"
    accelerator = accelerators.get(name)
    if accelerator is not None and not accelerator.is_available():
        raise ConfigError(
            f"trainer.accelerator={t.accelerator}: this machine has no {name.upper()} device that "
            f"torch can use; use trainer.accelerator=auto (or cpu)"
        )
    if known_world_size(t) is None and str(devices(t)) in ("auto", "-1"):
        if name == "auto":
            accelerator = next((a for a in (CUDAAccelerator, MPSAccelerator) if a.is_available()), CPUAccelerator)
        if accelerator is not None:  # a user's registered accelerator counts its own devices
            per_device_batch(
                cfg.data.batch_size, accelerator.auto_device_count() * t.num_nodes, t.accumulate_grad_batches
            )


def build_trainer(
    cfg: DictConfig, run: Optional[RunDir], loggers: Any, callbacks: list[Any], checkpoint_io: Any = None
):
    """The Trainer of a fit (``run`` given: checkpointing into it) or of an evaluation (``run`` None)."""
    # startup: lightning only when this runs
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import ProgressBar

    from cnnkit.config.plans import callback_plans
    from cnnkit.runs.checkpoint_io import AtomicCheckpointIO
    from cnnkit.training.callbacks.progress import progress_callbacks

    t = cfg.trainer
    check_accelerator(cfg)
    shown = progress_callbacks(t.progress_bar)
    callbacks.extend(shown)
    for i, plan in enumerate(callback_plans(cfg)):
        with key_context(f"callbacks[{i}]"):
            try:
                callbacks.append(plan.build())
            except (ValueError, TypeError) as err:  # a value the callback's own checks refuse
                raise ConfigError(first_line(err)) from err
    kwargs: dict[str, Any] = dict(
        accelerator=t.accelerator,
        devices=devices(t),
        strategy=t.strategy,
        num_nodes=t.num_nodes,
        precision=t.precision,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        deterministic=t.deterministic,
        log_every_n_steps=t.log_every_n_steps,
        check_val_every_n_epoch=t.check_val_every_n_epoch,
        enable_model_summary=t.enable_model_summary or verbose(),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in shown),
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=run is not None,
        default_root_dir=str(run.path) if run else None,
        benchmark=t.cudnn_benchmark,
        detect_anomaly=t.detect_anomaly,
        plugins=[checkpoint_io or AtomicCheckpointIO()],
    )
    for limit in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if t[limit] is not None:
            kwargs[limit] = t[limit]
    try:
        return L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError) as err:
        raise ConfigError(f"trainer: {first_line(err)}") from err
