"""ClassifierModule: softmax cross-entropy training and eval-mode evaluation of a registry-built CNN."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from cnnkit.config.load import SCHEMA_VERSION
from cnnkit.config.plans import optimizer_plan, scheduler_plan
from cnnkit.console import verbose
from cnnkit.data.info import DataInfo
from cnnkit.messages import first_process, flag, say
from cnnkit.nn.layers.batch_stats import batch_statistics
from cnnkit.nn.model import build_classifier
from cnnkit.runs.divergence import Divergence, WatchesDivergence
from cnnkit.training.callbacks.output import write_json_file
from cnnkit.training.distributed import average_bn_buffers, convert_sync_bn
from cnnkit.training.lightning_adapter import logs_this_step
from cnnkit.training.optim import parameter_groups, scaled_lr
from cnnkit.training.step_guard import FUSED_CAPABLE, StepGuard, skips_on_device

SPLITS = ("train", "val", "test")
IGNORED = -100  # the training accuracy's ignore_index: a batch the step guard skipped counts nowhere
SCALED_PRECISIONS = ("16-mixed", "16")  # a GradScaler decides about non-finite steps itself


class RecentSteps(dict):
    """The learning rate of the last few optimizer steps (a diverged step is named after the fact)."""

    def __init__(self, keep: int):
        super().__init__()
        self.keep = max(2, keep)

    def __setitem__(self, step: int, lr: float) -> None:
        super().__setitem__(step, lr)
        for old in [k for k in self if k <= step - self.keep]:
            del self[old]


TRAIN_METRICS = ("train_acc", "train_loss")  # accumulated over an epoch, so saved for a mid-epoch resume


class TrainAccuracy(MulticlassAccuracy):
    """torchmetrics' accuracy, updated every training step without a host synchronization.

    Its own update drops ignored labels with a boolean mask and counts with ``bincount``, both of which
    read back to the host on CUDA; the same counts by comparison and sum stay on the device. States,
    ``compute``, reset and the DDP sync are torchmetrics' (top-1, as cnnkit configures it).
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        preds = preds.argmax(dim=1) if preds.ndim == target.ndim + 1 else preds
        valid = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        classes = torch.arange(self.num_classes, device=target.device)
        truth = (target.reshape(-1, 1) == classes) & valid.reshape(-1, 1)
        guess = (preds.reshape(-1, 1) == classes) & valid.reshape(-1, 1)
        tp = (truth & guess).sum(0)
        fp, fn = guess.sum(0) - tp, truth.sum(0) - tp
        if self.average == "micro":
            tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
            tn = self.num_classes * valid.sum() - (tp + fp + fn)
        else:
            tn = valid.sum() - (tp + fp + fn)
        self._update_state(tp, fp, tn, fn)


