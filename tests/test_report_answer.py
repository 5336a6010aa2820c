"""REPORT.md's answer, checked against matrices whose truth is known: every run counts (a diverged run is a
failure, ranked below every finished one), the answer is about the recipe's question, and a row averages
only runs that differ by their seed."""

from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

import cnnkit
from cnnkit.config.load import load_config, to_plain
from cnnkit.errors import ConfigError
from cnnkit.experiments.answer import Labels
from cnnkit.experiments.matrix import combinations, selects
from cnnkit.experiments.report import build_report, collect

from .conftest import QUICKSTART, REPO, SMOKE

RECIPES = sorted(p.name[: -len(".cpu.yaml")] for p in (REPO / "recipes").glob("*.cpu.yaml"))


def put(config: dict, key: str, value) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        config = config.setdefault(part, {})
    config[leaf] = value


def write_run(root, variant: str, config: dict, result) -> None:
    """A run directory as fit leaves it: ``result`` is the metric's value, or "diverged"."""
    path = root / variant
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    metric = (config.get("report") or {}).get("metric", "test/acc")
    status = (
        {"status": "diverged", "step": 40, "reason": "non-finite loss"}
        if result == "diverged"
        else {"status": "finished", "metrics": {metric: result, "params": 1000}}
    )
    (path / "status.json").write_text(json.dumps(status))
    (path / "metrics.csv").write_text("step,train/loss_step\n0,2.3\n10,1.0\n")


def write_matrix(root, matrix: dict, report: dict, outcome, base=None) -> None:
    """Every combination of ``matrix`` as a run; ``outcome(values by key)`` gives its result."""
    base = base or {"name": root.name, "seed": 0, "model": {}, "optim": {}}
    for variant, _, chosen in combinations(
        load_config(base=copy.deepcopy({**base, "matrix": matrix}), validate_config=False)
    ):
        config = copy.deepcopy(base)
        config.update(matrix=matrix, report=report, variant=variant)
        for key, value in chosen.items():
            put(config, key, value)
        write_run(root, variant, config, outcome(chosen))


def the_answer(root) -> str:
    text = build_report(root).read_text()
    return re.search(r"\*\*Answer, from the numbers below:\*\* (.*)", text).group(1)


def test_a_variant_that_always_diverges_ranks_last_and_the_answer_counts_its_runs(tmp_path):
    matrix = {"model.norm": ["none", "bn_post", "bn_pre"], "optim.lr": [1, 5], "seed": [0, 1, 2]}
    truth = {"bn_pre": 0.95, "none": 0.30}  # bn_post diverges in every run

    def outcome(v):
        return "diverged" if v["model.norm"] == "bn_post" else truth[v["model.norm"]] + 0.001 * v["seed"]

    write_matrix(tmp_path / "truth", matrix, {"metric": "test/acc", "compare": "model.norm"}, outcome)
    text = the_answer(tmp_path / "truth")
    ranking = re.search(
        r"Ranked within each of the 2 settings of lr \(a run that diverged ranks below every run "
        r"that finished\), (.*?)\.( |$)",
        text,
    ).group(1)
    assert [m for m in re.findall(r"norm=(\w+)", ranking)] == ["bn_pre", "none", "bn_post"], ranking
    assert "norm=bn_pre comes first (best in 2 of 2 settings; test/acc 0.9510 over 6 runs)" in ranking
    assert "and last norm=bn_post (best in 0 of 2 settings; 6 of 6 runs diverged)" in ranking


def test_diverged_runs_are_not_left_out_of_the_average(tmp_path):
    """E3's trap: BN after a sigmoid scores highest where it finishes and diverges at the high lr; leaving
    the diverged runs out made it read as the best scheme."""
    matrix = {
        "model.act": ["sigmoid", "relu"],
        "model.norm": ["none", "bn_pre", "bn_post"],
        "optim.lr": [1, 5],
        "seed": [0, 1],
    }
    scores = {"none": 0.17, "bn_pre": 0.95, "bn_post": 0.97}

    def outcome(v):
        return "diverged" if (v["model.norm"], v["optim.lr"]) == ("bn_post", 5) else scores[v["model.norm"]]

    report = {
        "metric": "test/acc",
        "compare": "model.norm",
        "expect": "bn_pre",
        "where": {"model.act": "sigmoid", "optim.lr": 5},
    }
    write_matrix(tmp_path / "placement", matrix, report, outcome)
    text = the_answer(tmp_path / "placement")
    assert text.startswith(
        "The course expects norm=bn_pre to do best at act=sigmoid, lr=5, and here it does: "
        "norm=bn_pre 0.9500 > norm=none 0.1700 > norm=bn_post (diverged in 2 of 2 runs)."
    )
    assert (
        "norm=bn_pre comes first (best in 2 of 4 settings; test/acc 0.9500 over 8 runs), then norm=bn_post "
        "(best in 2 of 4 settings; test/acc 0.9700 over the 4 runs that finished; 4 of 8 runs diverged), and "
        "last norm=none" in text
    )
    # the course's expectation, checked rather than asserted: when BN before the sigmoid loses there, it says so
    write_matrix(
        tmp_path / "flipped",
        matrix,
        report,
        lambda v: 0.5 if (v["model.norm"], v["optim.lr"]) == ("bn_pre", 5) else scores[v["model.norm"]],
    )
    assert the_answer(tmp_path / "flipped").startswith(
        "The course expects norm=bn_pre to do best at act=sigmoid, lr=5, but here it does not: norm=bn_post 0.9700 >"
    )


