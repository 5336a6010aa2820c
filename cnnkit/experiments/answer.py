"""The answer REPORT.md opens with: the recipe's question answered in words, from every run's numbers.

A recipe's ``report:`` says what the answer is about: ``metric`` (the number that decides; one
named ``...loss`` is better lower), ``compare`` (the matrix key the question is about), ``along``
(a matrix key to follow the metric over, e.g. the learning rate) and ``expect`` with ``where`` (the
compared value the course expects to do best, and in which setting of the other keys). Every run
counts: a diverged run is a failure, so a variant with one ranks below every variant whose runs all
finished, and the answer gives the count. Each analysis adds a sentence about its own measure
(``Analysis.answer``), and a ``target_loss`` adds the steps each variant took to reach it.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Optional

from cnnkit.experiments.analyses._unit import listed, matrix_values, sizes_differ
from cnnkit.experiments.matrix import format_value, selects


@dataclass
class Outcome:
    """A variant's runs as the answer counts them."""

    scores: list[float] = field(default_factory=list)  # the metric of each finished run
    diverged: int = 0  # runs that diverged (or finished with a non-finite metric): failures
    left_out: int = 0  # runs with no result (still running, interrupted, stopped by an error)
    missing: int = 0  # finished runs that did not record the metric
    params: list[int] = field(default_factory=list)  # the model's parameter count, per run that recorded it

    @classmethod
    def of(cls, runs: list, metric: str) -> "Outcome":
        out = cls()
        for run in runs:
            if run.final("params"):
                out.params.append(int(run.final("params")))
            state = run.status.get("status")
            value = run.final(metric) if state == "finished" else None
            if state == "finished" and value is not None and math.isfinite(value):
                out.scores.append(value)
            elif state == "diverged" or (state == "finished" and value is not None):
                out.diverged += 1
            elif state == "finished":
                out.missing += 1
            else:
                out.left_out += 1
        return out

    @property
    def counted(self) -> int:
        return len(self.scores) + self.diverged

    @property
    def mean(self) -> Optional[float]:
        return statistics.mean(self.scores) if self.scores else None

    @property
    def spread(self) -> float:
        return statistics.stdev(self.scores) if len(self.scores) > 1 else 0.0

    def rank_key(self, lower_better: bool) -> tuple[float, float]:
        """Failures first decide (a diverged run ranks below every finished one), then the mean."""
        failed = self.diverged / self.counted if self.counted else 1.0
        mean = self.mean
        return failed, (math.inf if mean is None else (mean if lower_better else -mean))

    def show(self) -> str:
        """``0.9546``, ``diverged in 3 of 3 runs``, ``0.9676 (1 of 3 runs diverged)``."""
        if not self.scores:
            return f"diverged in {self.diverged} of {self.counted} runs" if self.diverged else "no result"
        shown = f"{self.mean:.4f}"
        return shown + (f" ({self.diverged} of {self.counted} runs diverged)" if self.diverged else "")


def lower_is_better(metric: str) -> bool:
    leaf = metric.rsplit("/", 1)[-1]
    return leaf.endswith("loss") or "error" in leaf


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def factors(groups: dict[str, list], settings: Optional[dict[str, str]] = None) -> dict[str, dict[str, Any]]:
    """Each variant's place in the matrix: matrix key → value (the seed aside), and, for variants told
    apart by something outside the matrix (another run length, a smoke run), ``"setting"`` → that."""
    values: dict[str, dict[str, Any]] = {}
    for group, runs in groups.items():
        found = {key: json.loads(value) for key, value in matrix_values(runs[0]).items()}
        if settings and settings.get(group):
            found["setting"] = settings[group]
        values[group] = found
    if len({_json(v) for v in values.values()}) < len(values):  # not told apart: each variant stands alone
        values = {group: {"variant": group} for group in groups}
    return values


def _short_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _short_values(values: list[Any]) -> dict[str, str]:
    """Each distinct value (by its JSON) as short as still tells it from the others: a named spec by its
    name where the names differ, a mapping of several entries by the entries that differ."""
    distinct = list({_json(v): v for v in values}.values())
    if len(distinct) > 1 and all(isinstance(v, dict) for v in distinct):
        if all("name" in v for v in distinct) and len({v["name"] for v in distinct}) == len(distinct):
            return {_json(v): str(v["name"]) for v in distinct}
        if not any("name" in v for v in distinct):
            keys = [
                k for k in dict.fromkeys(k for v in distinct for k in v) if len({_json(v.get(k)) for v in distinct}) > 1
            ]
            parts = {k: _short_values([v.get(k) for v in distinct]) for k in keys}
            return {_json(v): ",".join(f"{k}={parts[k][_json(v.get(k))]}" for k in keys) for v in distinct}
    return {_json(v): "null" if v is None else format_value(v) for v in distinct}


