"""``cnnkit report runs/<recipe>``: figures and a REPORT.md table from run directories.

Reads only local files — each variant's config.yaml, status.json, metrics.csv, confusion.json and
the files of whichever analyses (``cnnkit/analyses/``) its runs hold — so no W&B account is needed.
Each analysis adds its own tables and figures. Seeds of one variant (``+seed=N`` in its name) are
aggregated as mean ± std.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .analyses import units
from .analyses._unit import Analysis, mean_std, pyplot, read_csv, read_json, save_figure
from .atomic import atomic_write_text
from .errors import CnnkitError, first_line
from .matrix import group_name


@dataclass
class Run:
    path: Path
    variant: str
    group: str
    config: dict[str, Any]
    status: dict[str, Any]
    metrics: list[dict[str, float]]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def limits(self) -> list[str]:
        """The trainer.limit_* settings this run was made under (the smoke overlay sets them)."""
        trainer = self.config.get("trainer", {}) or {}
        return [f"{k}={v}" for k, v in trainer.items() if k.startswith("limit_") and v is not None]

    def series(self, key: str) -> tuple[list[float], list[float]]:
        rows = [r for r in self.metrics if key in r and r[key] is not None and "step" in r]
        return [r["step"] for r in rows], [r[key] for r in rows]

    def final(self, key: str) -> Optional[float]:
        value = self.status.get("metrics", {}).get(key)
        if value is None:
            values = self.series(key)[1]
            value = values[-1] if values else None
        return value


def load_runs(root: Path, analyses: Optional[list[Analysis]] = None) -> list[Run]:
    """The runs under ``root`` (a recipe's directory, or one run's), in name order."""
    import yaml

    if not root.is_dir():
        raise CnnkitError(f"report: '{root}' is not a directory; pass runs/<recipe name>")
    candidates = [root] if (root / "status.json").is_file() else sorted(p for p in root.iterdir() if p.is_dir())
    runs = []
    for path in candidates:
        if not (path / "status.json").is_file():
            continue
        config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
        run = Run(path=path, variant=path.name, group=group_name(path.name), config=config or {},
                  status=read_json(path / "status.json") or {}, metrics=read_csv(path / "metrics.csv"))
        run.extras["confusion"] = read_json(path / "confusion.json")
        for analysis in units() if analyses is None else analyses:
            run.extras[analysis.name] = analysis.load(path)
        runs.append(run)
    if not runs:
        raise CnnkitError(f"report: no runs under '{root}' (each run directory has a status.json); fit the recipe first")
    return sorted(runs, key=_matrix_order(runs))


def _matrix_order(runs: list[Run]):
    """Sort key: the recipe matrix's own order (keys as written, values as listed), else by name."""
    from omegaconf import OmegaConf

    from .matrix import combinations

    order: dict[str, int] = {}
    try:
        config = OmegaConf.create({**runs[0].config, "variant": runs[0].variant})
        order = {name: i for i, (name, _, _) in enumerate(combinations(config))}
    except Exception:  # an old or hand-made run directory: fall back to names
        pass
    return lambda run: (order.get(run.variant, len(order)), run.variant)


def _holding(analysis: Analysis, groups: dict[str, list[Run]]) -> dict[str, list[Run]]:
    """The variants, and within each the runs, that hold ``analysis``'s files."""
    held = {group: [r for r in group_runs if r.extras.get(analysis.name)] for group, group_runs in groups.items()}
    return {group: group_runs for group, group_runs in held.items() if group_runs}


