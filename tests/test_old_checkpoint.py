"""A checkpoint written by cnnkit before its modules moved (main at a12fe29) still loads and predicts the same.

The fixture is a 4-channel simple_cnn trained for 3 smoke steps on digits:
``fit --config recipes/quickstart.yaml --config configs/debug/smoke.yaml name=fixture
'model.backbone={name: simple_cnn, channels: [4], hidden: [8]}'``. The numbers below were measured on that
code; a module path pickled into the checkpoint, or a config key read differently, changes them.
"""

import shutil
from pathlib import Path

import pytest

import cnnkit

FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_before_reorg.ckpt"


@pytest.fixture
def old_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    shutil.copy(FIXTURE, path)
    return str(path)


def test_an_old_checkpoint_tests_to_the_numbers_it_gave_before(old_checkpoint):
    metrics = cnnkit.evaluate("test", old_checkpoint, overrides=["trainer.limit_test_batches=1.0"])
    assert metrics["test/acc"] == pytest.approx(0.10833333432674408, abs=1e-6)
    assert metrics["test/loss"] == pytest.approx(3.8106443881988525, abs=1e-5)


def test_an_old_checkpoint_predicts_the_probabilities_it_gave_before(old_checkpoint, tmp_path):
    predictions = cnnkit.predict(old_checkpoint, split="test", output=str(tmp_path / "p.csv"))
    assert predictions.rows[:3] == [
        ["test/0", "9", "0.5973", "1", "no", "9:0.5973 1:0.2007 6:0.1785"],
        ["test/1", "9", "0.7442", "4", "no", "9:0.7442 6:0.1990 1:0.0381"],
        ["test/2", "9", "0.7224", "8", "no", "9:0.7224 6:0.2163 1:0.0403"],
    ]
    assert predictions.accuracy() == (pytest.approx(0.10833333333333334), 360)