class Labels:
    """How the answer names a factor's value: ``norm=bn_pre``, ``backbone=mlp,pool=none``."""

    def __init__(self, places: dict[str, dict[str, Any]]):
        keys = list(dict.fromkeys(k for v in places.values() for k in v))
        self.short = {k: _short_values([v.get(k) for v in places.values()]) for k in keys}
        self.unnamed = {
            k for k in keys if any(isinstance(v.get(k), dict) and "name" not in v.get(k) for v in places.values())
        }

    def __call__(self, key: str, value: Any) -> str:
        text = self.short[key][_json(value)]
        return text if key in ("variant", "setting") or key in self.unnamed else f"{_short_key(key)}={text}"

    def setting(self, items: tuple) -> str:
        return ", ".join(self(k, json.loads(v)) for k, v in items)


def short_names(groups: dict[str, list]) -> dict[str, str]:
    """Each variant named by the matrix values that tell it from the others, each as short as still does
    (``backbone=mlp,pool=none`` for ``model=backbone=mlp(hidden=[512,256]),pool=none``)."""
    places = factors(groups)
    labels = Labels(places)
    return {
        group: "+".join(labels(k, v) for k, v in places[group].items()) + group[len(group.split(" [")[0]) :]
        if "variant" not in places[group]
        else group
        for group in groups
    }


def _same(a: Outcome, b: Outcome) -> bool:
    """Whether two outcomes tie: as many failures, and means apart by no more than their seeds' spread."""
    if a.rank_key(False)[0] != b.rank_key(False)[0] or (a.mean is None) != (b.mean is None):
        return False
    return a.mean is None or abs(a.mean - b.mean) <= max(a.spread, b.spread, 5e-5)


def _ranks(block: dict[str, Outcome], lower: bool) -> dict[str, float]:
    """1 for the best; values that tie with the best of their run of near-equals share its mean rank."""
    order = _order(block, lower)
    ranks: dict[str, float] = {}
    start = 0
    while start < len(order):
        end = start + 1
        while end < len(order) and _same(block[order[start]], block[order[end]]):
            end += 1
        for value in order[start:end]:
            ranks[value] = (start + 1 + end) / 2
        start = end
    return ranks


def _order(block: dict[str, Outcome], lower: bool) -> list[str]:
    return sorted(block, key=lambda value: block[value].rank_key(lower))


@dataclass
class Matrix:
    """The variants' outcomes, keyed by the compared value and the setting of the other keys."""

    key: str  # the compared factor
    values: list[str]  # its values (JSON), in the matrix's order
    blocks: dict[tuple, dict[str, Outcome]]  # setting of the other factors → compared value → outcome
    labels: Labels

    def name(self, value: str) -> str:
        return self.labels(self.key, json.loads(value))


def build_matrix(
    groups: dict[str, list], places: dict[str, dict[str, Any]], compare: Optional[str], metric: str
) -> Matrix:
    keys = [
        k
        for k in dict.fromkeys(k for v in places.values() for k in v)
        if len({_json(v.get(k)) for v in places.values()}) > 1
    ]
    key = compare if compare in keys else next((k for k in keys if k != "setting"), "variant")
    if key == "variant":
        places = {group: {"variant": group} for group in groups}
        keys = ["variant"]
    blocks: dict[tuple, dict[str, Outcome]] = {}
    for group, runs in groups.items():
        place = places[group]
        setting = tuple((k, _json(place.get(k))) for k in keys if k != key)
        blocks.setdefault(setting, {})[_json(place.get(key))] = Outcome.of(runs, metric)
    values = list(dict.fromkeys(_json(places[g].get(key)) for g in groups))
    return Matrix(key, values, blocks, Labels(places))


def _tally(m: Matrix, lower: bool) -> tuple[dict[str, Outcome], dict[str, list[float]], dict[str, int], dict[str, int]]:
    """Per compared value over the settings of the other keys: its outcomes pooled, its rank in each
    setting, how often it came first, and how often that first place was tied."""
    totals = {v: Outcome() for v in m.values}
    ranks: dict[str, list[float]] = {v: [] for v in m.values}
    firsts, tied = dict.fromkeys(m.values, 0), dict.fromkeys(m.values, 0)
    for block in m.blocks.values():
        block_ranks = _ranks(block, lower)
        top = min(block_ranks.values())
        for value, rank in block_ranks.items():
            ranks[value].append(rank)
            firsts[value] += rank == top
            tied[value] += rank == top and list(block_ranks.values()).count(top) > 1
        for value, outcome in block.items():
            totals[value].scores += outcome.scores
            totals[value].diverged += outcome.diverged
            totals[value].params += outcome.params
    return totals, ranks, firsts, tied