def _groups(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def steps_to_target(run: Run, target: Optional[float], analyses: list[Analysis]) -> Optional[int]:
    """First step at which the training loss is at or below ``target`` (None: never), from the finest
    loss series at hand: an analysis's per-step one, else metrics.csv's logged steps."""
    if target is None:
        return None
    finer = (a.training_loss(run.extras[a.name]) for a in analyses if run.extras.get(a.name))
    points = next((series for series in finer if series), None) or list(zip(*run.series("train/loss_step")))
    for step, loss in points:
        if loss is not None and loss <= target:
            return int(step)
    return None


# -- figures ------------------------------------------------------------------------------------
def plot_curves(groups: dict[str, list[Run]], out: Path) -> Optional[str]:
    plt = pyplot()
    keys = [("train/loss_step", "training loss", True), ("val/acc", "validation accuracy", False)]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = False
    for ax, (key, label, log) in zip(axes, keys):
        for group, runs in groups.items():
            series = [r.series(key) for r in runs]
            series = [s for s in series if s[0]]
            if not series:
                continue
            steps, values = series[0]
            line, = ax.plot(steps, values, label=group, lw=1.2)
            for other_steps, other_values in series[1:]:
                ax.plot(other_steps, other_values, color=line.get_color(), lw=0.6, alpha=0.5)
            drawn = True
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
    if not drawn:
        plt.close(fig)
        return None
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle("curves per variant (thin lines: other seeds)")
    return save_figure(fig, out / "curves.png")


def plot_final(groups: dict[str, list[Run]], metric: str, out: Path) -> Optional[str]:
    plt = pyplot()
    names, means, stds = [], [], []
    for group, runs in groups.items():
        values = [r.final(metric) for r in runs if r.status.get("status") == "finished"]
        values = [v for v in values if v is not None]
        names.append(group)
        means.append(statistics.mean(values) if values else 0.0)
        stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
    if not any(means):
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(metric + " (diverged runs: 0)")
    ax.set_ylim(0, 1.05 if metric.endswith("acc") else None)
    return save_figure(fig, out / "final.png")


def plot_confusion(run: Run, out: Path) -> Optional[str]:
    confusion = run.extras.get("confusion")
    if not confusion:
        return None
    plt = pyplot()
    matrix = confusion["matrix"]
    names = confusion["class_names"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"test confusion: {run.variant}", fontsize=9)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return save_figure(fig, out / "confusion.png")


# -- the report ---------------------------------------------------------------------------------
def build_report(root: Path | str, log_to_wandb: bool = True) -> Path:
    """Write figures and REPORT.md into ``root`` (and add the figures to the runs' W&B runs); return REPORT.md."""
    root = Path(root)
    analyses = units()
    runs = load_runs(root, analyses)
    # variants made under the smoke overlay or any trainer.limit_* say so wherever they are shown
    groups = {(f"{name} [limited]" if any(r.limits for r in group) else name): group
              for name, group in _groups(runs).items()}
    report_cfg = runs[0].config.get("report", {}) or {}
    metric = report_cfg.get("metric", "test/acc")
    target = report_cfg.get("target_loss")
    figures = [plot_curves(groups, root), plot_final(groups, metric, root)]
    finished = [r for r in runs if r.status.get("status") == "finished" and r.final(metric) is not None]
    best = max(finished, key=lambda r: r.final(metric)) if finished else None
    figures.append(plot_confusion(best, root) if best else None)
    held = [(analysis, _holding(analysis, groups)) for analysis in analyses]
    held = [(analysis, held_groups) for analysis, held_groups in held if held_groups]
    for analysis, held_groups in held:
        figures += analysis.figures([r for r in runs if r.extras.get(analysis.name)], held_groups, root)

    lines = [f"# Report: {root.name}", "", f"{len(runs)} runs in {len(groups)} variants, from `{root}`.", ""]
    limited = [r for r in runs if r.limits]
    if limited:
        lines += [f"**{len(limited)} of {len(runs)} runs are limited** ({', '.join(limited[0].limits)}, e.g. the "
                  f"smoke overlay): marked [limited]; their numbers are a smoke test, not the experiment's result.", ""]
    header = ["variant", "runs", "final train loss", "val acc", "test acc", "params"]
    if target is not None:
        header.append(f"steps to loss ≤ {target:g}")
    header.append("status")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, group_runs in groups.items():
        statuses = [r.status.get("status", "?") for r in group_runs]
        diverged = [f"diverged at step {r.status.get('step')}" for r in group_runs
                    if r.status.get("status") == "diverged"]
        done = [r for r in group_runs if r.status.get("status") == "finished"]  # diverged runs have no finals
        params = next((r.final("params") for r in done if r.final("params")), None)
        cells = [group, str(len(group_runs)), mean_std([r.final("train/loss_epoch") for r in done]),
                 mean_std([r.final("val/acc") for r in done]), mean_std([r.final("test/acc") for r in done]),
                 str(int(params)) if params else "-"]
        if target is not None:
            steps = [steps_to_target(r, target, analyses) for r in group_runs]
            cells.append(", ".join("never" if s is None else str(s) for s in steps))
        cells.append("; ".join(diverged) if diverged else ", ".join(sorted(set(statuses))))
        lines.append("| " + " | ".join(cells) + " |")
    for analysis, held_groups in held:
        lines += analysis.tables([r for r in runs if r.extras.get(analysis.name)], held_groups)
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in figures if name]
    out = root / "REPORT.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    if log_to_wandb:
        log_figures_to_wandb(runs, [root / name for name in figures if name])
    return out


def log_figures_to_wandb(runs: list[Run], figures: list[Path]) -> int:
    """Add the report's figures to every W&B run of the recipe (those with a stored run id).

    Each run is resumed by its id in the mode it was trained in; offline, the figures land in a
    new offline directory with the same id, so ``wandb sync`` merges them into that run.
    """
    import sys

    from .loggers import WANDB_ID_FILE, wandb_mode

    targets = [r for r in runs if (r.path / WANDB_ID_FILE).is_file()]
    if not targets or not figures:
        return 0
    import wandb

    for run in targets:
        wb = (run.config.get("logger") or {}).get("wandb") or {}
        mode = wandb_mode(wb.get("mode", "auto"))
        if mode == "disabled":
            continue
        try:
            with wandb.init(id=(run.path / WANDB_ID_FILE).read_text().strip(), resume="allow", mode=mode,
                            project=wb.get("project"), entity=wb.get("entity"), dir=str(run.path),
                            settings=wandb.Settings(init_timeout=wb.get("init_timeout", 60))) as session:
                session.log({f"report/{path.stem}": wandb.Image(str(path)) for path in figures})
        except Exception as err:  # the local report is written; W&B is a bonus
            print(f"cnnkit: could not add the report's figures to W&B run {run.variant}: {type(err).__name__}: "
                  f"{first_line(err)}", file=sys.stderr)
            return 0
    return len(targets)
