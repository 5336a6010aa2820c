"""The config, part by part, as checked build plans: validation makes them, construction builds them.

Each function turns one part of the config into what will be built — the registry entry, its
arguments and the inputs cnnkit will add (``registry.Plan``) — or raises a ConfigError naming the
key. ``config.validate`` makes every plan and stops; the model, the optimizer, the data module and
the trainer make the plan of their part and build it with the real inputs. A config that
validates is therefore exactly a config that builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cnnkit.config.plain import spec
from cnnkit.errors import key_context
from cnnkit.nn.layers.blocks import Bias, parse_bias
from cnnkit.nn.layers.norms import NormScheme
from cnnkit.registry import (
    ACTIVATIONS,
    BACKBONES,
    CALLBACKS,
    DATASETS,
    INITS,
    NORMS,
    OPTIMIZERS,
    POOLINGS,
    SCHEDULERS,
    TRANSFORMS,
    Plan,
)

# What cnnkit passes to the parts it builds, besides the spec's own arguments, is each registry's
# ``inputs`` (registry.py). A backbone or a scheduler that does not take one of its inputs simply does
# not get it; the optimizer and a pooling always get theirs.
OPTIMIZER_OFFERED = ("fused",)  # torch's fused implementation, which can skip a non-finite step on the device


@dataclass(frozen=True)
class ModelPlan:
    norm: NormScheme  # a scheme is configuration: built here, it makes the layers later
    act: Plan
    pool: Plan
    init: Plan
    backbone: Plan
    bias: Bias


def model_plan(model_cfg: Any) -> ModelPlan:
    with key_context("model.norm"):
        norm = NORMS.build(spec(model_cfg, "norm"))
    with key_context("model.act"):
        act = ACTIVATIONS.plan(spec(model_cfg, "act"))
    with key_context("model.pool"):
        pool = POOLINGS.plan(spec(model_cfg, "pool"), given=POOLINGS.inputs)
    with key_context("model.init"):
        init = INITS.plan(spec(model_cfg, "init"))
    with key_context("model.backbone"):
        backbone = BACKBONES.plan(spec(model_cfg, "backbone"), offered=BACKBONES.inputs)
    with key_context("model.bias"):
        bias = parse_bias(model_cfg.bias)
    return ModelPlan(norm, act, pool, init, backbone, bias)


def optimizer_plan(optim_cfg: Any) -> Plan:
    with key_context("optim.optimizer"):
        return OPTIMIZERS.plan(spec(optim_cfg, "optimizer"), given=OPTIMIZERS.inputs, offered=OPTIMIZER_OFFERED)


def scheduler_plan(optim_cfg: Any) -> Plan:
    with key_context("optim.scheduler"):
        return SCHEDULERS.plan(spec(optim_cfg, "scheduler"), offered=SCHEDULERS.inputs)


def dataset_plan(data_cfg: Any) -> Plan:
    with key_context("data.dataset"):
        return DATASETS.plan(spec(data_cfg, "dataset"))


def augment_plans(data_cfg: Any) -> list[Plan]:
    plans = []
    for i, entry in enumerate(spec(data_cfg, "augment")):
        with key_context(f"data.augment[{i}]"):
            plans.append(TRANSFORMS.plan(entry, offered=TRANSFORMS.inputs))
    return plans


def callback_plans(cfg: Any) -> list[Plan]:
    plans = []
    for i, entry in enumerate(spec(cfg, "callbacks")):
        with key_context(f"callbacks[{i}]"):
            plans.append(CALLBACKS.plan(entry))
    return plans
