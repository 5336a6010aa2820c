"""``decide``: what a fit may do with a run directory, from what the directory holds (plain inputs, no files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnkit.errors import CnnkitError
from cnnkit.runs.run_dir import CONTINUE, KEEP, NEW, Found, decide

PATH = Path("runs/r/v")
EPOCHS = ("trainer.max_epochs", 3, 5)  # (key, stored, wanted)


def found(state=None, last=True, diffs=(), **more) -> Found:
    status = {"status": state, **more.pop("status", {})} if state else {}
    return Found(PATH, has_contents=True, status=status, has_last_checkpoint=last, diffs=list(diffs), **more)


@pytest.mark.parametrize("resume, expected", [(False, NEW), (True, CONTINUE)])
def test_an_empty_directory_starts_or_continues(resume, expected):
    assert decide(Found(PATH), resume=resume, overwrite=False) == expected


def test_overwrite_always_starts_anew():
    assert decide(found("finished", diffs=[("optim.lr", 0.1, 0.2)]), resume=True, overwrite=True) == NEW


def test_a_finished_run_of_the_same_config_and_weights_is_kept():
    assert decide(found("finished"), resume=False, overwrite=False) == KEEP
    assert decide(found("diverged"), resume=False, overwrite=False) == KEEP


def test_a_finished_run_of_another_config_or_other_weights_is_refused_naming_them():
    with pytest.raises(CnnkitError, match="will not reuse it for this one: optim.lr 0.1 → 0.2"):
        decide(found("finished", diffs=[("optim.lr", 0.1, 0.2)]), resume=False, overwrite=False)
    with pytest.raises(CnnkitError, match="--init-from"):
        decide(found("finished"), resume=False, overwrite=False, init_from="other.ckpt")
    assert (
        decide(found("finished", status={"init_from": "w.ckpt"}), resume=False, overwrite=False, init_from="w.ckpt")
        == KEEP
    )


def test_a_running_status_is_followed_by_other_ranks_and_refused_while_its_process_lives():
    running = found("running", alive_elsewhere=True, status={"pid": 4321})
    assert decide(running, resume=False, overwrite=False, first_rank=False) == NEW
    assert decide(running, resume=True, overwrite=False, first_rank=False) == CONTINUE
    with pytest.raises(CnnkitError, match="process 4321"):
        decide(running, resume=True, overwrite=False)


@pytest.mark.parametrize(
    "state, label", [("running", "a killed"), ("failed", "a failed"), ("interrupted", "an interrupted")]
)
def test_an_unfinished_run_resumes_or_starts_over_only_when_nothing_was_saved(state, label):
    assert decide(found(state), resume=True, overwrite=False) == CONTINUE
    assert decide(found(state, last=False), resume=False, overwrite=False) == NEW
    with pytest.raises(CnnkitError, match=f"already holds {label} run; resume it with --ckpt last"):
        decide(found(state), resume=False, overwrite=False)


def test_a_diverged_run_is_not_resumed_and_the_refusal_names_its_last_good_weights():
    with pytest.raises(CnnkitError, match="--init-from runs/r/v/checkpoints/last.ckpt --overwrite"):
        decide(found("diverged", status={"last_good": "runs/r/v/checkpoints/last.ckpt"}), resume=True, overwrite=False)


def test_resuming_with_a_changed_result_key_is_refused_but_how_to_run_it_may_change():
    with pytest.raises(CnnkitError, match="will not resume it with"):
        decide(found("failed", diffs=[("optim.lr", 0.1, 0.2)]), resume=True, overwrite=False)
    assert decide(found("failed", diffs=[("trainer.devices", 1, 2)]), resume=True, overwrite=False) == CONTINUE


def test_a_finished_run_trains_on_only_when_longer_and_its_schedule_allows():
    assert decide(found("finished", diffs=[EPOCHS]), resume=True, overwrite=False) == CONTINUE
    assert decide(found("finished", diffs=[("trainer.max_epochs", 5, 3)]), resume=True, overwrite=False) == KEEP
    assert decide(found("finished"), resume=True, overwrite=False) == KEEP
    with pytest.raises(CnnkitError, match="optim.scheduler=cosine is laid out over the run's length"):
        decide(found("finished", diffs=[EPOCHS], length_bound_by="cosine"), resume=True, overwrite=False)
    with pytest.raises(CnnkitError, match="optim.scheduler=cosine"):  # an unfinished run's length changes too
        decide(
            found("interrupted", diffs=[("trainer.max_epochs", 5, 3)], length_bound_by="cosine"),
            resume=True,
            overwrite=False,
        )
