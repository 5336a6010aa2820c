"""Evaluating and predicting from a checkpoint: the model is rebuilt from the config stored in it."""

from __future__ import annotations

import csv
import glob
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from cnnkit.config.load import load_config
from cnnkit.config.plain import spec
from cnnkit.console import command_path, quiet, shown_path, verbose
from cnnkit.data.info import DataInfo
from cnnkit.errors import CheckpointError, DataError
from cnnkit.messages import note
from cnnkit.registry import split_spec
from cnnkit.runs.atomic import atomic_write_text
from cnnkit.runs.checkpoint import read_checkpoint, resolve_checkpoint
from cnnkit.runs.run_dir import RunDir
from cnnkit.training.builders import build_datamodule, build_module, load_weights
from cnnkit.training.trainer import build_trainer


def checkpoint_config(
    ckpt: str, files: Sequence[str] = (), overrides: Sequence[str] = ()
) -> tuple[DictConfig, Path, dict[str, Any]]:
    """The config a checkpoint was trained with, updated by ``files`` and ``overrides``.

    ``last`` (``best``) is the last (best) checkpoint of the config's run; without ``files``, of the one
    run under runs/ that has a last.ckpt.
    """
    named = ckpt in ("last", "best")
    if named and not files:
        run = _only_run(load_config((), overrides, validate_config=False), overrides, ckpt)
    else:
        run = RunDir.for_config(load_config(files, overrides)) if named else None
    path = resolve_checkpoint(ckpt, run)
    if named:
        alone = " (the only run under runs/)" if not files else ""
        note(f"--ckpt {ckpt}: {shown_path(path)}{alone}")
    checkpoint = read_checkpoint(path)
    cfg = load_config(files, overrides, base=checkpoint["hyper_parameters"]["config"])
    return cfg, path, checkpoint


def _label_rule(cfg: DictConfig, info: DataInfo, source: Any):
    """How an input file's true label is known (-1: it is not), and what to say when no file has one: as
    the source the model was trained on says (``DatasetSource.label_rule``)."""
    rule = source.label_rule(info.class_names)
    if rule is not None:
        return rule
    name = split_spec(spec(cfg, "data.dataset"))[0]
    return (lambda path: -1), (
        f"no true labels: a file's label is read only for a model trained on files that "
        f"carry it (an image folder: a folder named after its class); this one was trained "
        f"on {name}"
    )


def _only_run(cfg: DictConfig, overrides: Sequence[str], which: str) -> RunDir:
    """``--ckpt last|best`` without a config: the one run under ``runs_dir`` that has a last.ckpt (of the
    ``name=`` and the variant the overrides give, where they give them), else which to choose."""
    runs_dir = cfg.runs_dir
    named = any(o.partition("=")[0].strip() == "name" for o in overrides)
    pattern = f"{cfg.name if named else '*'}/{cfg.variant if cfg.variant != 'default' else '*'}/checkpoints/last.ckpt"
    # runs_dir/<name>/<variant>, and one level deeper: the smoke and ddp_cpu presets' runs_dir/smoke/...
    found = sorted([*Path(runs_dir).glob(pattern), *Path(runs_dir).glob(f"*/{pattern}")])
    if len(found) == 1:  # the one run here (the caller names the checkpoint it takes)
        return RunDir(found[0].parent.parent)
    if not found:
        raise CheckpointError(
            f"--ckpt {which}: no run under '{runs_dir}/' has a checkpoints/last.ckpt; train one "
            f"first (cnnkit fit --config RECIPE) or pass a checkpoint's path"
        )
    runs = ", ".join(str(p.parent.parent.relative_to(runs_dir)) for p in found[:4]) + (" ..." if len(found) > 4 else "")
    raise CheckpointError(
        f"--ckpt {which} needs the run's config to tell which of {len(found)} runs ({runs}): add "
        f"--config RECIPE with the run's overrides, or pass its path, "
        f"e.g. --ckpt {command_path(found[0])}"
    )


def _run_of_checkpoint(path: Path, cfg: DictConfig) -> Path:
    """The run directory a checkpoint lives in (``<run>/checkpoints/x.ckpt``), else the config's."""
    return path.parent.parent if path.parent.name == "checkpoints" else RunDir.for_config(cfg).path


def stored_data_info(checkpoint: dict[str, Any]) -> DataInfo:
    return DataInfo.from_dict(checkpoint["hyper_parameters"]["data_info"])


def _module_from_checkpoint(cfg: DictConfig, path: Path, checkpoint: dict[str, Any]):
    module = build_module(cfg, stored_data_info(checkpoint))
    load_weights(module, checkpoint, path, strict=True)
    return module


def _one_pass(cfg: DictConfig) -> DictConfig:
    """An evaluation reads each image once: decoding a folder's every split first would only add work."""
    cfg.data.cache = "none"
    return cfg


@quiet
def evaluate(stage: str, ckpt: str, files: Sequence[str] = (), overrides: Sequence[str] = ()) -> dict[str, float]:
    """``stage`` is ``validate`` or ``test``: metrics of a checkpoint's model on that split."""
    cfg, path, checkpoint = checkpoint_config(ckpt, files, overrides)
    module = _module_from_checkpoint(cfg, path, checkpoint)
    datamodule = build_datamodule(_one_pass(cfg))
    stored, current = stored_data_info(checkpoint), datamodule.info
    if (stored.num_classes, stored.input_shape) != (current.num_classes, current.input_shape):
        raise CheckpointError(
            f"checkpoint '{path}' was trained on {stored.describe()}; the configured data has {current.describe()}"
        )

    trainer = build_trainer(cfg, None, False, [])
    run_stage = trainer.validate if stage == "validate" else trainer.test
    results = run_stage(module, datamodule=datamodule, verbose=verbose())  # the command prints its own line
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


