"""Evaluate the trained weights under several BatchNorm statistics and eval batch sizes (course E4).

After the fit's test, the test split is evaluated again for each mode: ``running`` (moving
averages, as deployed), ``batch`` (each eval batch's own statistics — a prediction then depends on
the rest of its batch) and ``precise`` (exact statistics recomputed over training batches), each
at its ``batch_size``. Results go to ``<run>/eval_modes.json`` and the loggers.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any, Optional, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from ..layers.batch_stats import batch_statistics
from .output import run_path, write_json
from .precise_bn import recompute_bn_statistics

STATS = ("running", "batch", "precise")


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader: DataLoader, num_classes: int, stats: str,
             device: torch.device) -> float:
    model.eval()
    predictions, targets = [], []
    context = batch_statistics(model) if stats == "batch" else nullcontext()
    with context:
        for x, y in loader:
            predictions.append(model(x.to(device)).argmax(-1).cpu())
            targets.append(y)
    return float(multiclass_accuracy(torch.cat(predictions), torch.cat(targets), num_classes=num_classes,
                                     average="micro"))


class EvalModes(L.Callback):
    def __init__(self, modes: Sequence[Any] = ("running", {"stats": "batch", "batch_size": 1},
                                               {"stats": "batch", "batch_size": 8},
                                               {"stats": "batch", "batch_size": 256}, "precise"),
                 precise_batches: int = 100):
        self.modes = [self._parse(m) for m in modes]
        self.precise_batches = precise_batches
        self.results: list[dict[str, Any]] = []

    @staticmethod
    def _parse(mode: Any) -> dict[str, Any]:
        spec = {"stats": mode} if isinstance(mode, str) else dict(mode)
        if spec.get("stats") not in STATS or set(spec) - {"stats", "batch_size"}:
            raise ValueError(f"eval_modes: each mode is one of {', '.join(STATS)} or "
                             f"{{stats: ..., batch_size: N}}, got {mode!r}")
        return spec

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if run_path(trainer) is None:
            return
        datamodule = trainer.datamodule
        test_set = datamodule.load().get("test")
        default_batch = datamodule.cfg.eval_batch_size or datamodule.cfg.batch_size
        num_classes = len(pl_module.class_names)
        precise_model: Optional[torch.nn.Module] = None
        self.results = []
        for mode in self.modes:
            batch_size = int(mode.get("batch_size") or default_batch)
            model = pl_module.model
            if mode["stats"] == "precise":
                if precise_model is None:
                    precise_model = copy.deepcopy(pl_module.model)
                    batches = (b[0].to(pl_module.device) for b in datamodule.train_dataloader())
                    recompute_bn_statistics(precise_model, batches, self.precise_batches)
                model = precise_model
            loader = DataLoader(test_set, batch_size=batch_size, shuffle=False)
            value = accuracy(model, loader, num_classes, mode["stats"], pl_module.device)
            self.results.append({"stats": mode["stats"], "batch_size": batch_size, "accuracy": value})
        write_json(trainer, "eval_modes.json", self.results)
        for logger in trainer.loggers:
            logger.log_metrics({f"eval_modes/{r['stats']}@{r['batch_size']}": r["accuracy"] for r in self.results},
                               step=trainer.global_step)