def _ranking(m: Matrix, metric: str, lower: bool) -> str:
    """The compared values from best to worst: ranked within each setting of the other keys."""
    totals, ranks, firsts, tied = _tally(m, lower)
    settings = len(m.blocks)
    standing = _standing(m, totals, ranks, lower)
    sizes = {v: sorted(set(totals[v].params)) for v in m.values}
    counts = sizes_differ([p for v in m.values for p in sizes[v]])

    def detail(value: str) -> str:
        total = totals[value]
        parts = (
            [
                f"best in {firsts[value]} of {len(ranks[value])} settings"
                + (f", {tied[value]} of them tied" if tied[value] else "")
            ]
            if settings > 1
            else []
        )
        if counts and sizes[value]:
            low, high = sizes[value][0], sizes[value][-1]
            parts.append(f"{low:,} parameters" if low == high else f"{low:,}–{high:,} parameters")
        if total.scores:
            over = (
                f" over the {len(total.scores)} runs that finished"
                if total.diverged
                else f" over {len(total.scores)} runs"
                if len(total.scores) > 1
                else ""
            )
            parts.append(f"{metric} {total.mean:.4f}{over}")
        if total.diverged:
            parts.append(f"{total.diverged} of {total.counted} runs diverged")
        return "; ".join(parts)

    if settings > 1:
        others = listed(list(dict.fromkeys(_short_key(k) for k, _ in next(iter(m.blocks)))))
        head = f"Ranked within each of the {settings} settings of {others}"
    else:
        head = f"Ranked by {metric}"

    shown = _standing_text(standing, m, detail)
    return f"{head} (a run that diverged ranks below every run that finished), " + ", ".join(shown) + "."


def _standing_text(standing: list[list[str]], m: Matrix, detail: Any) -> list[str]:
    """``X comes first (...)``, ``then Y (...) and Z (...), level ...``, ``and last W (...)``."""
    settings = len(m.blocks)

    def named(group: list[str]) -> str:
        return listed([f"{m.name(v)} ({detail(v)})" for v in group])

    def level(group: list[str]) -> str:
        if settings > 1:
            return "level over the settings"
        block = next(iter(m.blocks.values()))
        if not any(block[v].scores for v in group):
            return "alike: none of their runs finished"
        noise = max(block[v].spread for v in group)
        return f"level within the seeds' spread (±{noise:.4f})" if noise > 0 else "tied"

    def mark(group: list[str]) -> str:
        return f", {level(group)}" if len(group) > 1 else ""

    if len(standing) == 1:
        return [f"{named(standing[0])} are {level(standing[0])}"]
    first = standing[0]
    if len(first) == 1:
        shown = [f"{m.name(first[0])} comes first ({detail(first[0])})"]
    else:
        shown = [f"{named(first)} come first{mark(first)}"]
    shown += [f"then {named(group)}{mark(group)}" for group in standing[1:-1]]
    shown += [f"{'and ' if len(standing) > 2 else ''}last {named(standing[-1])}{mark(standing[-1])}"]
    return shown


def _standing(m: Matrix, totals: dict[str, Outcome], ranks: dict[str, list[float]], lower: bool) -> list[list[str]]:
    """The compared values best first, in groups that are level, each in the matrix's order (a tie is no
    ranking, and ordering it by digits below the noise would let the last bits decide): in one setting,
    values within the seeds' spread of each other; over several, values whose ranks add up within one
    setting of each other (a single setting can turn on noise) unless their pooled outcomes are clearly
    apart."""
    settings = len(m.blocks)

    def rank(value: str) -> float:
        return statistics.mean(ranks[value]) * settings

    order = sorted(m.values, key=lambda v: (rank(v), totals[v].rank_key(lower)))
    groups: list[list[str]] = []
    for value in order:
        if groups and rank(value) - rank(groups[-1][0]) <= (0 if settings == 1 else 1):
            groups[-1].append(value)
        else:
            groups.append([value])
    standing = []
    for group in groups:
        pooled = sorted(group, key=lambda v: totals[v].rank_key(lower))
        clear = settings > 1 and all(not _same(totals[a], totals[b]) for a, b in zip(pooled, pooled[1:]))
        if clear:  # close setting by setting, but apart over all the runs: ranked as the settings rank them
            standing += [[value] for value in group]
        else:
            standing.append(sorted(group, key=m.values.index))
    return standing


