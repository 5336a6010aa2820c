"""``cnnkit report runs/<recipe>``: figures and a REPORT.md table from run directories.

Reads only local files — each variant's config.yaml, status.json, metrics.csv and the files of
whichever analyses (``cnnkit/experiments/analyses/``) its runs hold — so no W&B account is needed. REPORT.md is
the recipe's question, an answer from the numbers and one table of every variant; each analysis
adds its own tables and figures (the training curves and the headline metric per variant are
analyses too, of the files every run writes). Runs whose configs differ by the seed alone are
one row, aggregated as mean ± std; runs that differ in anything else are rows of their own.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from cnnkit.config.diff import RESULT_NEUTRAL, differences
from cnnkit.errors import CnnkitError, RegistryError, first_line
from cnnkit.experiments.analyses import units
from cnnkit.experiments.analyses._unit import Analysis, mean_std, read_json, select
from cnnkit.experiments.answer import answer
from cnnkit.experiments.matrix import combinations, format_value, group_name
from cnnkit.messages import say
from cnnkit.registry import import_user_code
from cnnkit.runs.atomic import atomic_write_text
from cnnkit.runs.run_dir import RunDir


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
    if not root.is_dir():
        raise CnnkitError(f"report: '{root}' is not a directory; pass runs/<recipe name>")
    candidates = [root] if RunDir(root).is_run() else sorted(p for p in root.iterdir() if p.is_dir())
    found = [(RunDir(path), RunDir(path).read_config() or {}) for path in candidates if RunDir(path).is_run()]
    _import_runs_code(config for _, config in found)
    runs = []
    for run_dir, config in found:
        path = run_dir.path
        run = Run(
            path=path,
            variant=path.name,
            group=group_name(path.name),
            config=config,
            status=run_dir.read_status(),
            metrics=run_dir.read_metrics(),
        )
        for analysis in units() if analyses is None else analyses:
            run.extras[analysis.name] = analysis.load(path)
        runs.append(run)
    if not runs:
        raise CnnkitError(
            f"report: no runs under '{root}' (each run directory has a status.json); fit the recipe first"
        )
    return sorted(runs, key=_matrix_order(runs))


def _import_runs_code(configs) -> None:
    """The runs' own ``imports:`` (their analyses report on them too); one that cannot be imported from here
    is said in a line, and the report goes on without it."""
    for item in dict.fromkeys(item for config in configs for item in config.get("imports") or []):
        try:
            import_user_code([item])
        except RegistryError as err:
            say(f"report: {err}; what it registers is left out of the report")


def _matrix_order(runs: list[Run]):
    """Sort key: the recipe matrix's own order (keys as written, values as listed), else by name."""

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


# Keys that never make two runs different experiments: a report averages runs that differ in these alone.
SEED_FREE = ("seed", *RESULT_NEUTRAL, "data.num_workers", "data.cache", "data.cache_budget")


def _groups(runs: list[Run]) -> tuple[dict[str, list[Run]], dict[str, str]]:
    """The report's rows: runs whose configs differ by the seed alone (``SEED_FREE``), each row named by
    its variant without the seed; rows of one name are told apart by what differs (``[max_epochs=2]``),
    and rows of limited runs (the smoke overlay, ``trainer.limit_*``) say so. Also returns each row's
    setting outside the matrix (that bracketed part), for the answer to compare like with like."""
    rows: list[list[Run]] = []
    for run in runs:
        row = next((rs for rs in rows if not differences(rs[0].config, run.config, SEED_FREE)), None)
        if row is None:
            rows.append([run])
        else:
            row.append(run)
    names: dict[str, list[list[Run]]] = {}
    for row in rows:
        names.setdefault(row[0].group, []).append(row)
    groups: dict[str, list[Run]] = {}
    settings: dict[str, str] = {}
    for row in rows:
        limited = " [limited]" if any(r.limits for r in row) else ""
        others = [other for other in names[row[0].group] if other is not row]
        keys = list(
            dict.fromkeys(
                key for other in others for key, _, _ in differences(other[0].config, row[0].config, SEED_FREE)
            )
        )
        if limited and all(_limits_apart(row, other) for other in others):
            keys = [k for k in keys if not k.startswith("trainer.limit_")]  # [limited] tells them apart
        setting = ",".join(f"{key.rsplit('.', 1)[-1]}={_shown(select(row[0].config, key))}" for key in keys[:3])
        setting = (f" [{setting}{f',+{len(keys) - 3} more' if len(keys) > 3 else ''}]" if setting else "") + limited
        name, n = row[0].group + setting, 1
        while name in groups:  # the keys shown did not tell it apart: numbered, never merged
            n += 1
            name = f"{row[0].group}{setting} #{n}"
        groups[name] = row
        settings[name] = setting.strip()
    return groups, settings


def _shown(value: Any) -> str:
    return "null" if value is None else format_value(value)


def _limits_apart(row: list[Run], other: list[Run]) -> bool:
    """Whether one of the two rows is limited and the other not."""
    return bool(row[0].limits) != bool(other[0].limits)


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


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Collected:
    """A recipe's runs as the report reads them: its rows (variant → runs), their settings outside the
    matrix, the recipe's ``report:`` section, the steps to its target loss, and the answer."""

    analyses: list[Analysis]
    runs: list[Run]
    groups: dict[str, list[Run]]
    config: dict[str, Any]
    steps: dict[str, list[Optional[int]]]
    answer: str


