"""The report's figures tell the truth at a glance: diverged variants marked, no two variants alike,
axes on the finite range, no empty figure, and REPORT.md opens with an answer from the numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cnnkit.analyses import _unit, curves, final
from cnnkit.report import Run, answer, build_report

MATRIX = {"model.act": ["sigmoid", "relu"], "model.norm": ["none", "bn_pre", "bn_post"], "optim.lr": [1, 5],
          "seed": [0, 1]}


def fake_run(act, norm, lr, seed, diverged_at=None):
    variant = f"act={act}+norm={norm}+lr={lr}+seed={seed}"
    config = {"model": {"act": act, "norm": norm}, "optim": {"lr": lr}, "seed": seed, "matrix": MATRIX,
              "report": {"metric": "test/acc"}}
    steps = range(0, 100, 10)
    loss = [2.3 * math.exp(-s / 40) for s in steps]
    if diverged_at is not None:  # exploding before it diverged: 1e28 the step before
        loss = [v if s < diverged_at - 10 else 1e28 for s, v in zip(steps, loss)]
        status = {"status": "diverged", "step": diverged_at}
    else:
        status = {"status": "finished", "metrics": {"test/acc": 0.9 - 0.1 * (norm == "none") + 0.01 * seed}}
    metrics = [{"step": s, "train/loss_step": v} for s, v in zip(steps, loss) if diverged_at is None or s < diverged_at]
    return Run(path=Path(variant), variant=variant, group=variant.rsplit("+seed", 1)[0], config=config,
               status=status, metrics=metrics)


@pytest.fixture
def groups():
    runs = [fake_run(act, norm, lr, seed, diverged_at=40 if (norm == "bn_post" and lr == 5) else None)
            for act in ("sigmoid", "relu") for norm in ("none", "bn_pre", "bn_post") for lr in (1, 5)
            for seed in (0, 1)]
    found: dict[str, list[Run]] = {}
    for run in runs:
        found.setdefault(run.group, []).append(run)
    return found


def capture(monkeypatch, module):
    figures = []
    monkeypatch.setattr(module, "save_figure", lambda fig, path: figures.append(fig) or path.name)
    return figures


def test_no_two_variants_share_colour_and_line_style(groups):
    styles = _unit.variant_styles(groups)
    looks = {(tuple(s["color"]), s["linestyle"], s["marker"]) for s in styles.values()}
    assert len(looks) == len(groups) == 12
    single = {name: [fake_run("relu", norm, 1, 0)] for name, norm in (("a", "none"), ("b", "bn_pre"))}
    for runs in single.values():  # single fits: no matrix in their configs
        runs[0].config.pop("matrix")
    assert len({tuple(s["color"]) for s in _unit.variant_styles(single).values()}) == 2


def test_curves_end_diverged_runs_at_divergence_and_keep_the_axis_finite(groups, monkeypatch):
    figures = capture(monkeypatch, curves)
    curves.ANALYSIS.figures([r for rs in groups.values() for r in rs], groups, Path("."))
    loss_axis = figures[0].axes[0]
    low, high = loss_axis.get_ylim()
    assert high < 10  # the 1e28 of the diverging runs does not flatten the others
    crosses = [line for line in loss_axis.lines if line.get_marker() == "x"]
    assert len(crosses) == 4  # one per diverged run (2 variants x 2 seeds), on the axis' edge
    assert all(line.get_xdata()[0] < 40 for line in crosses)
    assert "thin lines: other seeds" in figures[0]._suptitle.get_text()
    assert loss_axis.yaxis.get_major_formatter()(2.0, 0) == "2"  # not 2×10^0


def test_final_marks_diverged_variants_and_keeps_the_metric_axis(groups, monkeypatch):
    figures = capture(monkeypatch, final)
    final.ANALYSIS.figures([r for rs in groups.values() for r in rs], groups, Path("."))
    ax = figures[0].axes[0]
    assert ax.get_ylabel() == "test/acc"
    hatched = [p for p in ax.patches if p.get_hatch() == "//"]
    assert len(hatched) == 2  # the two all-diverged variants, drawn over the whole axis
    labels = [t.get_text() for t in ax.texts if "diverged" in t.get_text()]
    assert labels == ["diverged at step 40", "diverged at step 40"]


def test_a_value_label_is_never_crossed_by_its_error_bar(monkeypatch):
    """A short bar's value sits above its error bar; a tall bar's value is boxed over the bar's line."""
    def seeds(norm, accs):
        return [Run(path=Path(f"{norm}{i}"), variant=f"norm={norm}+seed={i}", group=f"norm={norm}",
                    config={"report": {"metric": "test/acc"}}, metrics=[],
                    status={"status": "finished", "metrics": {"test/acc": acc}}) for i, acc in enumerate(accs)]
    groups = {"norm=none": seeds("none", [0.05, 0.25]), "norm=bn_pre": seeds("bn_pre", [0.3, 0.7])}
    figures = capture(monkeypatch, final)
    final.ANALYSIS.figures([r for rs in groups.values() for r in rs], groups, Path("."))
    short, tall = figures[0].axes[0].texts
    assert short.get_text() == "0.150" and short.get_position()[1] >= 0.15 + 0.1414  # mean + std
    assert tall.get_text() == "0.500" and tall.get_bbox_patch() is not None
    assert tall.get_zorder() > max(line.get_zorder() for line in figures[0].axes[0].lines)


def test_a_figure_with_nothing_to_draw_is_not_written_and_the_report_says_so(tmp_path):
    for name in ("a", "b"):
        run = tmp_path / "recipe" / name
        run.mkdir(parents=True)
        (run / "status.json").write_text(json.dumps({"status": "finished", "metrics": {"test/acc": 0.5}}))
        (run / "config.yaml").write_text("report: {metric: test/acc}\n")
        (run / "metrics.csv").write_text("step,train/loss_step\n1,0.7\n")
        # a landscape probe whose every value diverged
        (run / "landscape.csv").write_text("step,loss_min,loss_max,grad_change_min,grad_change_max,beta\n"
                                           "0,nan,nan,nan,nan,nan\n")
    report = build_report(tmp_path / "recipe", log_to_wandb=False).read_text()
    assert "- *landscape: no figure" in report
    assert not (tmp_path / "recipe" / "landscape.png").exists()


def test_the_answer_comes_from_the_numbers(groups):
    text = answer(groups, "test/acc", "model.norm")
    assert text.startswith("The highest test/acc is 0.9050, by ") and "the lowest is 0.8050, by act=" in text
    assert "norm=none 0.8050; norm=bn_pre 0.9050; norm=bn_post 0.9050 (4 of 8 runs diverged)" in text
    assert "they differ most at " in text and text.endswith("; 4 of 24 runs diverged.")
    assert text.count(". ") == 1 and text.endswith(".")  # two sentences