def _compared(block: dict[str, Outcome], m: Matrix, lower: bool) -> str:
    """``norm=bn_pre 0.9546 > norm=none 0.1722 > norm=bn_post (diverged in 3 of 3 runs)``."""
    parts = []
    for value in _order(block, lower):
        outcome = block[value]
        parts.append(f"{m.name(value)} {outcome.show()}" if outcome.scores else f"{m.name(value)} ({outcome.show()})")
    return " > ".join(parts) if not lower else " < ".join(parts)


def _widest(m: Matrix, lower: bool, shown: tuple = ()) -> str:
    """The setting where the compared values differ most (a variant that diverged in every run, most)."""
    spans = []
    for setting, block in m.blocks.items():
        if len(block) < 2:
            continue
        failed = max(o.diverged / o.counted if o.counted else 0.0 for o in block.values())
        means = [o.mean for o in block.values() if o.mean is not None]
        spans.append(((failed, max(means) - min(means) if len(means) > 1 else 0.0), setting, block))
    if len(m.blocks) < 2 or not spans:
        return ""
    _, setting, block = max(spans, key=lambda item: item[0])
    if setting in shown:  # the expectation's sentence compared them there already
        return ""
    return f"They differ most at {m.labels.setting(setting)}: {_compared(block, m, lower)}."


def _matches(text: Any, stored: str) -> bool:
    return selects(str(text), json.loads(stored))


def _lead(block: dict[str, Outcome], first: str, m: "Matrix", lower: bool) -> str:
    """How clearly ``first`` leads the next value in ``block``: said only when it is a tie or within the
    seeds' spread (a lead past the spread, or over a variant that diverged, speaks for itself)."""
    rest = [v for v in _order(block, lower) if v != first]
    if not rest:
        return ""
    best, nxt = block[first], block[rest[0]]
    if best.mean is None or nxt.mean is None or (nxt.diverged and not best.diverged):
        return ""
    lead, noise = abs(best.mean - nxt.mean), max(best.spread, nxt.spread)
    if lead < 5e-5:
        return f"; {m.name(first)} ties with {m.name(rest[0])}"
    if lead <= noise:
        return f"; {m.name(first)} leads {m.name(rest[0])} by {lead:.4f}, within the seeds' spread (±{noise:.4f})"
    return ""


def _expectation(m: Matrix, expect: Any, where: dict[str, Any], lower: bool) -> tuple[str, tuple]:
    """Whether the value the course expects to do best does, in the settings it names (and those settings)."""
    if expect is None:
        return "", ()

    at = (" at " + ", ".join(f"{_short_key(k)}={format_value(w)}" for k, w in where.items())) if where else ""
    value = next((v for v in m.values if _matches(expect, v)), None)
    chosen = {
        setting: block
        for setting, block in m.blocks.items()
        if value in block
        and all(any(k == key and _matches(want, v) for k, v in setting) for key, want in (where or {}).items())
    }
    if value is None or not chosen:
        return (
            f"The course expects {_short_key(m.key)}={expect} to do best{at}; no runs here are of that "
            f"setting, so the numbers below neither show nor refute it.",
            (),
        )
    verdicts = []
    for setting, block in chosen.items():
        ranks = _ranks(block, lower)
        verdicts.append((ranks[value] == min(ranks.values()), setting, block))
    held = sum(h for h, _, _ in verdicts)
    expected = m.name(value)
    head = f"The course expects {expected} to do best{at}"
    if len(verdicts) == 1:
        holds, setting, block = verdicts[0]
        where_text = f" ({m.labels.setting(setting)})" if setting and not where else ""
        return (
            f"{head}, {'and here it does' if holds else 'but here it does not'}{where_text}: "
            f"{_compared(block, m, lower)}{_lead(block, value, m, lower) if holds else ''}.",
            tuple(chosen),
        )
    detail = "; ".join(
        f"{m.labels.setting(tuple(i for i in s if i[0] not in where))}: {_compared(b, m, lower)}"
        for _, s, b in verdicts
    )
    every = "both" if held == 2 else f"all {held}"
    verdict = (
        f"and here it does in {every}"
        if held == len(verdicts)
        else f"but here it does in only {held} of {len(verdicts)}"
        if held
        else f"but here it does in none of the {len(verdicts)}"
    )
    return f"{head}, {verdict} settings ({detail}).", tuple(chosen)