@dataclass
class Predictions:
    """What ``predict`` wrote: the CSV's path, header and rows (``label``/``correct`` where labels are known)."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    no_labels: Optional[str] = None  # why no file has a true label, when none has

    def accuracy(self) -> Optional[tuple[float, int]]:
        """(accuracy, count) over the rows whose true label is known; None when none is."""
        if "correct" not in self.header:
            return None
        column = self.header.index("correct")
        known = [row[column] for row in self.rows if row[column] != ""]
        return (sum(c == "yes" for c in known) / len(known), len(known)) if known else None


def image_inputs(inputs: Sequence[str], extensions: tuple[str, ...]) -> list[str]:
    """Files ending in ``extensions`` from files, folders (searched recursively) and globs, in the order
    given, once each."""

    def images_under(folder: str) -> list[str]:
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.lower().endswith(extensions))

    found: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            matched = images_under(item)
            if not matched:
                raise DataError(f"predict: no images ({', '.join(extensions)}) under '{item}'")
        elif os.path.isfile(item):
            if not item.lower().endswith(extensions):
                raise DataError(f"predict: '{item}' is not an image file ({', '.join(extensions)})")
            matched = [item]
        elif glob.has_magic(item):
            paths = sorted(glob.glob(item, recursive=True))
            matched = [
                m
                for p in paths
                for m in (images_under(p) if os.path.isdir(p) else [p])
                if m.lower().endswith(extensions)
            ]
            if not matched:
                raise DataError(f"predict: no images match '{item}'")
        else:
            raise DataError(f"predict: input '{item}' does not exist (pass image files, folders or quoted globs)")
        found += matched
    return list(dict.fromkeys(found))


def _rows(
    batches: Sequence[Any], names: Sequence[str], labels: Optional[Sequence[int]], k: int, class_names: Sequence[str]
) -> list[list[str]]:
    """A CSV row per input: file, predicted class and its probability, (true label, correct), the top k."""
    rows: list[list[str]] = []
    for probs, _ in batches:
        top_p, top_c = probs.topk(k, dim=-1)
        for ps, cs in zip(top_p.tolist(), top_c.tolist()):
            i = len(rows)
            row = [names[i], class_names[cs[0]], f"{ps[0]:.4f}"]
            if labels is not None:
                label = labels[i]
                row += ["", ""] if label < 0 else [class_names[label], "yes" if label == cs[0] else "no"]
            row.append(" ".join(f"{class_names[c]}:{p:.4f}" for c, p in zip(cs, ps)))
            rows.append(row)
    return rows


@quiet
def predict(
    ckpt: str,
    files: Sequence[str] = (),
    overrides: Sequence[str] = (),
    split: Optional[str] = None,
    inputs: Sequence[str] = (),
    output: Optional[str] = None,
    top_k: int = 3,
) -> Predictions:
    """Class probabilities for a split, or for image files, folders and globs, written as CSV.

    Each row: file, predicted class, its probability, the true label and whether the prediction is
    correct where the label is known (a split's labels; for a model trained on an image folder, an
    image laid out as that folder's were: in a folder named after its class, or named ``<label>_...``),
    and the ``top_k`` classes.
    """
    # startup: torch only when this runs
    from torch.utils.data import DataLoader

    from cnnkit.config.plans import dataset_plan

    cfg, path, checkpoint = checkpoint_config(ckpt, files, overrides)
    module = _module_from_checkpoint(cfg, path, checkpoint)
    info = stored_data_info(checkpoint)
    batch = cfg.data.eval_batch_size or cfg.data.batch_size
    if inputs:
        source = dataset_plan(cfg.data).build()
        reader = source.input_files()
        images = image_inputs(inputs, reader.extensions)
        channels, height, width = info.input_shape
        label_of, no_labels = _label_rule(cfg, info, source)
        dataset = reader([(p, label_of(p)) for p in images], (height, width), channels, "input")
        single = len(inputs) == 1 and os.path.exists(inputs[0])  # one file or folder names the CSV
        source = "input" + (f"-{Path(inputs[0]).stem}" if single and Path(inputs[0]).stem else "")
    else:
        split, no_labels = split or "test", None
        dataset = build_datamodule(_one_pass(cfg)).load().get(split)
        source = split
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=cfg.data.num_workers or 0)
    trainer = build_trainer(cfg, None, False, [])
    batches = trainer.predict(module, dataloaders=loader)
    labels = [int(y) for _, ys in batches for y in ys.reshape(-1)]
    known = any(label >= 0 for label in labels)
    k = max(1, min(top_k, info.num_classes))
    header = ["file", "class", "probability"] + (["label", "correct"] if known else []) + [f"top{k}"]
    rows = _rows(batches, dataset.names(), labels if known else None, k, info.class_names)
    out = Path(output) if output else _run_of_checkpoint(path, cfg) / f"predictions-{source}.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(out, buffer.getvalue())
    return Predictions(out, header, rows, None if known else no_labels)
