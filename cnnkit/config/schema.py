"""The config schema: omegaconf structured dataclasses, the keys that name registry entries, plain data.

Each key is declared once, with what cnnkit needs to know about it as field metadata: the names a
``one_of`` key takes (plain strings, checked by ``load.check_choices``) and its roles (``roles``), from
which run reuse (``diff.py``) and variant names (``experiments/matrix.py``) take their key sets.
The bottom of the config layer: loading and validating (``load.py``), variant names, plans and the
data layer read it; it imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from typing import Any, Iterator, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnkit.registry import normalize

SCHEMA_VERSION = 1


# A key's roles, declared once as its field's metadata (``roles``); run reuse (config/diff.py) and variant
# names (experiments/matrix.py) derive their key sets from them (``keys_with``, ``NAME_ORDER``).
PLACE = "place"  # where a run lives or how it is shown, never what it computes: ignored when reusing a run
HOW = "how"  # how to run, not what: a run may resume with other values
LENGTH = "length"  # the run's length: a finished run trains on when it grows (diff.length_bound_schedule)
LIMIT = "limit"  # how much of each split a run sees: a limited run is a smoke test, never the recipe's result


def roles(role: Optional[str] = None, names: Optional[int] = None) -> dict[str, Any]:
    """Field metadata: the key's ``role`` and, for a key that names a single fit's variant when overridden,
    its place in the name (``names``: lower first; within one place, the schema's order)."""
    return {k: v for k, v in (("role", role), ("names", names)) if v is not None}


def one_of(default: str, *others: str, role: Optional[str] = None, names: Optional[int] = None) -> Any:
    """A field whose value is one of a fixed set of names, a plain string the validation checks
    (``load.check_choices``): the code compares it with no conversion (``cfg.eval_stats == "batch"``)."""
    return field(default=default, metadata={"choices": (default, *others), **roles(role, names)})


@dataclass
class ModelConfig:
    backbone: Any = "simple_cnn"  # a name, or {name: ..., <backbone argument>: ...}
    norm: Any = "bn_pre"  # none | input | bn_pre | bn_post | gn | ln | your own
    act: Any = "relu"
    pool: Any = "max"
    init: Any = "default"
    bias: Any = "auto"  # auto | true | false; auto drops it only where a norm directly follows


@dataclass
class DataConfig:
    # A name, or {name: ..., root: ..., image_size: ...}
    dataset: Any = field(default="digits", metadata=roles(names=2))
    batch_size: int = field(default=64, metadata=roles(names=4))  # global batch: split across devices
    eval_batch_size: Optional[int] = None  # default: batch_size
    # auto: tensor when the data is in memory and every training transform has a batched version; tensor: the
    # data set as tensors on the training device, batched augmentation; dataloader: torchvision transforms per
    # sample in a torch DataLoader
    loader: str = one_of("auto", "tensor", "dataloader")
    # Image folders, decoded once (see data/decoded.py). auto: into memory when they fit data.cache_budget,
    # else none; memory: once per process, held in memory (then the tensor path can serve them); disk: once into
    # a cache file beside the data that later runs and other processes map; none: by the DataLoader each time an
    # epoch uses an image
    cache: str = one_of("auto", "memory", "disk", "none", role=HOW)
    # GiB of decoded images data.cache=auto may hold in memory
    cache_budget: float = field(default=4.0, metadata=roles(HOW))
    # DataLoader workers; default: min(cores - 1, 8) for the DataLoader path
    num_workers: Optional[int] = field(default=None, metadata=roles(HOW))
    augment: list[Any] = field(default_factory=list, metadata=roles(names=3))  # training transforms, by name


@dataclass
class OptimConfig:
    optimizer: Any = "sgd"  # sgd | adam | adamw, or {name: sgd, momentum: 0.9, nesterov: true}
    lr: float = 0.1
    weight_decay: float = 0.0
    no_decay_norm_bias: bool = False  # exempt norm parameters and biases from weight decay
    scheduler: Any = "constant"  # constant | step | cosine | onecycle
    # Scale lr with the global batch size. linear: lr × global batch / reference batch (Goyal et al. 2017);
    # sqrt: lr × sqrt(global batch / reference batch)
    lr_scaling: str = one_of("none", "linear", "sqrt")
    reference_batch_size: int = 256  # the batch size optim.lr is meant for when scaling


@dataclass
class LossConfig:
    label_smoothing: float = 0.0


@dataclass
class MetricsConfig:
    # micro: fraction of samples classified correctly; macro: mean of the per-class accuracies
    average: str = one_of("micro", "macro")


@dataclass
class TrainerConfig:
    accelerator: str = field(default="auto", metadata=roles(HOW))
    devices: Any = field(default=1, metadata=roles(HOW))
    strategy: str = field(default="auto", metadata=roles(HOW))
    num_nodes: int = field(default=1, metadata=roles(HOW))
    precision: str = "32-true"
    max_epochs: int = field(default=10, metadata=roles(LENGTH, names=10))
    max_steps: int = field(default=-1, metadata=roles(LENGTH, names=11))
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    deterministic: bool = False
    log_every_n_steps: int = field(default=10, metadata=roles(PLACE))
    check_val_every_n_epoch: int = 1
    limit_train_batches: Any = field(default=None, metadata=roles(LIMIT, names=12))
    limit_val_batches: Any = field(default=None, metadata=roles(LIMIT, names=13))
    limit_test_batches: Any = field(default=None, metadata=roles(LIMIT, names=14))
    # auto: rich when installed, else tqdm; one line per epoch when the output is not a terminal
    progress_bar: str = one_of("auto", "tqdm", "rich", "none", role=PLACE)
    # Lightning's table of modules (always shown with --verbose)
    enable_model_summary: bool = field(default=False, metadata=roles(PLACE))
    detect_anomaly: bool = False  # autograd anomaly detection: finds the op that made a NaN (slow)
    channels_last: bool = False  # NHWC memory layout for conv nets (faster with mixed precision on GPUs)
    compile: bool = False  # torch.compile the model (checkpoints keep the uncompiled parameter names)
    cudnn_benchmark: Optional[bool] = None  # let cuDNN pick the fastest conv algorithms for fixed shapes
    # torch's CPU threads: auto = the cores shared among running cnnkit fits (training/threads.py)
    threads: Any = field(default="auto", metadata=roles(PLACE))


@dataclass
class DistributedConfig:
    sync_bn: bool = False  # BN statistics over the global batch (torch SyncBatchNorm on CUDA, all-reduce BN on CPU)
    average_bn_stats: bool = True  # without sync: average BN running statistics over ranks before evaluation


@dataclass
class CheckpointConfig:
    monitor: str = "val/acc"
    mode: str = one_of("max", "min")
    save_top_k: int = 1
    # Checkpoints/last.ckpt: the state at the end of every epoch
    save_last: bool = field(default=True, metadata=roles(PLACE))
    every_n_epochs: int = 1
    # Also save last.ckpt every N optimizer steps (resume mid-epoch)
    every_n_steps: Optional[int] = field(default=None, metadata=roles(PLACE))


@dataclass
class WandbConfig:
    # auto: WANDB_MODE if set; else online with credentials, offline without
    mode: str = one_of("auto", "online", "offline", "disabled")
    project: str = "cnnkit"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the recipe's name
    tags: list[str] = field(default_factory=list)
    log_model: bool = False
    init_timeout: float = 60.0  # seconds W&B may take to start; after that cnnkit goes on without it


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class ReportConfig:
    target_loss: Optional[float] = None  # "steps to target": first step whose train loss is at or below
    metric: str = "test/acc"  # the headline metric of bar charts and the best variant
    question: Optional[str] = None  # the recipe's question: REPORT.md opens with it and the numbers' answer
    # What the answer is about (cnnkit/experiments/answer.py): the matrix key the question compares (default: the first
    # but seed), a matrix key to follow the metric along, and the compared value the course expects to do
    # best (as a variant name spells it), in the setting of the other matrix keys given by ``where``.
    compare: Optional[str] = None
    along: Optional[str] = None
    expect: Optional[str] = None
    where: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    schema_version: int = field(default=SCHEMA_VERSION, metadata=roles(PLACE))
    name: str = field(default="default", metadata=roles(PLACE))  # runs/<name>/<variant>/
    variant: str = field(default="default", metadata=roles(PLACE))
    runs_dir: str = field(default="runs", metadata=roles(PLACE))
    seed: int = field(default=0, metadata=roles(names=6))
    # Your modules / .py files that register entries
    imports: list[str] = field(default_factory=list, metadata=roles(names=9))
    # BN at evaluation. running: its moving averages (population estimates), as deployed; batch: the statistics
    # of each evaluation batch (buffers untouched)
    eval_stats: str = one_of("running", "batch", names=7)
    # Test-time augmentation at validation, test and predict. flip: average the logits of the image and its mirror
    tta: str = one_of("none", "flip", names=8)
    model: ModelConfig = field(default_factory=ModelConfig, metadata=roles(names=0))
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig, metadata=roles(names=1))
    loss: LossConfig = field(default_factory=LossConfig, metadata=roles(names=5))
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    callbacks: list[Any] = field(default_factory=list)  # extra callbacks by name
    logger: LoggerConfig = field(default_factory=LoggerConfig, metadata=roles(PLACE))
    report: ReportConfig = field(default_factory=ReportConfig, metadata=roles(PLACE))
    # Dotted key → list of values; one run per combination. A place: adding a seed keeps the variants already run.
    matrix: dict[str, Any] = field(default_factory=dict, metadata=roles(PLACE))
    # Matrix variants trained at once, in processes of their own: N or auto (fit --jobs; experiments/jobs.py).
    jobs: Any = field(default=1, metadata=roles(PLACE))


