"""Lightning's Trainer from a config: progress bar, callbacks by name, limits, checkpoint I/O."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from .config import key_context, to_plain
from .errors import ConfigError, first_line
from .runs import RunDir


def build_trainer(cfg: DictConfig, run: Optional[RunDir], loggers: Any, callbacks: list[Any],
                  checkpoint_io: Any = None):
    """The Trainer of a fit (``run`` given: checkpointing into it) or of an evaluation (``run`` None)."""
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    from .checkpoint_io import AtomicCheckpointIO
    from .registry import CALLBACKS

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
        benchmark=t.cudnn_benchmark, detect_anomaly=t.detect_anomaly,
        plugins=[checkpoint_io or AtomicCheckpointIO()],
    )
    for limit in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        if t[limit] is not None:
            kwargs[limit] = t[limit]
    try:
        return L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError) as err:
        raise ConfigError(f"trainer: {first_line(err)}") from err
