"""Variants side by side (``fit --jobs``) and fits started together (``trainer.threads: auto``), timed.

    python benchmarks/jobs.py                      # both parts, every .cpu recipe (about 20 min on 2 cores)
    python benchmarks/jobs.py --recipes error_surface bn_eval_stats bn_lr_scale   # a subset
    python benchmarks/jobs.py --skip-reproduction  # part 2 alone (about 2 min)
    python benchmarks/jobs.py --threads-gain       # part 3 alone: where a second thread stops paying

1. ``docs/reproduce_cpu.sh`` one variant after the other, then with ``--jobs auto`` (every recipe's variants
   in one pool), each into fresh runs of its own (RUNS_DIR): wall times, the ratio (target <= 0.75), each
   recipe's time one after the other, and per recipe whether the report's
   answer (its **Answer** line) is the same in both and as the committed docs/<recipe>/REPORT.md, to the
   digit and with its numbers masked (the conclusion in words).
2. The quickstart recipe as whole processes with the default settings: two started together vs the same
   two one after the other (target: together no slower), and one alone vs today's main behaviour, torch
   on every core (``trainer.threads=<cores>``; target within 5%).

3. (``--threads-gain``) per .cpu recipe's model: one training step (forward, backward, SGD) on 1 and on 2
   threads, its multiply-accumulates per batch, and the gain of the second thread; ``jobs.py``'s
   TWO_THREADS_FROM_MACS (where ``--jobs auto`` gives a job two cores) comes from it.

Measured with the caller's OMP_NUM_THREADS and friends removed: the defaults are what is measured.
Writes benchmarks/results/jobs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from cnnkit.experiments.placement import THREAD_VARIABLES  # noqa: E402  (the variables a job sets: the ones cleared here)

RECIPES = (
    "error_surface",
    "bn_activations",
    "bn_placement",
    "bn_eval_stats",
    "bn_lr_scale",
    "bn_landscape",
    "bn_batch_size",
    "cnn_vs_fc",
    "hw3_food11",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    return {
        **env,
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "disabled",
        "CNNKIT_NO_PLUGINS": "1",
        "PYTHON": sys.executable,
        **extra,
    }


def answer(report: Path) -> str:
    text = report.read_text(encoding="utf-8") if report.is_file() else ""
    found = re.search(r"\*\*Answer, from the numbers below:\*\* (.*)", text)
    return found.group(1).strip() if found else ""


def conclusion(text: str) -> str:
    """The answer's words with every number it quotes masked (a value in a name, ``batch_size=2``, stays):
    what it concludes, not the digits."""
    return re.sub(r"(?<![\w=.-])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?", "#", text)


def reproduction(recipes: list[str], work: Path) -> dict:
    times: dict[str, dict[str, float]] = {}
    for mode, extra in (("sequential", []), ("jobs_auto", ["--jobs", "auto"])):
        runs = work / mode
        start = time.monotonic()
        proc = subprocess.run(
            ["bash", str(REPO / "docs/reproduce_cpu.sh"), *extra, *recipes],
            env=clean_env(RUNS_DIR=str(runs)),
            capture_output=True,
            text=True,
        )
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise SystemExit(f"reproduce_cpu.sh {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
        times[mode] = {"wall_s": round(wall, 1)}
        for line in proc.stdout.splitlines():
            name, sep, rest = line.partition(": ")
            if sep and name in recipes and rest.endswith(" s"):
                times[mode][name] = float(rest[:-2])
        print(f"  {mode}: {wall:.1f} s", flush=True)
    per_recipe = {}
    for recipe in recipes:
        seq = answer(work / "sequential" / recipe / "REPORT.md")
        jobs = answer(work / "jobs_auto" / recipe / "REPORT.md")
        committed = answer(REPO / "docs" / recipe / "REPORT.md")
        per_recipe[recipe] = {
            "sequential_s": times["sequential"].get(recipe),
            "answer_same_as_sequential": seq == jobs,
            "answer_same_as_committed": jobs == committed,
            "conclusion_same_as_sequential": conclusion(seq) == conclusion(jobs),
            "conclusion_same_as_committed": conclusion(jobs) == conclusion(committed),
            "answer_sequential": seq,
            "answer_jobs_auto": jobs,
            "answer_committed": committed,
        }
    ratio = times["jobs_auto"]["wall_s"] / times["sequential"]["wall_s"]
    return {
        "recipes": recipes,
        "sequential_s": times["sequential"]["wall_s"],
        "jobs_auto_s": times["jobs_auto"]["wall_s"],
        "ratio": round(ratio, 3),
        "target_ratio": 0.75,
        "per_recipe": per_recipe,
    }


def quickstart(work: Path, threads: str | None = None) -> subprocess.Popen:
    """One quickstart fit as a whole process, in a fresh runs directory of its own."""
    work.mkdir(parents=True, exist_ok=True)
    extra = [f"trainer.threads={threads}"] if threads else []
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cnnkit",
            "fit",
            "--config",
            str(REPO / "recipes/quickstart.yaml"),
            "logger.wandb.mode=disabled",
            "trainer.progress_bar=none",
            *extra,
        ],
        cwd=work,
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def timed(*starts) -> float:
    """Wall time from starting the processes (``starts``: functions that start one each) to the last's end."""
    start = time.monotonic()
    for process in [begin() for begin in starts]:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"quickstart fit failed:\n{err[-3000:]}")
    return time.monotonic() - start


