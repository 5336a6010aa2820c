"""Start-up times: `cnnkit --help`, `cnnkit list`, and the quickstart's first training step.

Each is a fresh process, timed from just before it starts; the first step's end is printed by a
callback that the run loads through `imports:` (benchmarks/first_step.py). Median of the repeats.

    python benchmarks/startup.py [--repeats 5]
Target: `--help` under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall(args: list[str], env: dict[str, str], cwd: str) -> tuple[float, str]:
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "cnnkit", *args], capture_output=True, text=True, env=env, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"cnnkit {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.time() - start, proc.stdout + proc.stderr


def first_step(env: dict[str, str], cwd: str) -> float:
    start = time.time()
    _, output = wall(
        [
            "fit",
            "--config",
            str(REPO / "recipes" / "quickstart.yaml"),
            "--overwrite",
            f"imports=[{REPO / 'benchmarks' / 'first_step.py'}]",
            "callbacks=[first_step_clock]",
            "trainer.progress_bar=none",
            "trainer.enable_model_summary=false",
            "logger.wandb.mode=disabled",
            "trainer.limit_test_batches=1",
            "trainer.limit_val_batches=1",
        ],
        env,
        cwd,
    )
    end = next(float(line.split()[1]) for line in output.splitlines() if line.startswith("FIRST_STEP_END"))
    return end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "startup.json"))
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "CNNKIT_NO_PLUGINS": "1"}
    cwd = tempfile.mkdtemp(prefix="cnnkit-startup-")
    measures = {
        "--help": lambda: wall(["--help"], env, cwd)[0],
        "list": lambda: wall(["list"], env, cwd)[0],
        "describe (quickstart)": lambda: wall(
            ["describe", "--config", str(REPO / "recipes" / "quickstart.yaml")], env, cwd
        )[0],
        "first training step (quickstart)": lambda: first_step(env, cwd),
    }
    results = {}
    print(f"{'command':<36} {'median s':>9}  all")
    for name, measure in measures.items():
        times = [measure() for _ in range(args.repeats)]
        results[name] = {"median_s": statistics.median(times), "all_s": times}
        print(f"{name:<36} {statistics.median(times):>9.3f}  {', '.join(f'{t:.2f}' for t in times)}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
