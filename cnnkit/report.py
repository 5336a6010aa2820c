"""``cnnkit report runs/<recipe>``: figures and a REPORT.md table from run directories.

Reads only local files — each variant's config.yaml, status.json, metrics.csv and what the
analysis callbacks wrote (trajectory/surface, activations, landscape, eval_modes, hessian,
confusion) — so no W&B account is needed. Seeds of one variant (``+seed=N`` in its name) are
aggregated as mean ± std.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import CnnkitError, first_line
from .matrix import group_name
from .atomic import atomic_write_text


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


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        rows = []
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value) if value not in ("", None) else None
                except ValueError:
                    parsed[key] = None
            rows.append(parsed)
        return rows


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def load_runs(root: Path) -> list[Run]:
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
                  status=_read_json(path / "status.json") or {}, metrics=_read_csv(path / "metrics.csv"))
        for name in ("trajectory", "activations", "landscape"):
            run.extras[name] = _read_csv(path / f"{name}.csv")
        for name in ("surface", "eval_modes", "hessian", "confusion"):
            run.extras[name] = _read_json(path / f"{name}.json")
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


def _groups(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def _mean_std(values: list[float], each: bool = False) -> str:
    """mean ± std over seeds; ``each`` also lists the values (for claims that must hold in every seed)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    text = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    return text + f" ({', '.join(f'{v:.3g}' for v in values)})" if each else text


def steps_to_target(run: Run, target: Optional[float]) -> Optional[int]:
    """First step at which the training loss is at or below ``target`` (None: never)."""
    if target is None:
        return None
    trajectory = run.extras.get("trajectory") or []
    points = [(r["step"], r["loss"]) for r in trajectory] or list(zip(*run.series("train/loss_step")))
    for step, loss in points:
        if loss is not None and loss <= target:
            return int(step)
    return None


def median_range(run: Run) -> Optional[float]:
    """How far the 50th percentile of the probed unit's input moved over training (E2)."""
    rows = run.extras.get("activations") or []
    values = [r["p50"] for r in rows if r.get("p50") is not None]
    return max(values) - min(values) if values else None


def landscape_means(run: Run) -> Optional[dict[str, float]]:
    rows = run.extras.get("landscape") or []
    finite = [r for r in rows if all(v is not None and math.isfinite(v) for v in r.values())]
    if not finite:
        return None
    return {"loss_range": statistics.mean(r["loss_max"] - r["loss_min"] for r in finite),
            "grad_change": statistics.mean(r["grad_change_max"] for r in finite),
            "beta": statistics.mean(r["beta"] for r in finite)}


# -- figures ------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path.name


def plot_curves(groups: dict[str, list[Run]], out: Path) -> Optional[str]:
    plt = _plt()
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
    return _save(fig, out / "curves.png")


def plot_final(groups: dict[str, list[Run]], metric: str, out: Path) -> Optional[str]:
    plt = _plt()
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
    return _save(fig, out / "final.png")


def plot_confusion(run: Run, out: Path) -> Optional[str]:
    confusion = run.extras.get("confusion")
    if not confusion:
        return None
    plt = _plt()
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
    return _save(fig, out / "confusion.png")


def plot_surfaces(runs: list[Run], out: Path) -> Optional[str]:
    runs = [r for r in runs if r.extras.get("surface") and r.extras.get("trajectory")]
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.8), squeeze=False)
    for ax, run in zip(axes[0], runs):
        surface = run.extras["surface"]
        contours = ax.contour(surface["w1"], surface["w2"], surface["loss"], levels=25, cmap="viridis")
        ax.clabel(contours, fontsize=6)
        path = run.extras["trajectory"]
        ax.plot([r["w1"] for r in path], [r["w2"] for r in path], "r.-", ms=2, lw=0.8, label="descent path")
        hessian = run.extras.get("hessian") or {}
        kappa = hessian.get("condition_number")
        ax.set_title(f"{run.variant}" + (f" (condition number {kappa:,.0f})" if kappa else ""), fontsize=9)
        ax.set_xlabel("w1")
        ax.set_ylabel("w2")
        ax.legend(fontsize=7)
    return _save(fig, out / "surface.png")


