"""``cnnkit report runs/<recipe>``: figures and a REPORT.md table from run directories.

Reads only local files — each variant's config.yaml, status.json, metrics.csv and the files of
whichever analyses (``cnnkit/analyses/``) its runs hold — so no W&B account is needed. REPORT.md is
the recipe's question, an answer from the numbers and one table of every variant; each analysis
adds its own tables and figures (the training curves and the headline metric per variant are
analyses too, of the files every run writes). Seeds of one variant (``+seed=N`` in its name) are
aggregated as mean ± std.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .analyses import units
from .analyses._unit import Analysis, mean_std, read_csv, read_json
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


# -- the answer ------------------------------------------------------------------------------------
def _score(runs: list[Run], metric: str) -> Optional[float]:
    values = [r.final(metric) for r in runs if r.status.get("status") == "finished"]
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(values) if values else None


def answer(groups: dict[str, list[Run]], metric: str, compare: Optional[str]) -> str:
    """Two sentences from the numbers: the best and the worst variant; then, for a matrix of several
    keys, the compared key's values averaged over the other settings and where they differ most, or,
    for one key, the lead of the best over the next against the spread over seeds."""
    from .analyses._unit import matrix_values

    scores = {group: _score(runs, metric) for group, runs in groups.items()}
    ranked = sorted(((s, g) for g, s in scores.items() if s is not None), reverse=True)
    if not ranked:
        return f"No run finished, so there is no {metric} to compare."
    first = (f"The highest {metric} is {ranked[0][0]:.4f}, by {ranked[0][1]}" +
             (f"; the lowest is {ranked[-1][0]:.4f}, by {ranked[-1][1]}." if len(ranked) > 1 else "."))
    diverged = sum(r.status.get("status") == "diverged" for rs in groups.values() for r in rs)
    lost = f"; {diverged} of {sum(len(rs) for rs in groups.values())} runs diverged" if diverged else ""
    values = {group: matrix_values(runs[0]) for group, runs in groups.items()}
    keys = [k for k in dict.fromkeys(k for v in values.values() for k in v) if len({v[k] for v in values.values()}) > 1]
    key = compare if compare in keys else (keys[0] if keys else None)
    if key is None or len(keys) == 1:
        if len(ranked) < 2:
            return first[:-1] + lost + "."
        spread = [r.final(metric) for r in groups[ranked[0][1]] if r.status.get("status") == "finished"]
        spread = [v for v in spread if v is not None]
        noise = f" (its seeds spread ±{statistics.stdev(spread):.4f})" if len(spread) > 1 else ""
        lead = ranked[0][0] - ranked[1][0]
        leads = (f"ties with the next, {ranked[1][1]}" if lead < 5e-5 else
                 f"leads the next, {ranked[1][1]}, by {lead:.4f}")
        return f"{first} {ranked[0][1]} {leads}{noise}{lost}."
    name = key.rsplit(".", 1)[-1]
    parts = []
    for value in dict.fromkeys(v[key] for v in values.values()):
        members = [g for g, v in values.items() if v[key] == value]
        scored = [scores[g] for g in members if scores[g] is not None]
        failed = sum(r.status.get("status") == "diverged" for g in members for r in groups[g])
        shown = f"{statistics.mean(scored):.4f}" if scored else "no finished run"
        parts.append(f"{name}={_plain(value)} {shown}" +
                     (f" ({failed} of {sum(len(groups[g]) for g in members)} runs diverged)" if failed else ""))
    settings: dict[tuple, dict[str, Optional[float]]] = {}
    for group, v in values.items():
        settings.setdefault(tuple((k, v[k]) for k in keys if k != key), {})[v[key]] = scores[group]
    gaps = [(max(s for s in by.values() if s is not None) - min(s for s in by.values() if s is not None), setting, by)
            for setting, by in settings.items() if sum(s is not None for s in by.values()) > 1]
    widest = ""
    if gaps:
        gap, setting, by = max(gaps, key=lambda item: item[0])
        where = ", ".join(f"{k.rsplit('.', 1)[-1]}={_plain(v)}" for k, v in setting)
        shown = " vs ".join(f"{name}={_plain(v)} {s:.4f}" for v, s in sorted(by.items(), key=lambda i: -(i[1] or -1))
                            if s is not None)
        widest = f"; they differ most at {where}: {shown}"
    return f"{first} Averaged over the other settings, {metric} is " + "; ".join(parts) + widest + lost + "."


def _plain(stored: str) -> str:
    """A matrix value as it reads in a variant name (values are kept as JSON to compare them)."""
    import json

    from .matrix import format_value

    return format_value(json.loads(stored))


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
    figures: list[Optional[str]] = []
    held = [(analysis, _holding(analysis, groups)) for analysis in analyses]
    held = [(analysis, held_groups) for analysis, held_groups in held if held_groups]
    undrawn = []
    for analysis, held_groups in held:
        drawn = analysis.figures([r for r in runs if r.extras.get(analysis.name)], held_groups, root)
        if drawn and not any(drawn):  # it had figures to draw, and nothing to draw them from
            undrawn.append(analysis.name)
        figures += drawn

    lines = [f"# Report: {root.name}", ""]
    if report_cfg.get("question"):
        lines += [f"**Question:** {report_cfg['question']}", ""]
    lines += [f"**Answer, from the numbers below:** {answer(groups, metric, report_cfg.get('compare'))}", "",
              f"{len(runs)} runs in {len(groups)} variants, from `{root}`.", ""]
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
    lines += [f"- *{name}: no figure: its runs hold no finite values to draw (too few steps, or every value "
              f"diverged)*" for name in undrawn]
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

    from .loggers import WANDB_ID_FILE, wandb_mode, wandb_settings

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
                            settings=wandb_settings(wb.get("init_timeout", 60))) as session:
                session.log({f"report/{path.stem}": wandb.Image(str(path)) for path in figures})
        except Exception as err:  # the local report is written; W&B is a bonus
            print(f"cnnkit: could not add the report's figures to W&B run {run.variant}: {type(err).__name__}: "
                  f"{first_line(err)}", file=sys.stderr)
            return 0
    return len(targets)
