"""The report's figures tell the truth at a glance: diverged variants marked, no two variants alike,
axes on the finite range, no empty figure (the answer REPORT.md opens with: test_report_answer.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cnnkit.experiments.analyses import _unit, curves, eval_modes, final, landscape, loss_surface
from cnnkit.experiments.report import Run, build_report

MATRIX = {
    "model.act": ["sigmoid", "relu"],
    "model.norm": ["none", "bn_pre", "bn_post"],
    "optim.lr": [1, 5],
    "seed": [0, 1],
}


def fake_run(act, norm, lr, seed, diverged_at=None):
    variant = f"act={act}+norm={norm}+lr={lr}+seed={seed}"
    config = {
        "model": {"act": act, "norm": norm},
        "optim": {"lr": lr},
        "seed": seed,
        "matrix": MATRIX,
        "report": {"metric": "test/acc"},
    }
    steps = range(0, 100, 10)
    loss = [2.3 * math.exp(-s / 40) for s in steps]
    if diverged_at is not None:  # exploding before it diverged: 1e28 the step before
        loss = [v if s < diverged_at - 10 else 1e28 for s, v in zip(steps, loss)]
        status = {"status": "diverged", "step": diverged_at}
    else:
        status = {"status": "finished", "metrics": {"test/acc": 0.9 - 0.1 * (norm == "none") + 0.01 * seed}}
    metrics = [{"step": s, "train/loss_step": v} for s, v in zip(steps, loss) if diverged_at is None or s < diverged_at]
    return Run(
        path=Path(variant),
        variant=variant,
        group=variant.rsplit("+seed", 1)[0],
        config=config,
        status=status,
        metrics=metrics,
    )


@pytest.fixture
def groups():
    runs = [
        fake_run(act, norm, lr, seed, diverged_at=40 if (norm == "bn_post" and lr == 5) else None)
        for act in ("sigmoid", "relu")
        for norm in ("none", "bn_pre", "bn_post")
        for lr in (1, 5)
        for seed in (0, 1)
    ]
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


def test_many_variants_keep_clearly_different_colours_and_a_shared_colour_differs_in_line_and_marker():
    palette = set(map(tuple, _unit.pyplot().get_cmap("tab10").colors))
    many = {
        f"lr={i}": [
            Run(
                path=Path(str(i)),
                variant=f"lr={i}",
                group=f"lr={i}",
                status={},
                metrics=[],
                config={"optim": {"lr": i}, "matrix": {"optim.lr": list(range(14))}},
            )
        ]
        for i in range(14)
    }
    styles = _unit.variant_styles(many)
    assert {tuple(s["color"]) for s in styles.values()} <= palette  # never tab20's pale twins
    looks = [(tuple(s["color"]), s["linestyle"], s["marker"]) for s in styles.values()]
    assert len(set(looks)) == 14
    again = [look for look in looks if look[0] == looks[0][0]]  # lr=0 and lr=10 share a colour
    assert len(again) == 2 and again[0][1] != again[1][1] and again[0][2] != again[1][2]


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
        return [
            Run(
                path=Path(f"{norm}{i}"),
                variant=f"norm={norm}+seed={i}",
                group=f"norm={norm}",
                config={"report": {"metric": "test/acc"}},
                metrics=[],
                status={"status": "finished", "metrics": {"test/acc": acc}},
            )
            for i, acc in enumerate(accs)
        ]

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
        (run / "landscape.csv").write_text(
            "step,loss_min,loss_max,grad_change_min,grad_change_max,beta\n0,nan,nan,nan,nan,nan\n"
        )
    report = build_report(tmp_path / "recipe", log_to_wandb=False).read_text()
    assert "- *landscape: no figure" in report
    assert not (tmp_path / "recipe" / "landscape.png").exists()


def finished(variant, value, params=1000, metric="test/acc", extras=None):
    return Run(
        path=Path(variant),
        variant=variant,
        group=variant.rsplit("+seed", 1)[0],
        metrics=[],
        config={"report": {"metric": metric}},
        extras=extras or {},
        status={"status": "finished", "metrics": {metric: value, "params": params}},
    )


def errorbar_ends(ax):
    """(low, high) of every error bar drawn on ``ax``."""
    from matplotlib.container import ErrorbarContainer

    return [
        (segment[0][1], segment[1][1])
        for container in ax.containers
        if isinstance(container, ErrorbarContainer)
        for segment in container.lines[2][0].get_segments()
    ]


def test_final_fits_the_axis_to_close_values_and_shows_the_parameter_counts_that_differ(monkeypatch):
    """cnn_vs_fc: 0.977–0.990 on a 0–1 axis looked alike, and the point (FC has 4x the parameters) was missing."""
    groups = {
        "mlp": [finished("mlp+seed=0", 0.968, 536586), finished("mlp+seed=1", 0.986, 536586)],
        "cnn_max": [finished("cnn_max+seed=0", 0.984, 131178), finished("cnn_max+seed=1", 0.986, 131178)],
        "cnn_avg": [finished("cnn_avg+seed=0", 0.988, 131178), finished("cnn_avg+seed=1", 0.992, 131178)],
    }
    figures = capture(monkeypatch, final)
    final.ANALYSIS.figures([r for rs in groups.values() for r in rs], groups, Path("."))
    ax = figures[0].axes[0]
    low, high = ax.get_ylim()
    assert 0.9 < low < 0.964 and 0.994 < high < 1.01  # the data's range (mean ± std), not 0–1
    assert "the axis starts at" in ax.get_title()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks[0].endswith("536,586 parameters") and ticks[1].endswith("131,178 parameters")
    same = {"a": [finished("a", 0.5, 1000)], "b": [finished("b", 0.7, 1100)]}  # about one size: not shown
    final.ANALYSIS.figures([r for rs in same.values() for r in rs], same, Path("."))
    assert not any("parameters" in t.get_text() for t in figures[1].axes[0].get_xticklabels())
    assert figures[1].axes[0].get_ylim()[0] == 0  # values far apart: bars from zero


def test_an_error_bar_never_runs_past_the_metrics_range(monkeypatch):
    groups = {
        "high": [finished(f"high+seed={i}", v) for i, v in enumerate((1.0, 0.94, 1.0))],
        "low": [finished(f"low+seed={i}", v) for i, v in enumerate((0.02, 0.3, 0.01))],
    }
    figures = capture(monkeypatch, final)
    final.ANALYSIS.figures([r for rs in groups.values() for r in rs], groups, Path("."))
    ends = errorbar_ends(figures[0].axes[0])
    assert len(ends) == 2 and all(0 <= low and high <= 1.0 for low, high in ends)
    assert max(high for _, high in ends) == 1.0 and min(low for low, _ in ends) == 0.0  # cut, not dropped


def test_eval_modes_tells_running_from_precise_statistics(monkeypatch):
    modes = [
        {"stats": "running", "batch_size": 64, "accuracy": 0.973},
        {"stats": "batch", "batch_size": 1, "accuracy": 0.10},
        {"stats": "batch", "batch_size": 256, "accuracy": 0.97},
        {"stats": "precise", "batch_size": 64, "accuracy": 0.973},
    ]
    groups = {name: [finished(name, 0.97, extras={"eval_modes": {"eval_modes": modes}})] for name in ("m=0.1", "m=0.5")}
    figures = capture(monkeypatch, eval_modes)
    eval_modes.ANALYSIS.figures([r for rs in groups.values() for r in rs], groups, Path("."))
    ax = figures[0].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    running, precise = lines["m=0.1: running (any eval batch)"], lines["m=0.1: precise (any eval batch)"]
    assert running.get_linestyle() != precise.get_linestyle() and running.get_marker() != precise.get_marker()
    assert running.get_ydata()[0] == precise.get_ydata()[0]  # equal values: both markers still show
    assert len(figures[0].axes) == 2 and figures[0].axes[1].get_ylim()[1] < 0.99  # a panel zoomed on the top


def test_landscape_axes_say_what_they_measure(monkeypatch):
    rows = [
        {
            "step": s,
            "loss": 1.0,
            "loss_min": 0.9,
            "loss_max": 1.2,
            "grad_change_min": 0.1,
            "grad_change_max": 0.5,
            "beta": 3.0,
            "grad_norm": 1.0,
        }
        for s in (0, 25, 50)
    ]
    groups = {"norm=bn_pre": [finished("norm=bn_pre", 0.9, extras={"landscape": {"landscape": rows}})]}
    figures = capture(monkeypatch, landscape)
    landscape.ANALYSIS.figures(groups["norm=bn_pre"], groups, Path("."))
    labels = [ax.get_ylabel() for ax in figures[0].axes]
    assert labels[0].startswith("training-batch loss") and "‖" in labels[1] and labels[2].startswith("β")


def test_the_error_surface_says_its_condition_number_is_the_hessians_at_the_start(monkeypatch):
    surface = {"w1": [0, 1, 2], "w2": [0, 1, 2], "loss": [[1, 2, 3], [2, 3, 4], [3, 4, 5]]}
    path = [{"step": 0, "w1": 0.0, "w2": 0.0, "loss": 1.0}, {"step": 1, "w1": 1.0, "w2": 1.5, "loss": 0.5}]
    data = {"surface": surface, "trajectory": path, "hessian": {"condition_number": 1.02}}
    groups = {"norm=input": [finished("norm=input", 0.9, extras={"loss_surface": data})]}
    figures = capture(monkeypatch, loss_surface)
    loss_surface.ANALYSIS.figures(groups["norm=input"], groups, Path("."))
    ax = figures[0].axes[0]
    assert "condition number of the Hessian at the start (●): 1.02" in ax.get_title()
    start = [line for line in ax.get_lines() if line.get_label() == "start"]
    assert list(start[0].get_xydata()[0]) == [0.0, 0.0]