# The keys whose value names one registry entry: a name, or ``{name: ..., <argument>: ...}``.
SPEC_KEYS = {
    "model.backbone": "backbones",
    "model.norm": "norms",
    "model.act": "activations",
    "model.pool": "poolings",
    "model.init": "inits",
    "data.dataset": "datasets",
    "optim.optimizer": "optimizers",
    "optim.scheduler": "schedulers",
}


def spec_key(key: str) -> str | None:
    """The registry-spec key that ``key`` is or lies under (``model.norm.groups`` → ``model.norm``)."""
    return next((k for k in SPEC_KEYS if key == k or key.startswith(k + ".")), None)


def same_entry(a: Any, b: Any) -> bool:
    """Whether two entry names are one name once normalized (``Relu``, ``relu``; ``bn-pre``, ``bn_pre``)."""
    return isinstance(a, str) and isinstance(b, str) and normalize(a) == normalize(b)


def to_plain(node: Any) -> Any:
    """A config node as plain Python data: safe in checkpoints and W&B."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def schema_fields(section: type = Config, prefix: str = "") -> Iterator[tuple[str, Field]]:
    """(dotted key, dataclass field) of every key of the schema, sections and the keys inside them."""
    for f in fields(section):
        yield prefix + f.name, f
        if f.default_factory is not MISSING and is_dataclass(f.default_factory):
            yield from schema_fields(f.default_factory, prefix + f.name + ".")


# The keys whose value is one of a fixed set of names (``one_of``), and those names.
CHOICES = {key: f.metadata["choices"] for key, f in schema_fields() if "choices" in f.metadata}


# Roles of registry specs' arguments, which are no schema fields: whether missing data may be fetched.
ARGUMENT_ROLES = {"data.dataset.download": PLACE}


def keys_with(role: str) -> tuple[str, ...]:
    """The dotted keys of one role, in the schema's order (spec arguments last)."""
    declared = [key for key, f in schema_fields() if f.metadata.get("role") == role]
    return tuple(declared + [key for key, r in ARGUMENT_ROLES.items() if r == role])


# The keys that name a single fit's variant, in the order they appear in its name.
NAME_ORDER = tuple(
    key
    for key, f in sorted(
        ((k, f) for k, f in schema_fields() if "names" in f.metadata), key=lambda item: item[1].metadata["names"]
    )
)