def collect(root: Path | str) -> Collected:
    runs = load_runs(Path(root))
    analyses = units()  # after the runs' imports: an analysis of their own included
    groups, settings = _groups(runs)
    config = runs[0].config.get("report", {}) or {}
    target = config.get("target_loss")
    steps = {group: [steps_to_target(r, target, analyses) for r in group_runs] for group, group_runs in groups.items()}
    text = answer(groups, config, analyses, settings, steps if target is not None else None)
    return Collected(analyses, runs, groups, config, steps, text)


def build_report(root: Path | str, log_to_wandb: bool = False) -> Path:
    """Write figures and REPORT.md into ``root`` and return REPORT.md; ``log_to_wandb`` also adds the figures
    to the runs' W&B runs (see ``log_figures_to_wandb``)."""
    root = Path(root)
    found = collect(root)
    analyses, runs, groups, report_cfg, steps = found.analyses, found.runs, found.groups, found.config, found.steps
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
    lines += [
        f"**Answer, from the numbers below:** {found.answer}",
        "",
        f"{len(runs)} runs in {len(groups)} variants, from `{root}`.",
        "",
    ]
    limited = [r for r in runs if r.limits]
    if limited:
        lines += [
            f"**{len(limited)} of {len(runs)} runs are limited** ({', '.join(limited[0].limits)}, e.g. the "
            f"smoke overlay): marked [limited]; their numbers are a smoke test, not the experiment's result.",
            "",
        ]
    lines += _variants_table(groups, target, steps)
    for analysis, held_groups in held:
        lines += analysis.tables([r for r in runs if r.extras.get(analysis.name)], held_groups)
    lines += ["", "## Figures", ""]
    lines += [f"![{name}]({name})" for name in figures if name]
    lines += [
        f"- *{name}: no figure: its runs hold no finite values to draw (too few steps, or every value diverged)*"
        for name in undrawn
    ]
    out = root / "REPORT.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    if log_to_wandb:
        log_figures_to_wandb(runs, [root / name for name in figures if name])
    return out


def _variants_table(groups: dict[str, list[Run]], target: Optional[float], steps: dict[str, list]) -> list[str]:
    """REPORT.md's first table: a row per variant (its runs' means ± std; diverged runs named, no finals)."""
    header = ["variant", "runs", "final train loss", "val acc", "test acc", "params"]
    if target is not None:
        header.append(f"steps to loss ≤ {target:g}")
    header.append("status")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group, group_runs in groups.items():
        statuses = [r.status.get("status", "?") for r in group_runs]
        diverged = [
            f"diverged at step {r.status.get('step')}" for r in group_runs if r.status.get("status") == "diverged"
        ]
        done = [r for r in group_runs if r.status.get("status") == "finished"]  # diverged runs have no finals
        params = next((r.final("params") for r in done if r.final("params")), None)
        cells = [
            group,
            str(len(group_runs)),
            mean_std([r.final("train/loss_epoch") for r in done]),
            mean_std([r.final("val/acc") for r in done]),
            mean_std([r.final("test/acc") for r in done]),
            str(int(params)) if params else "-",
        ]
        if target is not None:
            cells.append(", ".join("never" if s is None else str(s) for s in steps[group]))
        cells.append("; ".join(diverged) if diverged else ", ".join(sorted(set(statuses))))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


REPORTED_FILE = "wandb_report.json"  # in a run directory: the figures last added to its W&B run (name → sha256)


def log_figures_to_wandb(runs: list[Run], figures: list[Path]) -> int:
    """Add the report's figures to every W&B run of the recipe (those with a stored run id); return how many.

    W&B cannot append to a finished run's local directory: each ``wandb.init`` (resuming the run by its id)
    writes a new one (offline: ``offline-run-<time>-<id>``, which ``wandb sync`` merges into the run). So
    this is done only when asked (``report --wandb``), and a run whose figures were already added, unchanged,
    is left alone: asking again with nothing new starts no W&B run at all.
    """
    # startup: lightning only when this runs
    from cnnkit.training.loggers import WANDB_ID_FILE, wandb_mode, wandb_settings

    digests = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in figures}
    targets = [r for r in runs if (r.path / WANDB_ID_FILE).is_file() and read_json(r.path / REPORTED_FILE) != digests]
    if not targets or not figures:
        return 0
    # startup: wandb only when this runs
    import wandb

    added = 0
    for run in targets:
        wb = (run.config.get("logger") or {}).get("wandb") or {}
        mode = wandb_mode(wb.get("mode", "auto"))
        if mode == "disabled":
            continue
        try:
            with wandb.init(
                id=(run.path / WANDB_ID_FILE).read_text().strip(),
                resume="allow",
                mode=mode,
                project=wb.get("project"),
                entity=wb.get("entity"),
                dir=str(run.path),
                settings=wandb_settings(wb.get("init_timeout", 60)),
            ) as session:
                session.log({f"report/{path.stem}": wandb.Image(str(path)) for path in figures})
        except Exception as err:  # the local report is written; W&B is a bonus
            say(f"could not add the report's figures to W&B run {run.variant}: {type(err).__name__}: {first_line(err)}")
            return added
        atomic_write_text(run.path / REPORTED_FILE, json.dumps(digests, indent=1) + "\n")
        added += 1
    return added