def _along(m: Matrix, along: Optional[str], metric: str) -> str:
    """The metric over the values of ``along``, one sequence per setting of the other keys."""
    if not along or along == m.key:
        return ""
    keys = [k for k, _ in next(iter(m.blocks))]
    if along not in keys:
        return ""
    lines: dict[tuple, dict[str, Outcome]] = {}
    steps: list[str] = []
    for setting, block in m.blocks.items():
        position = dict(setting)[along]
        steps.append(position)
        rest = tuple(item for item in setting if item[0] != along)
        for value, outcome in block.items():
            lines.setdefault(((m.key, value),) + rest, {})[position] = outcome
    steps = list(dict.fromkeys(steps))
    shown = ", ".join(m.labels(along, json.loads(s)).split("=", 1)[-1] for s in steps)
    parts = []
    for line, outcomes in sorted(lines.items(), key=lambda item: m.values.index(item[0][0][1])):
        cells = [outcomes[s].show() if s in outcomes else "-" for s in steps]
        parts.append(f"{m.labels.setting(line)}: " + ", ".join(cells))
    return f"Along {_short_key(along)} = {shown}, {metric} is: " + "; ".join(parts) + "."


def _target(
    m: Matrix,
    groups: dict[str, list],
    places: dict[str, dict[str, Any]],
    target: Optional[float],
    steps: dict[str, list[Optional[int]]],
) -> str:
    """The steps each variant's training loss took to reach ``target`` (never: not within the run)."""
    if target is None or not steps:
        return ""
    reached, never = [], []
    for group in groups:
        taken = steps.get(group) or []
        done = [s for s in taken if s is not None]
        name = ", ".join(m.labels(k, v) for k, v in places[group].items()) or group
        if done:
            count = f" ({len(done)} of {len(taken)} runs)" if len(done) < len(taken) else ""
            middle = statistics.median(done)
            reached.append((middle, f"after {middle:g} step{'s' if middle != 1 else ''} with {name}{count}"))
        else:
            longest = max((int(r.status.get("step") or 0) for r in groups[group]), default=0)
            never.append(f"never with {name}" + (f" (not in {longest} steps)" if longest else ""))
    parts = [text for _, text in sorted(reached, key=lambda item: item[0])] + never
    return f"The training loss reaches {target:g} " + listed(parts) + "."


def answer(
    groups: dict[str, list],
    report: dict[str, Any],
    analyses: list = (),
    settings: Optional[dict[str, str]] = None,
    steps: Optional[dict[str, list[Optional[int]]]] = None,
) -> str:
    """The answer to the recipe's question from every run of ``groups`` (variant name → its runs)."""
    metric = report.get("metric") or "test/acc"
    lower = lower_is_better(metric)
    places = factors(groups, settings)
    m = build_matrix(groups, places, report.get("compare"), metric)
    labels = {group: m.labels(m.key, places[group].get(m.key)) if m.key != "variant" else group for group in groups}
    sentences = []
    for analysis in analyses:
        held = {g: [r for r in rs if r.extras.get(analysis.name)] for g, rs in groups.items()}
        held = {g: rs for g, rs in held.items() if rs}
        if held:
            sentences.append(analysis.answer([r for rs in held.values() for r in rs], held, labels))
    sentences.append(_target(m, groups, places, report.get("target_loss"), steps or {}))
    if len(m.values) > 1:
        expectation, shown = _expectation(m, report.get("expect"), report.get("where") or {}, lower)
        sentences.append(expectation)
        if len(m.blocks) > 1 or not shown:  # one setting compared by the expectation: that was the ranking
            sentences.append(_ranking(m, metric, lower))
        sentences.append(_widest(m, lower, shown))
        sentences.append(_along(m, report.get("along"), metric))
    else:
        outcome = Outcome.of([r for rs in groups.values() for r in rs], metric)
        sentences.append(f"One variant: {metric} {outcome.show()}." if outcome.counted else "")
    outcomes = [o for block in m.blocks.values() for o in block.values()]
    left_out, missing = sum(o.left_out for o in outcomes), sum(o.missing for o in outcomes)
    if left_out:
        sentences.append(
            f"{left_out} runs have no result (still running, interrupted or stopped by an error) and are left out."
        )
    if missing:
        sentences.append(f"{missing} finished runs recorded no {metric} and are left out.")
    return " ".join(s for s in sentences if s) or f"No run has a {metric} to compare."