def test_a_lead_within_the_seeds_spread_is_called_level(tmp_path):
    matrix = {"model.norm": ["bn_pre", "gn"], "seed": [0, 1, 2]}
    write_matrix(
        tmp_path / "close",
        matrix,
        {"metric": "test/acc"},
        lambda v: {"bn_pre": [0.90, 0.95, 0.97], "gn": [0.92, 0.93, 0.91]}[v["model.norm"]][v["seed"]],
    )
    assert the_answer(tmp_path / "close") == (
        "Ranked by test/acc (a run that diverged ranks below every run that finished), norm=bn_pre (test/acc "
        "0.9400 over 3 runs) and norm=gn (test/acc 0.9200 over 3 runs) are level within the seeds' spread (±0.0361)."
    )


def test_values_that_tie_keep_the_matrix_order_whichever_digits_come_out_ahead(tmp_path):
    """A tie is no ranking: which of two tied values prints first does not turn on the last digits."""
    matrix = {"model.norm": ["none", "bn_pre", "gn"], "seed": [0, 1, 2]}
    answers = []
    for name, gn_scores in (("gn_below", [0.950, 0.955, 0.955]), ("gn_above", [0.956, 0.958, 0.957])):
        scores = {"none": [0.956, 0.950, 0.958], "bn_pre": [0.99, 0.99, 0.991], "gn": gn_scores}
        write_matrix(tmp_path / name, matrix, {"metric": "test/acc"}, lambda v, s=scores: s[v["model.norm"]][v["seed"]])
        answers.append(re.sub(r"\d\.\d+", "#", the_answer(tmp_path / name)))
    assert answers[0] == answers[1], answers
    assert "last norm=none (test/acc # over # runs) and norm=gn" in answers[0].replace(" 3 ", " # "), answers[0]


def test_over_several_settings_one_setting_that_turns_does_not_rank(tmp_path):
    """Two values apart in one setting each way and level in the third: level, whichever way the third
    setting's noise leans (batch 2 in bn_batch_size); a value ahead in more settings still ranks first."""
    matrix = {"model.norm": ["bn_pre", "gn"], "data.batch_size": [2, 4, 8], "seed": [0, 1, 2]}
    spread = [0.0, 0.004, -0.004]

    def scores(lean: float, bn_pre_at_2: float = 0.40):
        means = {("bn_pre", 2): bn_pre_at_2, ("gn", 2): 0.80, ("bn_pre", 4): 0.95, ("gn", 4): 0.90}
        means |= {("bn_pre", 8): 0.98 + lean, ("gn", 8): 0.98}
        return lambda v: means[(v["model.norm"], v["data.batch_size"])] + spread[v["seed"]]

    texts = {}
    for lean in (0.0, 0.02):  # level at batch 8, then bn_pre clearly ahead there
        write_matrix(tmp_path / str(lean), matrix, {"metric": "test/acc", "compare": "model.norm"}, scores(lean))
        texts[lean] = the_answer(tmp_path / str(lean))
    for text in texts.values():
        assert "norm=bn_pre (best in" in text and ") are level over the settings." in text, text
    write_matrix(tmp_path / "ahead", matrix, {"metric": "test/acc", "compare": "model.norm"}, scores(0.02, 0.90))
    assert "norm=bn_pre comes first (best in 3 of 3 settings;" in the_answer(tmp_path / "ahead")


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_course_recipe_says_what_its_answer_is_about_and_the_answer_follows_the_numbers(recipe, tmp_path):
    """Each recipe names its question, the key it compares and its metric; with runs where the value the course
    expects (else the first) is clearly best, the last one always diverges and any other is in between, the
    answer's first comparison ranks them so."""
    cfg = load_config([str(REPO / "recipes" / f"{recipe}.cpu.yaml")], validate_config=False)
    report = to_plain(cfg.report)
    assert report["question"] and report["compare"] in cfg.matrix and report["metric"], recipe
    values = to_plain(cfg.matrix[report["compare"]])
    best = next((v for v in values if report["expect"] and selects(report["expect"], v)), values[0])
    failing = next(v for v in reversed(values) if v != best)

    def outcome(chosen):
        value = chosen[report["compare"]]
        return 0.9 if value == best else "diverged" if value == failing else 0.5

    base = {k: v for k, v in to_plain(cfg).items() if k not in ("matrix", "report", "variant")}
    write_matrix(tmp_path / recipe, {**to_plain(cfg.matrix), "seed": [0, 1]}, report, outcome, base=base)
    text = collect(tmp_path / recipe).answer
    first = re.search(r"(The course expects .*? (and|but) here it does.*?|Ranked .*?)\.( |$)", text).group(1)
    label = Labels({str(i): {report["compare"]: v} for i, v in enumerate(values)})
    order = sorted(values, key=lambda v: first.rindex(label(report["compare"], v)))
    assert "and here it does" in first or not report["expect"], first
    assert order[0] == best and order[-1] == failing, first
    assert "diverged" in first.split(label(report["compare"], failing))[-1], first


