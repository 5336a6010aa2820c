"""From a config to the objects a run is made of: datamodule, LightningModule, network."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig

from cnnkit.config.plain import as_data
from cnnkit.console import interactive
from cnnkit.data.info import DataInfo
from cnnkit.errors import CheckpointError, ConfigError
from cnnkit.messages import note, say


def build_datamodule(cfg: DictConfig):
    """The datamodule; its notes go to stdout from the first process, a bar shows decoding on a terminal."""
    # startup: lightning, torch only when this runs
    from cnnkit.data.datamodule import ClassificationDataModule

    return ClassificationDataModule(cfg.data, seed=cfg.seed, note=note, show_progress=interactive())


def build_module(cfg: DictConfig, data_info: DataInfo, datamodule: Any = None, run_dir: Optional[Path] = None):
    """The LightningModule; with a loaded ``datamodule``, input standardization gets its train-split statistics;
    ``run_dir`` is the fit's run directory, where the module writes its own files."""
    # startup: torch only when this runs
    from cnnkit.nn.layers.input_norm import InputStandardize
    from cnnkit.training.module import ClassifierModule

    with _resize_hint(cfg):
        # config and data info are plain data, saved as hyper-parameters
        module = ClassifierModule(as_data(cfg), data_info.as_dict(), run_dir=run_dir)
    if datamodule is not None and isinstance(module.model.input_norm, InputStandardize):
        module.model.input_norm.set_statistics(*datamodule.input_statistics())
    return module


def data_info(cfg: DictConfig) -> DataInfo:
    """Input shape and classes of the config's dataset, read from its entry (no data needed)."""
    # startup: torch only when this runs
    from cnnkit.config.plans import dataset_plan

    source = dataset_plan(cfg.data).build()
    info = source.info()
    for line in source.notes():
        note(line)
    return info


def build_model(cfg: DictConfig, info: Optional[DataInfo] = None):
    """The network alone (a ``torch.nn.Module``); ``info`` defaults to the config's dataset's."""
    # startup: torch only when this runs
    from cnnkit.nn.model import build_classifier

    info = info or data_info(cfg)
    with _resize_hint(cfg):
        return build_classifier(cfg.model, info.input_shape, info.num_classes)


@contextmanager
def _resize_hint(cfg: DictConfig) -> Iterator[None]:
    """Images too small for the backbone: the fix names the dataset's own resize key when it has one."""
    # startup: torch only when this runs
    from cnnkit.config.plans import dataset_plan
    from cnnkit.nn.backbones.shapes import InputTooSmall

    try:
        yield
    except InputTooSmall as err:
        if dataset_plan(cfg.data).takes("image_size"):
            fix = f"resize the data (data.dataset.image_size={err.minimum}) or use a shallower model"
        else:
            fix = "use larger images or a shallower model"
        raise ConfigError(f"{err}; {fix}") from err


def load_weights(module, checkpoint: dict[str, Any], path: Path, strict: bool) -> None:
    """Copy a checkpoint's weights in; with ``strict=False`` tensors of another shape are skipped."""
    state = checkpoint.get("state_dict", {})
    own = module.state_dict()
    if strict:
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong_shape:
            parts = [
                f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("different shape", wrong_shape))
                if keys
            ]
            raise CheckpointError(
                f"checkpoint '{path}' does not fit the configured model ({'; '.join(parts)}); "
                f"use the config it was trained with"
            )
        module.load_state_dict(state)
        return
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"--init-from '{path}': no weight of that checkpoint fits this model")
    module.load_state_dict(usable, strict=False)
    skipped = len(state) - len(usable)
    say(f"initialized {len(usable)} tensors from '{path}'{f', skipped {skipped} that do not fit' if skipped else ''}")