def plot_activations(groups: dict[str, list[Run]], out: Path) -> Optional[str]:
    runs = [runs[0] for runs in groups.values() if runs[0].extras.get("activations")]
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], runs):
        rows = run.extras["activations"]
        steps = [r["step"] for r in rows]
        keys = sorted((k for k in rows[0] if k.startswith("p")), key=lambda k: float(k[1:]))
        ax.fill_between(steps, [r[keys[0]] for r in rows], [r[keys[-1]] for r in rows], alpha=0.3,
                        label=f"{keys[0][1:]}–{keys[-1][1:]}th percentile")
        ax.plot(steps, [r["p50"] for r in rows], label="median")
        ax.set_title(run.variant, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("input to one unit's activation")
    return _save(fig, out / "activations.png")


def plot_landscape(groups: dict[str, list[Run]], out: Path) -> Optional[str]:
    runs = [runs[0] for runs in groups.values() if runs[0].extras.get("landscape")]
    if not runs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for run in runs:
        rows = [r for r in run.extras["landscape"] if all(v is not None and math.isfinite(v) for v in r.values())]
        steps = [r["step"] for r in rows]
        band = axes[0].fill_between(steps, [r["loss_min"] for r in rows], [r["loss_max"] for r in rows], alpha=0.35,
                                    label=run.variant)
        color = band.get_facecolor()[0]
        axes[1].fill_between(steps, [r["grad_change_min"] for r in rows], [r["grad_change_max"] for r in rows],
                             alpha=0.35, color=color, label=run.variant)
        axes[2].plot(steps, [r["beta"] for r in rows], color=color, label=run.variant)
    for ax, title in zip(axes, ("loss along the gradient (range over step sizes)",
                                "gradient predictiveness: ‖∇L(θ−ηg) − ∇L(θ)‖",
                                "effective β-smoothness")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    return _save(fig, out / "landscape.png")


def plot_eval_modes(groups: dict[str, list[Run]], out: Path) -> Optional[str]:
    runs = [runs for runs in groups.values() if runs[0].extras.get("eval_modes")]
    if not runs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for group_runs in runs:
        table: dict[str, dict[int, list[float]]] = {}
        for run in group_runs:
            for item in run.extras.get("eval_modes") or []:
                table.setdefault(item["stats"], {}).setdefault(item["batch_size"], []).append(item["accuracy"])
        for stats, by_size in table.items():
            sizes = sorted(by_size)
            ax.plot(sizes, [statistics.mean(by_size[s]) for s in sizes], "o-",
                    label=f"{group_runs[0].group}: {stats}")
    ax.set_xscale("log")
    ax.set_xlabel("eval batch size")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    return _save(fig, out / "eval_modes.png")


# -- the report ---------------------------------------------------------------------------------
def build_report(root: Path | str, log_to_wandb: bool = True) -> Path:
    """Write figures and REPORT.md into ``root`` (and add the figures to the runs' W&B runs); return REPORT.md."""
    root = Path(root)
    runs = load_runs(root)
    # variants made under the smoke overlay or any trainer.limit_* say so wherever they are shown
    groups = {(f"{name} [limited]" if any(r.limits for r in group) else name): group
              for name, group in _groups(runs).items()}
    report_cfg = runs[0].config.get("report", {}) or {}
    metric = report_cfg.get("metric", "test/acc")
    target = report_cfg.get("target_loss")
    figures = [plot_curves(groups, root), plot_final(groups, metric, root)]
    finished = [r for r in runs if r.status.get("status") == "finished" and r.final(metric) is not None]
    best = max(finished, key=lambda r: r.final(metric)) if finished else None
    figures += [plot_confusion(best, root) if best else None, plot_surfaces(runs, root),
                plot_activations(groups, root), plot_landscape(groups, root), plot_eval_modes(groups, root)]

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
        cells = [group, str(len(group_runs)), _mean_std([r.final("train/loss_epoch") for r in done]),
                 _mean_std([r.final("val/acc") for r in done]), _mean_std([r.final("test/acc") for r in done]),
                 str(int(params)) if params else "-"]
        if target is not None:
            steps = [steps_to_target(r, target) for r in group_runs]
            cells.append(", ".join("never" if s is None else str(s) for s in steps))
        cells.append("; ".join(diverged) if diverged else ", ".join(sorted(set(statuses))))
        lines.append("| " + " | ".join(cells) + " |")
    lines += _extra_tables(runs, groups)
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


def _extra_tables(runs: list[Run], groups: dict[str, list[Run]]) -> list[str]:
    lines: list[str] = []
    hessians = [(r.variant, r.extras["hessian"]) for r in runs if r.extras.get("hessian")]
    if hessians:
        lines += ["", "## Hessian at the start", "", "| run | λmax | λmin | condition number | lr used |",
                  "|---|---|---|---|---|"]
        lines += [f"| {v} | {h['lambda_max']:.4g} | {h['lambda_min']:.4g} | {h['condition_number']:,.1f} | "
                  f"{h['lr'] if h['lr'] is None else format(h['lr'], '.4g')} |" for v, h in hessians]
    ranges = [(r.variant, median_range(r)) for r in runs if median_range(r) is not None]
    if ranges:
        lines += ["", "## Drift of the median pre-activation input over training (max − min of the 50th percentile)",
                  "", "| run | range of the median |", "|---|---|"]
        lines += [f"| {v} | {value:.4f} |" for v, value in ranges]
    scapes = [(g, [landscape_means(r) for r in rs]) for g, rs in groups.items() if any(landscape_means(r) for r in rs)]
    if scapes:
        lines += ["", "## Landscape probes, averaged over the run (mean ± std over seeds, then each seed)", "",
                  "| variant | loss range along −g | max gradient change | effective β |", "|---|---|---|---|"]
        for group, values in scapes:
            values = [v for v in values if v]
            lines.append(f"| {group} | {_mean_std([v['loss_range'] for v in values], True)} | "
                         f"{_mean_std([v['grad_change'] for v in values], True)} | "
                         f"{_mean_std([v['beta'] for v in values], True)} |")
    modes = [(g, rs) for g, rs in groups.items() if rs[0].extras.get("eval_modes")]
    if modes:
        # columns by position: a mode whose batch size follows data.batch_size differs per variant
        width = max(len(r.extras.get("eval_modes") or []) for _, rs in modes for r in rs)
        labels = []
        for i in range(width):
            entries = [r.extras["eval_modes"][i] for _, rs in modes for r in rs if len(r.extras["eval_modes"]) > i]
            sizes = {e["batch_size"] for e in entries}
            labels.append(f"{entries[0]['stats']} @ " + (str(sizes.pop()) if len(sizes) == 1 else "training batch"))
        lines += ["", "## Test accuracy by BN statistics and eval batch size", "",
                  "| variant | " + " | ".join(labels) + " |", "|---|" + "---|" * width]
        for group, group_runs in modes:
            cells = [_mean_std([r.extras["eval_modes"][i]["accuracy"] for r in group_runs
                                if len(r.extras.get("eval_modes") or []) > i]) for i in range(width)]
            lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return lines
