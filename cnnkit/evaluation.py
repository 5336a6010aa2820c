"""Evaluating and predicting from a checkpoint: the model is rebuilt from the config stored in it."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from .builders import build_datamodule, build_module, load_weights
from .checkpoint import read_checkpoint, resolve_checkpoint
from .config import load_config
from .data.info import DataInfo
from .atomic import atomic_write_text
from .errors import CheckpointError, DataError
from .runs import RunDir
from .trainer import build_trainer


def checkpoint_config(ckpt: str, files: Sequence[str] = (),
                      overrides: Sequence[str] = ()) -> tuple[DictConfig, Path, dict[str, Any]]:
    """The config a checkpoint was trained with, updated by ``files`` and ``overrides``."""
    run = RunDir.for_config(load_config(files, overrides)) if ckpt == "last" else None
    path = resolve_checkpoint(ckpt, run)
    checkpoint = read_checkpoint(path)
    cfg = load_config(files, overrides, base=checkpoint["hyper_parameters"]["config"])
    return cfg, path, checkpoint


def stored_data_info(checkpoint: dict[str, Any]) -> DataInfo:
    return DataInfo.from_dict(checkpoint["hyper_parameters"]["data_info"])


def _module_from_checkpoint(cfg: DictConfig, path: Path, checkpoint: dict[str, Any]):
    module = build_module(cfg, stored_data_info(checkpoint))
    load_weights(module, checkpoint, path, strict=True)
    return module


def evaluate(stage: str, ckpt: str, files: Sequence[str] = (), overrides: Sequence[str] = ()) -> dict[str, float]:
    """``stage`` is ``validate`` or ``test``: metrics of a checkpoint's model on that split."""
    cfg, path, checkpoint = checkpoint_config(ckpt, files, overrides)
    module = _module_from_checkpoint(cfg, path, checkpoint)
    datamodule = build_datamodule(cfg)
    stored, current = stored_data_info(checkpoint), datamodule.info
    if (stored.num_classes, stored.input_shape) != (current.num_classes, current.input_shape):
        raise CheckpointError(f"checkpoint '{path}' was trained on {stored.describe()}; "
                              f"the configured data has {current.describe()}")
    trainer = build_trainer(cfg, None, False, [])
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
    info = stored_data_info(checkpoint)
    batch = cfg.data.eval_batch_size or cfg.data.batch_size
    if input_dir is not None:
        if not os.path.isdir(input_dir):
            raise DataError(f"predict: input folder '{input_dir}' does not exist")
        images = sorted(os.path.join(d, f) for d, _, fs in os.walk(input_dir) for f in fs
                        if f.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            raise DataError(f"predict: no images ({', '.join(IMAGE_EXTENSIONS)}) under '{input_dir}'")
        channels, height, width = info.input_shape
        dataset = ImageFiles([(p, -1) for p in images], (height, width), channels, "input")
        source = Path(input_dir).name or "input"
    else:
        split = split or "test"
        dataset = build_datamodule(cfg).load().get(split)
        source = split
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=cfg.data.num_workers or 0)
    trainer = build_trainer(cfg, None, False, [])
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
            writer.writerow([names[row], info.class_names[c], f"{p:.6f}"])
            row += 1
    atomic_write_text(out, buffer.getvalue())
    return out