def together(work: Path, repeats: int) -> dict:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    rows: dict[str, list[float]] = {
        "alone_main_all_cores": [],
        "alone_default": [],
        "two_one_after_other": [],
        "two_together": [],
    }
    for r in range(repeats):
        # today's main: torch on every core, whatever runs beside it
        rows["alone_main_all_cores"].append(timed(partial(quickstart, work / f"{r}/main", str(cores))))
        rows["alone_default"].append(timed(partial(quickstart, work / f"{r}/alone")))
        rows["two_one_after_other"].append(
            timed(partial(quickstart, work / f"{r}/seq1")) + timed(partial(quickstart, work / f"{r}/seq2"))
        )
        rows["two_together"].append(
            timed(partial(quickstart, work / f"{r}/tog1"), partial(quickstart, work / f"{r}/tog2"))
        )
        print("  " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in rows.items()), flush=True)
    best = {k: round(min(v), 2) for k, v in rows.items()}  # the least disturbed of the repeats
    return {
        "cores": cores,
        "repeats": repeats,
        "seconds": best,
        "all_seconds": rows,
        "together_vs_one_after_other": round(best["two_together"] / best["two_one_after_other"], 3),
        "alone_default_vs_main": round(best["alone_default"] / best["alone_main_all_cores"], 3),
        "targets": {"together_vs_one_after_other": "<= 1.0", "alone_default_vs_main": "within 0.95..1.05"},
    }


def step_seconds(model, optimizer, x, y, threads: int, seconds: float) -> float:
    """Seconds per training step (forward, backward, SGD) on ``threads`` threads, over about ``seconds``."""
    import torch

    torch.set_num_threads(threads)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        count += 1
    return (time.perf_counter() - start) / count


def threads_gain(recipes: list[str], seconds: float = 1.5) -> dict:
    """Part 3, in this process: a training step's time on 1 and 2 threads for each distinct model of each
    recipe's matrix (its model, dataset and batch size)."""
    import torch

    sys.path.insert(0, str(REPO))
    from cnnkit.api import build_model, data_info, plan_runs
    from cnnkit.experiments.placement import step_macs

    rows = {}
    for recipe in recipes:
        _, runs = plan_runs([str(REPO / f"recipes/{recipe}.cpu.yaml")])
        seen = set()
        for run in runs:
            cfg = run.cfg
            macs = step_macs(cfg)
            if (macs, cfg.data.batch_size) in seen:
                continue
            seen.add((macs, cfg.data.batch_size))
            info = data_info(cfg)
            model = build_model(cfg, info)
            x = torch.randn(cfg.data.batch_size, *info.input_shape)
            y = torch.randint(0, info.num_classes, (cfg.data.batch_size,))
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
            per_step = {threads: step_seconds(model, optimizer, x, y, threads, seconds) for threads in (1, 2)}
            name = f"{recipe}/{cfg.variant}"
            rows[name] = {
                "macs_per_batch": macs,
                "step_ms_1": round(per_step[1] * 1e3, 2),
                "step_ms_2": round(per_step[2] * 1e3, 2),
                "gain": round(per_step[1] / per_step[2], 2),
            }
            print(
                f"  {name}: {macs:.3g} MACs/batch, {rows[name]['step_ms_1']} ms on 1 thread, "
                f"{rows[name]['step_ms_2']} ms on 2: {rows[name]['gain']}x",
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipes",
        nargs="+",
        default=list(RECIPES),
        choices=RECIPES,
        metavar="RECIPE",
        help="the .cpu recipes of part 1 (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="repeats of part 2 (the fastest counts)")
    parser.add_argument("--skip-reproduction", action="store_true", help="part 2 alone")
    parser.add_argument("--threads-gain", action="store_true", help="part 3 alone")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "jobs.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnnkit-jobs-bench-"))
    result: dict = {"machine": {"cores": os.cpu_count(), "load_before": os.getloadavg()}}
    if args.threads_gain:
        print("3. a second thread's gain per recipe model (one training step)", flush=True)
        result["threads_gain"] = threads_gain(args.recipes)
        result["machine"]["load_after"] = os.getloadavg()
        output = Path(args.output).with_name("jobs_threads_gain.json")
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {output}")
        return
    print("2. quickstart: two fits started together vs one after the other; one alone vs main", flush=True)
    result["together"] = part2 = together(work / "quickstart", args.repeats)
    s = part2["seconds"]
    print(
        f"  two together {s['two_together']:.1f} s vs one after the other {s['two_one_after_other']:.1f} s: "
        f"{part2['together_vs_one_after_other']:.2f}x (target <= 1)"
    )
    print(
        f"  one alone {s['alone_default']:.1f} s vs main's every-core threads {s['alone_main_all_cores']:.1f} s: "
        f"{part2['alone_default_vs_main']:.2f}x (target within 5%)"
    )
    if not args.skip_reproduction:
        print(f"1. docs/reproduce_cpu.sh {' '.join(args.recipes)}: sequential vs --jobs auto", flush=True)
        result["reproduction"] = part1 = reproduction(args.recipes, work / "reproduce")
        print(
            f"  sequential {part1['sequential_s']:.1f} s, --jobs auto {part1['jobs_auto_s']:.1f} s: "
            f"{part1['ratio']:.2f}x (target <= 0.75)"
        )
        for recipe, row in part1["per_recipe"].items():
            print(
                f"  {recipe}: {row['sequential_s']} s one after the other; answer same as with --jobs auto: "
                f"{row['answer_same_as_sequential']} (numbers masked: {row['conclusion_same_as_sequential']}), as "
                f"the docs: {row['answer_same_as_committed']} (numbers masked: {row['conclusion_same_as_committed']})"
            )
    result["machine"]["load_after"] = os.getloadavg()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output} (runs in {work})")


if __name__ == "__main__":
    main()