def test_a_row_averages_only_runs_that_differ_by_their_seed(tmp_path):
    """Runs of one name made with another length are a row of their own, named by what differs; a key that
    never changes a result (num_workers) does not split a row."""
    base = {
        "name": "quickstart",
        "variant": "default",
        "trainer": {"max_epochs": 15},
        "data": {"num_workers": 0},
        "report": {"metric": "test/acc"},
    }
    for variant, seed, epochs, workers, acc in [
        ("default", 0, 15, 0, 0.98),
        ("seed=1", 1, 15, 4, 0.99),
        ("seed=2", 2, 2, 0, 0.30),
        ("seed=3", 3, 2, 0, 0.20),
    ]:
        config = copy.deepcopy(base)
        config.update(seed=seed, variant=variant)
        config["trainer"]["max_epochs"], config["data"]["num_workers"] = epochs, workers
        write_run(tmp_path / "quickstart", variant, config, acc)
    text = build_report(tmp_path / "quickstart").read_text()
    assert "| default [max_epochs=15] | 2 | - | - | 0.9850 ± 0.0071 |" in text
    assert "| default [max_epochs=2] | 2 | - | - | 0.2500 ± 0.0707 |" in text
    assert "4 runs in 2 variants" in text
    assert "default [max_epochs=15] comes first" in text


def test_a_recipe_whose_answer_names_a_key_it_does_not_have_is_refused_and_an_expectation_without_runs_said(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("report: {compare: model.nrom}\nmatrix:\n  model.norm: [none, bn_pre]\n")
    with pytest.raises(ConfigError, match=r"report.compare: 'model.nrom' is not a matrix key; matrix keys: model.norm"):
        load_config([str(recipe)])
    report = {"metric": "test/acc", "compare": "model.norm", "expect": "bn_pre", "where": {"optim.lr": 5}}
    write_matrix(
        tmp_path / "narrowed",
        {"model.norm": ["none", "bn_pre"], "optim.lr": [1]},
        report,
        lambda v: 0.9 if v["model.norm"] == "bn_pre" else 0.5,
    )
    assert collect(tmp_path / "narrowed").answer.startswith(
        "The course expects norm=bn_pre to do best at lr=5; no runs here are of that setting, so the numbers "
        "below neither show nor refute it. Ranked by test/acc"
    )


def test_a_kept_run_takes_the_recipes_current_report_section(tmp_path):
    """Runs made before a recipe declared what its answer is about are kept on the next fit (the report:
    section changes no result) and their stored report: follows the recipe, so the answer uses it."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: kept\nmatrix:\n  model.norm: [none, bn_pre]\n")
    cnnkit.fit_recipe([QUICKSTART, SMOKE, str(recipe)])
    recipe.write_text(
        "name: kept\nreport: {compare: model.norm, expect: bn_pre}\nmatrix:\n  model.norm: [none, bn_pre]\n"
    )
    assert all(r.kept for r in cnnkit.fit_recipe([QUICKSTART, SMOKE, str(recipe)]))
    stored = yaml.safe_load((tmp_path / "runs/smoke/kept/norm=none/config.yaml").read_text())
    assert stored["report"]["expect"] == "bn_pre" and stored["trainer"]["limit_train_batches"] == 3
    assert collect(tmp_path / "runs/smoke/kept").answer.startswith("The course expects norm=bn_pre to do best")