class ClassifierModule(L.LightningModule, WatchesDivergence):
    """Holds the network, its loss and metrics; rebuilt from ``config`` + ``data_info`` alone.

    Both are plain data and saved as hyper-parameters, so a checkpoint is enough to rebuild the
    model (``torch.load(weights_only=True)`` included) without the data set on disk.
    Validation and test run in eval mode: BatchNorm uses its running statistics unless
    ``eval_stats: batch``. ``run_dir`` is the fit's run directory (None when evaluating outside a run):
    the test's confusion matrix is written there.
    """

    def __init__(self, config: dict[str, Any], data_info: dict[str, Any], run_dir: Optional[Path] = None):
        super().__init__()
        self.save_hyperparameters(ignore=["run_dir"], logger=False)
        self.run_dir = run_dir
        self.cfg = OmegaConf.create(config)
        self.data_info = DataInfo.from_dict(data_info)
        self.class_names = list(self.data_info.class_names)
        self.model = build_classifier(self.cfg.model, self.data_info.input_shape, self.data_info.num_classes)
        average = self.cfg.metrics.average
        classes = self.data_info.num_classes
        for split in SPLITS:  # checks skipped: inputs come from our own code; NaN losses stop training first
            accuracy = TrainAccuracy if split == "train" else MulticlassAccuracy
            setattr(
                self,
                f"{split}_acc",
                accuracy(
                    num_classes=classes,
                    average=average,
                    validate_args=False,
                    ignore_index=IGNORED if split == "train" else None,
                ),
            )
            setattr(self, f"{split}_loss", MeanMetric(nan_strategy="disable"))
        self.test_confusion = MulticlassConfusionMatrix(num_classes=classes, validate_args=False)
        self.divergence: Optional[Divergence] = None  # set when training goes non-finite; the run's owner records it
        self.step_guard = None  # set at the start of training when the optimizer can skip steps on the device
        self._recent_lrs = RecentSteps(1)
        self._epoch_metrics_logged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training objective: cross-entropy with ``loss.label_smoothing``. Training minimizes it, and
        every analysis of the loss (landscape probes, the Hessian, the error surface) measures this one."""
        return F.cross_entropy(logits, targets, label_smoothing=self.cfg.loss.label_smoothing)

    def evaluation_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss reported for validation and test: :meth:`loss` without label smoothing, on purpose — the
        negative log-likelihood of the labels, comparable across runs whatever smoothing each trained with."""
        return F.cross_entropy(logits, targets)

    @property
    def channels_last(self) -> bool:
        return bool(self.cfg.trainer.channels_last)

    # -- across processes -----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self._warn_about_idle_options()
        if self.cfg.distributed.sync_bn and self.trainer.world_size > 1:
            self.model = convert_sync_bn(self.model, self.trainer.strategy.root_device.type)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.cfg.trainer.compile and stage == "fit":
            self.model.compile()  # compiles forward in place: parameter names (and checkpoints) stay the same

    def _warn_about_idle_options(self) -> None:
        """Options that would silently do nothing for this model get a warning; the run goes on."""
        has_bn = any(isinstance(m, _BatchNorm) for m in self.model.modules())
        idle = []
        if not has_bn:
            idle += [
                f"{option} (the model has no BatchNorm layer)"
                for option, on in (
                    ("eval_stats: batch", self.cfg.eval_stats == "batch"),
                    ("distributed.sync_bn", self.cfg.distributed.sync_bn),
                )
                if on
            ]
        if self.cfg.tta == "flip" and not self.data_info.is_image:
            idle.append("tta: flip (the inputs are not images)")
        for option in idle:
            flag(f"{option} has no effect here")

    def _share_bn_statistics(self) -> None:
        if not self.cfg.distributed.sync_bn and self.cfg.distributed.average_bn_stats:
            average_bn_buffers(self.model)

    def on_validation_start(self) -> None:
        self._share_bn_statistics()

    def on_test_start(self) -> None:
        self._share_bn_statistics()

    def _eval_context(self):
        return batch_statistics(self.model) if self.cfg.eval_stats == "batch" else nullcontext()

    # -- steps --------------------------------------------------------------------------------
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Optional[torch.Tensor]:
        x, y = batch
        guard = self.step_guard
        if guard is not None:
            guard.before_forward()
            self._recent_lrs[int(self.global_step)] = self._lr()
        logits = self(x)
        loss = self.loss(logits, y)
        logging = logs_this_step(self.trainer)
        detached = loss.detach()
        if guard is not None:  # decided on the device (step_guard.py): read back only where the step is logged
            good = guard.after_loss(loss)
            if logging:
                self.check_divergence()
            # a bad batch counts in no training metric (its update is skipped on the device too)
            self.train_loss.update(torch.where(good, detached, 0.0), weight=good.float())
            self.train_acc.update(logits.detach(), torch.where(good, y, IGNORED))
        else:  # one host sync per step: a non-finite loss must stop the run before it updates the weights
            non_finite = self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss).item(), all=False)
            if non_finite:
                self.stop_diverged("training loss")
                return None  # skip the update: the weights stay those of the last finite step
            self.train_loss.update(detached)  # metric updates stay on the device; logged once per epoch
            self.train_acc.update(logits.detach(), y)
        if logging:  # each self.log costs Lightning bookkeeping: only on steps it writes
            self.log("train/loss_step", detached, on_step=True, on_epoch=False, prog_bar=True)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.step_guard is not None:
            self.step_guard.before_optimizer_step(optimizer)

    def on_after_backward(self) -> None:
        if self.step_guard is not None:  # before the callbacks see the batch's end: BN's buffers as they were
            self.step_guard.after_backward()

    def check_divergence(self) -> bool:
        """Whether training went non-finite; with the step guard this reads its flag back (a host sync)."""
        if self.divergence is None and self.step_guard is not None:
            step = self.step_guard.first_bad_step()
            if step is not None:
                self.stop_diverged("training loss", step)
        return self.divergence is not None

    def _lr(self) -> float:
        return float(self.trainer.optimizers[0].param_groups[0]["lr"]) if self.trainer.optimizers else float("nan")

    def on_train_start(self) -> None:
        """The step guard, when the optimizer can skip updates on the device and no loss scaler or other
        process takes part in the decision (a GradScaler skips steps of its own; under DDP every rank
        must agree, which Lightning's loop syncs for anyway)."""
        self.step_guard = None
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        if optimizer is not None and skips_on_device(optimizer) and self._may_guard_on_device():
            self.step_guard = StepGuard(self.model, int(self.global_step), self.device)
        self._recent_lrs = RecentSteps(self.trainer.log_every_n_steps + 1)

    def _may_guard_on_device(self) -> bool:
        return (
            self.trainer.world_size == 1
            and str(self.trainer.precision) not in SCALED_PRECISIONS
            and self.device.type in ("cpu", "cuda")
        )

    def on_train_epoch_start(self) -> None:
        self._epoch_metrics_logged = False

    def on_train_epoch_end(self) -> None:
        self.check_divergence()  # once an epoch at least (a host sync)
        self.log("train/loss_epoch", self.train_loss)
        self.log("train/acc", self.train_acc)
        self._epoch_metrics_logged = True  # a checkpoint saved from here on has no epoch left to resume

    def stop_diverged(self, what: str, step: Optional[int] = None) -> Divergence:
        """Stop training: ``what`` (the loss or the weights) went non-finite at ``step`` (default: this one)."""
        step = int(self.global_step) if step is None else step
        lr = self._recent_lrs.get(step, self._lr()) if self.step_guard is not None else self._lr()
        self.divergence = self.divergence or Divergence(step=step, lr=lr, what=what)
        self.trainer.should_stop = True
        return self.divergence

    def _predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation-time forward: the configured BN statistics and test-time augmentation."""
        with self._eval_context():
            logits = self(x)
            if self.cfg.tta == "flip" and x.dim() == 4:
                logits = (logits + self(x.flip(-1))) / 2
        return logits

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        x, y = batch
        logits = self._predict_logits(x)
        loss = self.evaluation_loss(logits, y)
        getattr(self, f"{split}_loss").update(loss)
        getattr(self, f"{split}_acc").update(logits, y)
        if split == "test":
            self.test_confusion.update(logits, y)

    def _log_evaluation(self, split: str) -> None:
        self.log(f"{split}/loss", getattr(self, f"{split}_loss"))
        self.log(f"{split}/acc", getattr(self, f"{split}_acc"), prog_bar=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")
        if self.run_dir is not None:  # in a fit's run directory (the same answer on every rank)
            matrix = self.test_confusion.compute().tolist()  # a collective under DDP: every rank computes
            write_json_file(self.run_dir / "confusion.json", {"class_names": self.class_names, "matrix": matrix})

    def predict_step(self, batch, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and the batch's labels (-1 where a label is unknown)."""
        return self._predict_logits(batch[0]).softmax(dim=-1), batch[1]

    # -- optimization ---------------------------------------------------------------------------
    def total_steps(self) -> tuple[int, int]:
        """(optimizer steps per epoch, in the whole run), from the datamodule and the trainer's limits."""
        trainer = self.trainer
        per_epoch = trainer.datamodule.steps_per_epoch(trainer.world_size, trainer.accumulate_grad_batches)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            per_epoch = max(1, min(per_epoch, limit // trainer.accumulate_grad_batches))
        elif limit is not None and limit < 1.0:
            per_epoch = max(1, int(per_epoch * limit))
        total = per_epoch * trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        if trainer.max_steps and trainer.max_steps > 0:
            total = min(total, trainer.max_steps) if total else trainer.max_steps
        return per_epoch, total

    def configure_optimizers(self):
        optim = self.cfg.optim
        lr = scaled_lr(optim.lr, optim.lr_scaling, self.cfg.data.batch_size, optim.reference_batch_size)
        if lr != optim.lr and verbose():  # a detail, shown with Lightning's own info lines
            say(
                f"lr {optim.lr:g} scaled ({optim.lr_scaling}) for global batch "
                f"{self.cfg.data.batch_size} / reference {optim.reference_batch_size}: {lr:g}"
            )
        groups = parameter_groups(self.model, optim.weight_decay, optim.no_decay_norm_bias)
        plan = optimizer_plan(optim)
        # torch's fused SGD/Adam/AdamW can skip a non-finite step on the device (step_guard.py)
        fused = (
            True
            if self._may_guard_on_device() and plan.target in FUSED_CAPABLE and "foreach" not in plan.kwargs
            else None
        )
        optimizer = plan.build(params=groups, lr=lr, weight_decay=optim.weight_decay, fused=fused)
        per_epoch, total = self.total_steps()
        scheduler = scheduler_plan(optim).build(
            optimizer=optimizer, total_steps=total, steps_per_epoch=per_epoch, lr=lr
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        checkpoint.setdefault("cnnkit", {}).update(
            schema_version=SCHEMA_VERSION,
            data_path=getattr(datamodule, "path", None),  # followed on resume
            train_metrics=None if self._epoch_metrics_logged else self._epoch_metric_states(),
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A run resumed mid-epoch continues the epoch's training metrics where they were."""
        saved = checkpoint.get("cnnkit", {}).get("train_metrics") or {}
        first_rank = first_process()
        for name, states in saved.items():
            metric = getattr(self, name)
            metric.reset()
            if first_rank:  # the saved states are summed over ranks: one rank holds them, the others start at 0
                metric.merge_state({key: value.to(self.device) for key, value in states.items()})

    def _epoch_metric_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """The epoch-so-far training metric states, summed over ranks (every rank saves; rank 0 writes)."""
        states = {}
        for name in TRAIN_METRICS:
            metric = getattr(self, name)
            with metric.sync_context():
                states[name] = {key: value.detach().cpu().clone() for key, value in metric.metric_state.items()}
        return states
