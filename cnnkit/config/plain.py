"""The config's values as they leave the config layer: plain Python data, never omegaconf nodes.

A registry spec may be a mapping (``{name: gn, groups: 8}``), devices a list, and the whole config goes
into checkpoints, ``config.yaml`` and W&B. The rest of cnnkit reads such values through these functions,
so only the config layer knows omegaconf's node types (the ``one_of`` keys are plain strings already).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from cnnkit.config.schema import to_plain


def spec(node: Any, key: str) -> Any:
    """The registry spec at dotted ``key`` under ``node``: a name, or a dict ``{name: ..., <argument>: ...}``
    (a list of them for ``data.augment`` and ``callbacks``)."""
    return to_plain(OmegaConf.select(node, key))


def devices(trainer: DictConfig) -> Any:
    """``trainer.devices`` as Lightning takes it: a count, ``auto``, a string of ids, or a list of ids."""
    return to_plain(trainer.devices)


def matrix(cfg: DictConfig) -> dict[str, list[Any]]:
    """The recipe's ``matrix:``: dotted key → its list of values."""
    return to_plain(cfg.matrix)


def as_data(cfg: DictConfig) -> dict[str, Any]:
    """The config (or one section) as plain data, interpolations resolved: what checkpoints' hyper-parameters,
    a run's ``config.yaml``, W&B and the comparisons with stored configs hold."""
    return to_plain(cfg)
