"""The best checkpoint on a validation split small enough to tie: a tie goes to the lower val/loss, then
to the later epoch, never to the first (least-trained) of equal scores; one epoch count (from 1) in
file names, status.json and the summary, which says which weights its test metrics are of."""

from __future__ import annotations

import csv
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import cnnkit
from cnnkit.api import FitResult
from cnnkit.console import summary_block
from cnnkit.training.callbacks.best_checkpoint import BestCheckpoint

from .conftest import tiny_config

ACC = [0.5, 0.9, 0.9, 0.8, 0.9]  # epochs 2, 3 and 5 tie


class ScriptedValidation(L.LightningModule):
    """One training step an epoch; validation reports the given val/acc and val/loss, epoch by epoch."""

    def __init__(self, acc: list[float], loss: list[float]):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.acc, self.loss = acc, loss

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/acc", self.acc[self.current_epoch])
        self.log("val/loss", self.loss[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit_scripted(checkpoint: ModelCheckpoint, loss: list[float]) -> ModelCheckpoint:
    data = DataLoader(TensorDataset(torch.zeros(2, 2)), batch_size=2)
    trainer = L.Trainer(
        max_epochs=len(ACC),
        callbacks=[checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(ScriptedValidation(ACC, loss), train_dataloaders=data, val_dataloaders=data)
    return checkpoint


def best(tmp_path, save_top_k: int = 1) -> BestCheckpoint:
    return BestCheckpoint(str(tmp_path), monitor="val/acc", mode="max", save_top_k=save_top_k, every_n_epochs=1)


def kept(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.glob("*.ckpt"))


@pytest.mark.parametrize(
    "loss, epoch",
    [
        ([1.0, 0.5, 0.2, 0.4, 0.3], 3),  # the tie with the lowest val/loss
        ([1.0, 0.3, 0.3, 0.4, 0.3], 5),  # val/loss ties too: the latest
    ],
)
def test_a_tie_goes_to_the_lower_val_loss_then_the_later_epoch(tmp_path, loss, epoch):
    lightning = fit_scripted(ModelCheckpoint(str(tmp_path / "lightning"), monitor="val/acc", mode="max"), loss)
    assert lightning.best_model_path.endswith("epoch=1-step=2.ckpt")  # Lightning's own: the first of the ties
    ours = fit_scripted(best(tmp_path / "ours"), loss)
    assert ours.best_epoch == epoch and float(ours.best_model_score) == pytest.approx(0.9)
    assert kept(tmp_path / "ours") == [f"best-epoch{epoch:03d}-step{epoch:06d}.ckpt"]  # one step an epoch
    assert torch.load(ours.best_model_path, weights_only=True)["epoch"] == epoch - 1  # Lightning counts from 0


def test_the_top_k_keep_the_best_by_the_same_ranking_and_a_resume_remembers_it(tmp_path):
    ours = fit_scripted(best(tmp_path, save_top_k=2), [1.0, 0.5, 0.2, 0.4, 0.3])
    # epoch 5 (0.9, loss 0.3) displaced epoch 2 (0.9, loss 0.5); epoch 3 (loss 0.2) is the best
    assert kept(tmp_path) == ["best-epoch003-step000003.ckpt", "best-epoch005-step000005.ckpt"]
    assert ours.best_epoch == 3 and ours.kth_best_model_path.endswith("best-epoch005-step000005.ckpt")
    stored = torch.load(ours.best_model_path, weights_only=True)["callbacks"]
    assert ModelCheckpoint(str(tmp_path), monitor="val/acc", mode="max", save_top_k=2).state_key in stored
    resumed = best(tmp_path, save_top_k=2)
    resumed.load_state_dict(ours.state_dict())
    assert resumed.best_epoch == 3 and resumed.best_model_path == ours.best_model_path


def test_a_fit_names_one_epoch_count_everywhere_and_the_weights_its_test_is_of(tmp_path):
    result = cnnkit.fit(tiny_config("trainer.max_epochs=4"))
    with open(result.run_dir / "metrics.csv") as handle:
        validated = [row for row in csv.DictReader(handle) if row.get("val/acc")]
    # the truth from what was logged: the highest val/acc, then the lowest val/loss, then the latest
    expected = max(validated, key=lambda r: (float(r["val/acc"]), -float(r["val/loss"]), int(r["epoch"])))
    epoch = int(expected["epoch"]) + 1  # Lightning's metrics.csv counts from 0
    status = json.loads((result.run_dir / "status.json").read_text())
    assert (status["best_epoch"], status["epochs"]) == (result.best_epoch, result.epochs) == (epoch, 4)
    assert result.best_checkpoint.name.startswith(f"best-epoch{epoch:03d}-")
    summary = summary_block(result).splitlines()
    assert summary[1].startswith(f"  test (best checkpoint by val/acc, epoch {epoch} of 4): test/acc ")
    kept_run = cnnkit.fit(tiny_config("trainer.max_epochs=4"))  # the same config again: kept, the same words
    assert kept_run.kept and summary_block(kept_run).splitlines()[1] == summary[1]


def test_without_a_best_checkpoint_the_test_is_of_the_last_weights(tmp_path):
    result = FitResult(
        status="finished", run_dir=tmp_path / "q" / "default", metrics={"test/acc": 0.5}, best_by="val/acc", epochs=3
    )
    assert summary_block(result).splitlines()[1] == "  test (the weights after epoch 3): test/acc 0.5000"
