"""The GPU readiness check: every CUDA path of cnnkit and the GPU speed figures, in one go, within a budget.

Parts, each in its own process under its own bound, so a hang costs that part and never the JSON; the first
two check correctness and run side by side, the speed part then runs alone with what is left of the budget:
1. ``pytest -m gpu`` (tests/test_gpu.py), each test bounded too (pytest-timeout when installed, else this
   script stops pytest when one test overruns);
2. a smoke run per distinct model of the recipes on generated data of the recipe's shape, the key GPU
   recipes first (cifar10_fast, quickstart, hw3_food11); a model skipped for time makes the part not ok;
3. speed: ResNet-18 (cifar10_fast) and a small fast net at 32-true, bf16-mixed, bf16 + channels_last, each
   beside the same steps in a plain PyTorch loop built with cnnkit's own optimizer and schedule (the
   framework-overhead ratio), each case in its own ``try``; compile last, under its own cap. Host
   synchronizations per step are counted in a separate short run per model, inside the watched steps only.

gpu.json is rewritten after every test, model and case (the dry run's goes to a temporary folder);
``scripts/gpu_check.sh`` tees the whole output, pytest's uncut, to gpu_check.log beside it.

    python benchmarks/gpu_check.py [--cpu] [--faults] [--budget S] [--output PATH]
``--cpu`` is the dry run: the same parts on the CPU (the GPU tests included, compile through dynamo's eager
backend, the sync counter in its CPU form). ``--faults`` (with ``--cpu``; the test suite) adds the faults
the check must survive: a hung test, a failing and a hanging speed case, a smoke deadline forced short,
host reads planted inside and outside the watched steps. Exits 1 when any part is not ok.
"""

from __future__ import annotations

import argparse
import codecs
import fcntl
import importlib.util
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# Everything Lightning-side is imported inside the parts: the process that runs them stays light.
START = time.monotonic()
REPO = Path(__file__).resolve().parents[1]
PYTEST, SMOKE, SPEED = "pytest -m gpu", "smoke run per distinct model", "speed"
PARTS = (PYTEST, SMOKE, SPEED)
KEY_RECIPES = ("cifar10_fast", "quickstart", "hw3_food11")  # the GPU recipe, the tutorial, 128-px photos


@dataclass(frozen=True)
class Limits:
    """Seconds. pytest and the smoke runs each get their cap, or less so that the speed part keeps its reserve."""

    budget: float  # the whole check by default (scripts/gpu_check.sh passes what its install left)
    caps: dict[str, float]  # pytest, smoke
    speed_reserve: float
    tail: dict[str, float]  # no new model or case starts this close to the part's bound
    test_bound: float  # each pytest test
    case_cap: float  # each speed case
    compile_cap: float
    compile_min: float  # compile starts only with this much left


# One H100, by construction: the install (~15 s) counts in the budget of 225 s; pytest and the smoke runs get <= 110 s
# side by side, the speed part the rest (>= 95 s; compile last, only with 45 s left, capped at 90 s); a process past
# its bound is gone within 5 s (2 s grace, SIGTERM, 2 s, SIGKILL): about 230 s in all, 240 s at worst.
GPU_LIMITS = Limits(
    budget=225,
    caps={PYTEST: 110, SMOKE: 100},
    speed_reserve=95,
    tail={SMOKE: 6, SPEED: 15},
    test_bound=75,
    case_cap=45,
    compile_cap=90,
    compile_min=45,
)
CPU_LIMITS = Limits(
    budget=600,
    caps={PYTEST: 300, SMOKE: 150},
    speed_reserve=120,
    tail={SMOKE: 3, SPEED: 5},
    test_bound=150,
    case_cap=120,
    compile_cap=120,
    compile_min=10,
)
FAULT_TEST = "test_a_hung_test_is_cut_at_its_own_bound"
FAULT_TEST_BOUND = 3  # the planted hung test's own bound
FAULT_SMOKE_SECONDS = 8  # the smoke deadline forced short: a few models run, the rest are skipped
FAULT_CASE_CAP = 3  # the planted hanging speed case's cap


# -- gpu.json ---------------------------------------------------------------------------------------------
class Report:
    """gpu.json, rewritten whole (atomically) after every test, model and case, under a lock: the parts running
    side by side each change their own entry."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = path.with_name(path.name + ".lock")

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.is_file() else {}

    def write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def change(self, edit: Callable[[dict[str, Any]], None]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load()
            edit(data)
            self.write(data)

    def put(self, key: str, value: Any) -> None:
        self.change(lambda data: data.__setitem__(key, value))


OUTPUT = threading.Lock()
STOP = threading.Event()  # Ctrl-C: every part's process group goes


def say(line: str) -> None:
    """One whole line to our output (the parts running side by side never cut into each other's lines)."""
    with OUTPUT:
        print(line, flush=True)


class Lines:
    """A process's output, passed on in whole lines, each with ``prefix``."""

    def __init__(self, prefix: str = "", on_line: Callable[[str], None] = lambda line: None):
        self.prefix, self.on_line, self.tail = prefix, on_line, ""

    def feed(self, text: str) -> None:
        *lines, self.tail = (self.tail + text).split("\n")
        for line in lines:
            say(self.prefix + line)
            self.on_line(line.rstrip())

    def close(self) -> None:
        if self.tail:
            say(self.prefix + self.tail)


# -- the bound of a process ---------------------------------------------------------------------------------
def run_bounded(
    cmd: list[str],
    env: dict[str, str],
    seconds: float,
    on_output: Optional[Callable[[str], None]] = None,
    overrun: Callable[[], Optional[str]] = lambda: None,
) -> tuple[Optional[int], Optional[str]]:
    """Run ``cmd`` in its own process group for at most ``seconds``: (exit code, None) or (None, why it was cut).

    ``on_output`` gets its output as it comes (else it goes straight to ours); ``overrun`` may cut it early
    by returning a reason. The whole group goes (workers, compile processes, CLI runs a test started)."""
    piped = on_output is not None
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE if piped else None,
        stderr=subprocess.STDOUT if piped else None,
    )
    reader = threading.Thread(target=_pump, args=(proc.stdout, on_output), daemon=True) if piped else None
    if reader:
        reader.start()
    deadline, cut = time.monotonic() + seconds, None
    try:
        while proc.poll() is None:
            cut = (
                f"cut at its bound of {seconds:.0f} s"
                if time.monotonic() > deadline
                else "stopped: the check was interrupted"
                if STOP.is_set()
                else overrun()
            )
            if cut:
                break
            time.sleep(0.2)
    finally:  # cut, interrupted (Ctrl-C) or done: nothing of the group outlives it
        _kill_group(proc)
        if reader:
            reader.join(timeout=10)
    return (None if cut else proc.returncode), cut


def _pump(stream, on_output: Callable[[str], None]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while chunk := os.read(stream.fileno(), 65536):
        on_output(decoder.decode(chunk))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL to whatever is left of it 2 s later (at once if the leader is gone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the process and everything it started are gone
        try:
            proc.wait(timeout=2 if sig == signal.SIGTERM else 5)
        except subprocess.TimeoutExpired:
            pass


# -- 1. the GPU tests --------------------------------------------------------------------------------------
OUTCOME = re.compile(r"^(\S*::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b(.*)$")
REASON = re.compile(r"^(FAILED|ERROR) (\S*::\S+?)(?: - (.*))?$")
TOTALS = re.compile(r"^=+ (.+ in [\d.]+s.*?) =+$")
HUNG_TEST = """import time

import pytest

pytestmark = [pytest.mark.gpu{marker}]


def {name}():
    time.sleep(600)
"""


class PytestProgress:
    """Each test's outcome from ``pytest -v`` as it prints it, and the test running now (named before it runs)."""

    def __init__(self, report: Report, entry: dict[str, Any], bounds: Callable[[str], float]):
        self.report, self.entry, self.bounds = report, entry, bounds
        self.tests: dict[str, str] = entry.setdefault("tests", {})
        self.lines = Lines(on_line=self._line)
        self.running: Optional[tuple[str, float]] = None
        self.lock = threading.Lock()

    def feed(self, text: str) -> None:
        with self.lock:
            self.lines.feed(text)
            name = self.lines.tail.strip()
            if "::" in name and " " not in name and (self.running is None or self.running[0] != name):
                self.running = (name, time.monotonic())

    def _line(self, line: str) -> None:
        if m := OUTCOME.match(line):
            self.tests[m.group(1)] = m.group(2).lower()
            self.running = None
            self.report.put(PYTEST, self.entry)
        elif (m := REASON.match(line)) and m.group(2) in self.tests and m.group(3):
            reason = m.group(3)
            cut = "Timeout" in reason
            self.tests[m.group(2)] = (
                f"cut at its bound (pytest-timeout): {reason}" if cut else f"{self.tests[m.group(2)]}: {reason}"
            )
        elif m := TOTALS.match(line):
            self.entry["summary"] = m.group(1)

    def overrun(self) -> Optional[str]:
        """Without pytest-timeout this script bounds each test: past its bound, pytest is stopped."""
        with self.lock:
            if self.running is None:
                return None
            name, started = self.running
            bound = self.bounds(name)
            if time.monotonic() - started <= bound + 10:
                return None
            self.tests[name] = f"cut at its bound of {bound:.0f} s (pytest stopped: pytest-timeout is not installed)"
            return f"stopped at {name}"


def pytest_part(args, limits: Limits, report: Report, entry: dict[str, Any], bound: float, workdir: Path) -> bool:
    has_timeout = importlib.util.find_spec("pytest_timeout") is not None
    files = ["tests/test_gpu.py"]
    if args.faults:
        hung = workdir / "faults" / "test_hung.py"
        hung.parent.mkdir(parents=True, exist_ok=True)
        marker = f", pytest.mark.timeout({FAULT_TEST_BOUND})" if has_timeout else ""
        hung.write_text(HUNG_TEST.format(name=FAULT_TEST, marker=marker))
        files.append(str(hung))
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *files,
        "-c",
        str(REPO / "pyproject.toml"),
        "--rootdir",
        str(REPO),
        "-m",
        "gpu",
        "-v",
        "-p",
        "no:cacheprovider",
        "--durations=5",
        "--disable-warnings",
    ]
    if has_timeout:
        cmd.append(f"--timeout={limits.test_bound:.0f}")
    entry.update(
        command=" ".join(cmd[1:]),
        per_test_bound_s=limits.test_bound,
        per_test_bound_by="pytest-timeout" if has_timeout else "this script (pytest-timeout is not installed)",
    )
    progress = PytestProgress(
        report, entry, lambda name: FAULT_TEST_BOUND if name.endswith(FAULT_TEST) else limits.test_bound
    )
    env = {**child_env(args), "COLUMNS": "200"}  # the failures' one-line reasons uncut
    rc, cut = run_bounded(cmd, env, bound, on_output=progress.feed, overrun=progress.overrun)
    progress.lines.close()
    tests = entry["tests"]
    outcomes = Counter(v.split(":")[0].split(" ")[0] for v in tests.values())
    entry.update(exit_code=rc, outcomes=dict(outcomes))
    if cut:
        entry["error"] = f"pytest {cut}"
    elif rc != 0:
        entry["error"] = f"pytest exited {rc}: {entry.get('summary', 'see gpu_check.log')}"
    elif not outcomes.get("passed") or (not args.cpu and outcomes.get("skipped")):
        entry["error"] = f"tests skipped on this machine: {entry.get('summary')}"
    return "error" not in entry


# -- Lightning-side helpers (imported by the parts and by tests/test_gpu.py) -------------------------------------
def lightning_callback(on_step_end: Callable[[int], None], on_end: Callable[[], None] = lambda: None):
    """A Lightning callback that reports each finished training step's count and the end of training."""
    import lightning as L

    class StepHook(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            on_step_end(int(trainer.global_step))

        def on_train_end(self, trainer, pl_module):
            on_end()

        def on_exception(self, trainer, pl_module, exception):
            on_end()

    return StepHook()


class TimedWindow:
    """Seconds over ``steps`` training steps after ``warmup``, measured alike for cnnkit and the plain loop: the
    clock reads when step ``warmup`` has ended and when step ``warmup + steps`` has, each after one device
    synchronization, and nothing synchronizes in between (the GPU runs ahead of the host as in a real run)."""

    def __init__(self, warmup: int, steps: int, device: str):
        if warmup < 1 or steps < 1:
            raise ValueError("the timed window needs a warm-up step and a timed step")
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.end = None
        self.synchronizations = 0

    def at_step(self, done: int) -> None:
        if done == self.warmup:
            self.start = self._clock()
        elif done == self.warmup + self.steps:
            self.end = self._clock()

    def _clock(self) -> float:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        self.synchronizations += 1
        return time.perf_counter()

    def images_per_s(self, batch: int) -> float:
        if self.start is None or self.end is None or self.end <= self.start:
            raise RuntimeError(f"the timed window (after step {self.warmup}, {self.steps} steps) was not completed")
        return batch * self.steps / (self.end - self.start)

    def describe(self) -> dict[str, Any]:
        return {
            "warmup_steps": self.warmup,
            "timed_steps": self.steps,
            "synchronizations": self.synchronizations,
            "seconds": None if self.start is None or self.end is None else self.end - self.start,
        }


LIBRARIES = ("torch", "torchvision", "torchmetrics")  # a sync inside them counts for the code that called them
OWNERS = {
    "cnnkit": "cnnkit",
    "lightning": "lightning",
    "pytorch_lightning": "lightning",
    "lightning_fabric": "lightning",
}


def attribute(frame) -> tuple[str, str]:
    """(owner, module:line) of a host synchronization: the first frame outwards that is not torch, torchvision,
    torchmetrics or the standard library; cnnkit, Lightning or other code."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        top = module.split(".")[0]
        if top not in LIBRARIES and top not in sys.stdlib_module_names:
            return OWNERS.get(top, "other"), f"{module}:{frame.f_lineno}"
        frame = frame.f_back
    return "other", "(no Python frame: autograd or a C++ thread)"


class SyncCounter:
    """Host synchronizations per training step by the code that makes them, counted inside a watched window only.

    The window opens when step ``start`` has ended and closes when step ``start + steps`` has: each watched step
    runs from one step's end to the next one's (the batch fetch and augmentation, forward, backward, optimizer,
    hooks). On CUDA, torch's sync debug mode warns at each synchronizing call; on the CPU (the dry run) a
    dispatch mode stands in for it, counting the operators that read a value back to the host or size an
    output from data, which synchronize on CUDA. Counting is off outside the window, and ``stop`` (also at the
    end of training or on an exception; call it in a ``finally`` too) turns it off."""

    def __init__(self, start: int, steps: int, device: str = "cuda"):
        self.start, self.steps, self.device = start, steps, device
        self.watched = 0
        self.counts: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()
        self._stop: Optional[Callable[[], None]] = None

    def callback(self):
        return lightning_callback(self.at_step, self.stop)

    def at_step(self, done: int) -> None:
        if self._stop is not None:
            self.watched += 1
            if done >= self.start + self.steps:
                self.stop()
        elif done == self.start and self.watched == 0:
            self._stop = self._watch_cuda() if self.device == "cuda" else self._watch_cpu()

    def stop(self) -> None:
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()

    def record(self, frame) -> None:
        owner, site = attribute(frame)
        self.counts[owner] += 1
        self.sites[site] += 1

    def _watch_cuda(self) -> Callable[[], None]:
        import warnings

        import torch

        catcher = warnings.catch_warnings()
        catcher.__enter__()
        warnings.filterwarnings("always", message=".*synchroniz")
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if "synchroniz" in str(message):
                self.record(sys._getframe(1))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        torch.cuda.set_sync_debug_mode("warn")

        def stop() -> None:
            torch.cuda.set_sync_debug_mode(0)
            catcher.__exit__(None, None, None)

        return stop

    def _watch_cpu(self) -> Callable[[], None]:
        mode = host_reads_mode(self)
        mode.__enter__()
        return lambda: mode.__exit__(None, None, None)

    def summary(self) -> dict[str, Any]:
        steps = max(1, self.watched)
        return {
            "watched_steps": self.watched,
            "per_step": {k: v / steps for k, v in sorted(self.counts.items())},
            "sites": dict(self.sites.most_common(8)),
        }


def host_reads_mode(counter: SyncCounter):
    """The CPU form of CUDA's sync debug mode: a dispatch mode that records the operators which synchronize on CUDA."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    reads = {
        aten._local_scalar_dense,
        aten.nonzero,
        aten.masked_select,
        aten.equal,
        aten.is_nonzero,
        aten._unique,
        aten._unique2,
        aten.unique_dim,
        aten.unique_consecutive,
        aten.bincount,
        aten.repeat_interleave,
    }
    masks = {aten.index, aten.index_put, aten.index_put_}

    class HostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            packet = func.overloadpacket
            if packet in reads or (
                packet in masks
                and len(args) > 1
                and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] or ()))
            ):
                counter.record(sys._getframe(1))
            return func(*args, **(kwargs or {}))

    return HostReads()


def sync_counting_active() -> bool:
    """Whether a sync counter is on now (CUDA's sync debug mode, or the CPU form's dispatch mode)."""
    import torch
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    cuda = torch.cuda.is_available() and torch.cuda.get_sync_debug_mode() != 0
    return cuda or any(type(m).__name__ == "HostReads" for m in _get_current_dispatch_mode_stack())


# -- the parts that run in a child process -----------------------------------------------------------------
@dataclass
class Part:
    """What a part's process gets: its name, mode, deadlines (wall-clock) and where to write."""

    name: str
    cpu: bool
    faults: bool
    until: float  # the parent stops the process here
    soft: float  # no new model or case starts after this
    report: Report
    workdir: Path
    entry: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cpu" if self.cpu else "cuda"

    def save(self) -> None:
        self.report.put(self.name, self.entry)


def register_check_entries() -> None:
    """The check's own registry entries, as a user's plugin would add them."""
    import dataclasses

    from cnnkit.data.datasets import Synthetic
    from cnnkit.registry import CALLBACKS, DATASETS

    @DATASETS.register(
        "gpu_check_synthetic",
        override=True,
        description="generated images with no test split (the speed fits run no trainer.test)",
    )
    class NoTestSplit(Synthetic):
        def load(self):
            return dataclasses.replace(super().load(), test=None)

    CALLBACKS.register(
        "gpu_check_hook",
        lambda: HOOKS.pop(0),
        override=True,
        description="the check's timer or sync counter (benchmarks/gpu_check.py only)",
    )


HOOKS: list[Any] = []  # the callback objects the next fit's config names, in order


def record_environment(part: Part) -> None:
    import lightning as L
    import torch

    environment = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": L.__version__,
        "device": "cpu" if part.cpu else torch.cuda.get_device_name(0),
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    }
    part.report.change(lambda data: data.setdefault("environment", environment))


def recipe_order() -> list[Path]:
    recipes = sorted(p for p in (REPO / "recipes").glob("*.yaml") if not p.name.endswith(".cpu.yaml"))
    return sorted(recipes, key=lambda p: KEY_RECIPES.index(p.stem) if p.stem in KEY_RECIPES else len(KEY_RECIPES))


def recipe_models(recipe: Path, seen: set[str], samples: int) -> Iterator[tuple[str, list[str]]]:
    """(label, overrides) per model of ``recipe`` not in ``seen``: distinct (model, input shape, classes)."""
    import cnnkit
    from cnnkit.config.load import to_plain
    from cnnkit.experiments.matrix import combinations

    with redirect_stdout(io.StringIO()):  # an image folder that is not here says so: it is replaced anyway
        base = cnnkit.load_config([str(recipe)], validate_config=False)
    shaping, combos = set(), []
    for _, combo, values in combinations(base) if base.matrix else [("", [], {})]:
        keys = [k for k in values if k.split(".")[0] in ("model", "data")]  # only these change the network
        wanted = tuple(o for k, o in zip(values, combo) if k in keys)
        if wanted not in shaping:
            shaping.add(wanted)
            combos.append(list(wanted))
    for combo in combos:
        with redirect_stdout(io.StringIO()):
            cfg = cnnkit.load_config([str(recipe)], [*combo, "variant=probe"], validate_config=False)
            info = cnnkit.data_info(cfg)
        key = json.dumps([to_plain(cfg.model), list(info.input_shape), info.num_classes], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        data = (
            []
            if len(info.input_shape) != 3
            else [  # images: generated ones of the recipe's shape
                f"data.dataset={{name: synthetic, shape: {list(info.input_shape)}, num_classes: {info.num_classes}, "
                f"samples: {samples}}}"
            ]
        )
        yield f"{recipe.stem}:{'+'.join(combo) or 'default'}", [*combo, *data]


def quiet_fit(cfg):
    """``cnnkit.fit`` without its header line: the check prints one line per run of its own."""
    import cnnkit

    with redirect_stdout(io.StringIO()):
        return cnnkit.fit(cfg, overwrite=True)


def smoke_part(part: Part) -> bool:
    import cnnkit

    overlay = REPO / "configs" / "debug" / ("smoke.yaml" if part.cpu else "smoke_gpu.yaml")
    models: dict[str, str] = part.entry.setdefault("models", {})
    part.entry["order"] = f"key recipes first: {', '.join(KEY_RECIPES)}; then the others by name"
    seen: set[str] = set()
    extra = ["data.num_workers=0"] if part.cpu else []
    if part.faults:  # the deadline forced short, from the part's own start: a few models run, the rest are skipped
        part.soft = min(part.soft, time.time() + FAULT_SMOKE_SECONDS)
    for recipe in recipe_order():
        if time.time() > part.soft:
            models[f"{recipe.stem}:*"] = "skipped: the part's time ran out before its models were listed"
            part.save()
            continue
        for label, overrides in recipe_models(recipe, seen, 256):
            if time.time() > part.soft:
                models[label] = "skipped: the part's time ran out"
                part.save()
                continue
            started = time.monotonic()
            try:
                cfg = cnnkit.load_config(
                    [str(recipe), str(overlay)],
                    [
                        *overrides,
                        *extra,
                        f"runs_dir={part.workdir}",
                        f"name=smoke{len(models)}",
                        "data.batch_size=16",
                        "trainer.log_every_n_steps=1",
                        "checkpoint.save_top_k=0",
                        "checkpoint.save_last=false",
                    ],
                )
                status = quiet_fit(cfg).status
                models[label] = status if status in ("finished", "diverged") else f"failed: run {status}"
            except Exception as err:  # one model's failure is a finding, not the end of the check
                models[label] = f"failed: {type(err).__name__}: {err}".splitlines()[0][:500]
            say(f"   {label}: {models[label]} ({time.monotonic() - started:.1f} s)")
            part.save()
    states = Counter(v.split(":")[0] for v in models.values())
    part.entry["counts"] = dict(states)
    not_ok = {k: v for k, v in states.items() if k not in ("finished", "diverged")}
    if not_ok:
        part.entry["error"] = ", ".join(f"{n} {state}" for state, n in not_ok.items()) + f" of {len(models)} entries"
    return not not_ok


@dataclass(frozen=True)
class SpeedModel:
    label: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class SpeedSizes:
    samples: int
    warmup: int
    steps: int
    sync_start: int
    sync_steps: int


GPU_SPEED = (
    SpeedModel("ResNet-18 (cifar10_fast), batch 512"),
    SpeedModel(
        "small fast net (simple_cnn 64-128-256), batch 512",
        ("model.backbone={name: simple_cnn, channels: [64, 128, 256], hidden: [256]}",),
    ),
)
CPU_SPEED = (
    SpeedModel(
        "dry run: simple_cnn 8-16 for ResNet-18, batch 32",
        ("model.backbone={name: simple_cnn, channels: [8, 16], hidden: [32]}", "data.batch_size=32"),
    ),
    SpeedModel(
        "dry run: simple_cnn 8 for the small net, batch 32",
        ("model.backbone={name: simple_cnn, channels: [8], hidden: [16]}", "data.batch_size=32"),
    ),
)
GPU_SIZES = SpeedSizes(samples=50_000, warmup=10, steps=50, sync_start=5, sync_steps=10)
CPU_SIZES = SpeedSizes(samples=512, warmup=2, steps=3, sync_start=2, sync_steps=3)
# (model, precision, channels_last, compile): cifar10_fast's own setting first, compile last
SETTINGS = (
    (0, "bf16-mixed", True, False),
    (0, "32-true", False, False),
    (0, "bf16-mixed", False, False),
    (1, "bf16-mixed", True, False),
    (1, "32-true", False, False),
    (0, "bf16-mixed", True, True),
)
SPEED_COMMON = [
    "trainer.progress_bar=none",
    "trainer.limit_val_batches=0",
    "logger.wandb.mode=disabled",
    "checkpoint.save_top_k=0",
    "checkpoint.save_last=false",
    "checkpoint.monitor=train/loss_epoch",
    "checkpoint.mode=min",
    "trainer.max_epochs=-1",
    "trainer.devices=1",
    "trainer.num_nodes=1",
    "trainer.strategy=auto",
    "trainer.cudnn_benchmark=true",
    "trainer.deterministic=false",
]


def case_key(model: SpeedModel, precision: str, channels_last: bool, compiled: bool) -> str:
    return (
        f"{model.label} · {precision}"
        + (" · channels_last" if channels_last else "")
        + (" · compile" if compiled else "")
    )


def speed_config(
    part: Part,
    model: SpeedModel,
    sizes: SpeedSizes,
    switches: list[str],
    steps: int,
    hooks: int = 0,
    extra: tuple[str, ...] = (),
):
    import cnnkit

    callbacks = ", ".join(["gpu_check_hook"] * hooks)
    return cnnkit.load_config(
        [str(REPO / "recipes" / "cifar10_fast.yaml")],
        [
            *SPEED_COMMON,
            f"data.dataset={{name: gpu_check_synthetic, shape: [3, 32, 32], samples: {sizes.samples}}}",
            f"trainer.accelerator={'cpu' if part.cpu else 'gpu'}",
            *model.overrides,
            *switches,
            f"trainer.max_steps={steps}",
            f"runs_dir={part.workdir}",
            "name=speed",
            f"callbacks=[{callbacks}]",
            *extra,
        ],
    )


def cnnkit_images_per_s(part: Part, cfg, window: TimedWindow) -> float:
    HOOKS[:] = [lightning_callback(window.at_step)]
    result = quiet_fit(cfg)
    if result.status != "finished":
        raise RuntimeError(f"the cnnkit fit ended {result.status}")
    return window.images_per_s(cfg.data.batch_size)


class BareTrainer:
    """What cnnkit's builders read from a Lightning Trainer, for a plain loop that has none."""

    def __init__(self, cfg, datamodule, device):
        from types import SimpleNamespace

        self.strategy = SimpleNamespace(root_device=device)
        self.world_size, self.global_rank, self.accumulate_grad_batches = 1, 0, 1
        self.precision, self.datamodule = str(cfg.trainer.precision), datamodule
        self.limit_train_batches, self.max_epochs, self.max_steps = None, -1, int(cfg.trainer.max_steps)
        self.optimizers: list[Any] = []


def plain_images_per_s(part: Part, cfg, window: TimedWindow) -> float:
    """The same model, batches, optimizer and schedule — built by cnnkit from the same config and seed — in a
    plain loop: autocast for bf16, NHWC as cnnkit lays it out, ``Module.compile`` as cnnkit calls it."""
    import lightning as L
    import torch
    import torch.nn.functional as F

    import cnnkit

    device = torch.device(part.device)
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = cnnkit.build_datamodule(cfg)
    module = cnnkit.build_module(cfg, datamodule.info, datamodule)
    module.trainer = datamodule.trainer = BareTrainer(cfg, datamodule, device)
    module.to(device)
    model = module.model
    channels_last = bool(cfg.trainer.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.trainer.compile:
        model.compile()
    optimization = module.configure_optimizers()  # cnnkit's groups, weight decay, lr scaling, fused, schedule
    optimizer = optimization["optimizer"] if isinstance(optimization, dict) else optimization
    scheduler = optimization["lr_scheduler"]["scheduler"] if isinstance(optimization, dict) else None
    module.trainer.optimizers = [optimizer]
    torch.backends.cudnn.benchmark = bool(cfg.trainer.cudnn_benchmark)
    precision = str(cfg.trainer.precision)
    if precision not in ("32-true", "bf16-mixed"):
        raise ValueError(f"the plain loop runs 32-true and bf16-mixed, not {precision}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    clip = cfg.trainer.gradient_clip_val
    loader = datamodule.train_dataloader()
    model.train()
    done, epoch, total = 0, 0, int(cfg.trainer.max_steps)
    while done < total:
        if hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.loss.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            done += 1
            window.at_step(done)
            if done == total:
                break
        epoch += 1
    return window.images_per_s(cfg.data.batch_size)


def speed_case(
    part: Part, model: SpeedModel, sizes: SpeedSizes, precision: str, channels_last: bool, compiled: bool
) -> dict[str, Any]:
    """One alternation: the cnnkit fit, then the plain loop, on the same config."""
    switches = [
        f"trainer.precision={precision}",
        f"trainer.channels_last={str(channels_last).lower()}",
        f"trainer.compile={str(compiled).lower()}",
    ]
    steps = sizes.warmup + sizes.steps
    cfg = speed_config(part, model, sizes, switches, steps, hooks=1, extra=("trainer.log_every_n_steps=50",))
    ours_window, plain_window = (TimedWindow(sizes.warmup, sizes.steps, part.device) for _ in range(2))
    ours = cnnkit_images_per_s(part, cfg, ours_window)
    plain = plain_images_per_s(part, cfg, plain_window)
    return {
        "cnnkit_images_per_s": ours,
        "plain_images_per_s": plain,
        "cnnkit_step_time_ratio": plain / ours,
        "batch_size": int(cfg.data.batch_size),
        "timing": {"cnnkit": ours_window.describe(), "plain": plain_window.describe()},
    }


class PlantedHostRead:
    """--faults: one host read of the check's own per step, in and outside the watched steps."""

    def __init__(self):
        self.reads = 0

    def at_step(self, module) -> None:
        self.reads += 1
        next(module.parameters()).sum().item()


def count_syncs(part: Part, model: SpeedModel, sizes: SpeedSizes) -> dict[str, Any]:
    """Host syncs per step in cnnkit's training step, in a short run of its own (none of the timed runs)."""
    import lightning as L

    counter = SyncCounter(sizes.sync_start, sizes.sync_steps, part.device)
    planted = PlantedHostRead()

    class Plant(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            planted.at_step(pl_module)

    HOOKS[:] = [counter.callback()] + ([Plant()] if part.faults else [])
    steps = sizes.sync_start + sizes.sync_steps + 1
    cfg = speed_config(
        part,
        model,
        sizes,
        ["trainer.precision=bf16-mixed", "trainer.channels_last=true"],
        steps,
        hooks=len(HOOKS),
        extra=(f"trainer.log_every_n_steps={10 * steps}",),
    )  # no logging step
    try:
        quiet_fit(cfg)
    finally:
        counter.stop()
    planted_reads = {"planted_reads": planted.reads} if part.faults else {}
    return {
        "setting": "bf16-mixed · channels_last",
        **counter.summary(),
        "counting_after_the_run": sync_counting_active(),
        **planted_reads,
    }


def speed_part(part: Part) -> bool:
    models, sizes = (CPU_SPEED, CPU_SIZES) if part.cpu else (GPU_SPEED, GPU_SIZES)
    limits = CPU_LIMITS if part.cpu else GPU_LIMITS
    cases: dict[str, Any] = part.entry.setdefault("cases", {})
    syncs: dict[str, Any] = part.entry.setdefault("host_syncs_per_step", {})
    plan: list[tuple[dict[str, Any], str, Callable[[], dict[str, Any]], float]] = []
    if part.faults:
        broken = SpeedModel("fault: a case that fails", ("model.backbone={name: no_such_backbone}",))
        plan.append(
            (
                cases,
                case_key(broken, "32-true", False, False),
                lambda: speed_case(part, broken, sizes, "32-true", False, False),
                limits.case_cap,
            )
        )
    counted: set[int] = set()
    for index, precision, channels_last, compiled in SETTINGS:
        model = models[index]
        key = case_key(model, precision, channels_last, compiled)

        def run(m=model, p=precision, c=channels_last, k=compiled):
            return speed_case(part, m, sizes, p, c, k)

        plan.append((cases, key, run, limits.compile_cap if compiled else limits.case_cap))
        if index not in counted and not compiled:
            counted.add(index)
            plan.append((syncs, model.label, lambda m=model: count_syncs(part, m, sizes), limits.case_cap))
    if part.faults:
        plan.append((cases, "fault: a case that hangs", lambda: time.sleep(3600) or {}, FAULT_CASE_CAP))
    keys = [(id(table), key) for table, key, _, _ in plan]
    if len(set(keys)) != len(keys):
        raise ValueError("two speed cases under one key: one would hide the other")
    for table, key, run, cap in plan:
        left = part.until - time.time()
        compiled = key.endswith("compile")
        if time.time() > part.soft or (compiled and left < limits.compile_min):
            table[key] = {"skipped": f"not started: {left:.0f} s left of the part's bound"}
            part.save()
            continue
        started = time.monotonic()
        with capped(part, table, key, min(cap, left)):
            try:
                table[key] = {**run(), "seconds": time.monotonic() - started}
            except Exception as err:  # one case's failure leaves the others' figures
                table[key] = {
                    "error": f"{type(err).__name__}: {err}".splitlines()[0][:500],
                    "seconds": time.monotonic() - started,
                    "traceback": traceback.format_exc()[-2000:],
                }
        say(f"   {key}: {_case_line(table[key])}")
        part.save()
    bad = [k for table in (cases, syncs) for k, v in table.items() if "error" in v or "skipped" in v or "cut" in v]
    if bad:
        part.entry["error"] = f"{len(bad)} not measured: " + "; ".join(bad)
    return not bad


@contextmanager
def capped(part: Part, table: dict[str, Any], key: str, seconds: float) -> Iterator[None]:
    """Bound one case: past ``seconds`` its entry says so, gpu.json is written and this process ends (what ran
    before it is kept; the parent goes on with the next part)."""

    def cut() -> None:
        table[key] = {"cut": f"at its cap of {seconds:.0f} s"}
        part.entry["error"] = f"{key}: cut at its cap of {seconds:.0f} s"
        part.save()
        say(f"   {key}: cut at its cap of {seconds:.0f} s")
        os._exit(3)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _case_line(case: dict[str, Any]) -> str:
    if "cnnkit_images_per_s" in case:
        return (
            f"cnnkit {case['cnnkit_images_per_s']:,.0f} images/s, plain {case['plain_images_per_s']:,.0f}, "
            f"cnnkit step time {case['cnnkit_step_time_ratio']:.3f}x the plain loop's"
        )
    if "per_step" in case:
        return f"host syncs per step {case['per_step'] or 0} over {case['watched_steps']} watched steps"
    return next((f"{k}: {v}" for k, v in case.items() if k in ("error", "skipped", "cut")), str(case))


def child_main(args) -> int:
    report = Report(Path(args.output))
    part = Part(
        args.part,
        args.cpu,
        args.faults,
        args.until,
        args.soft,
        report,
        Path(args.workdir),
        report.load().get(args.part, {}),
    )
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch

    from cnnkit.console import configure

    configure(verbose_output=False)  # Lightning's banners stay out of the check's output
    if not args.cpu and not torch.cuda.is_available():
        part.entry["error"] = "no CUDA device"
        part.save()
        return 1
    register_check_entries()
    record_environment(part)
    ok = {SMOKE: smoke_part, SPEED: speed_part}[args.part](part)
    part.entry["complete"] = True
    part.save()
    return 0 if ok else 1


# -- the check ----------------------------------------------------------------------------------------------
def child_env(args) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.update(
        WANDB_MODE="disabled",
        WANDB_SILENT="true",
        CNNKIT_NO_PLUGINS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    )
    if args.cpu:
        env["CNNKIT_GPU_TESTS_ON_CPU"] = "1"  # tests/test_gpu.py runs on the CPU
        env["TORCH_COMPILE_OVERRIDE_BACKENDS"] = ">=0:eager"  # dynamo only: inductor's C++ build takes minutes here
    return env


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="the dry run on the CPU")
    parser.add_argument("--faults", action="store_true", help="with --cpu: plant the faults the check must survive")
    parser.add_argument("--budget", type=float, help="seconds for the whole check (GPU default 225, CPU 600)")
    parser.add_argument(
        "--output",
        help="gpu.json's path (default benchmarks/results/gpu.json; with --cpu $TMPDIR/cnnkit-gpu-check/gpu.json)",
    )
    for internal in ("--part", "--until", "--soft", "--workdir"):
        parser.add_argument(internal, help=argparse.SUPPRESS, type=float if internal in ("--until", "--soft") else str)
    args = parser.parse_args(argv)
    if args.faults and not args.cpu:
        parser.error("--faults goes with --cpu (the dry run)")
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "cnnkit-gpu-check"
    if args.output is None:
        args.output = str(scratch / "gpu.json" if args.cpu else REPO / "benchmarks" / "results" / "gpu.json")
    if args.part:
        return child_main(args)
    signal.signal(signal.SIGTERM, _terminated)  # a command limit's SIGTERM: the parts' process groups go too
    limits = CPU_LIMITS if args.cpu else GPU_LIMITS
    budget = args.budget if args.budget is not None else limits.budget
    end = START + budget
    report = Report(Path(args.output))
    report.write(
        {
            "check": {
                "mode": "cpu dry run" if args.cpu else "gpu",
                "faults": args.faults,
                "budget_s": budget,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
        }
    )
    left = end - time.monotonic()
    bounds = {name: min(limits.caps[name], left - limits.speed_reserve) for name in (PYTEST, SMOKE)}
    say(
        f"== {PYTEST} (bound {bounds[PYTEST]:.0f} s); beside it, the {SMOKE} (bound {bounds[SMOKE]:.0f} s; "
        f"its lines start 'smoke |')"
    )
    smoke = threading.Thread(target=run_part, args=(args, limits, report, SMOKE, bounds[SMOKE], scratch))
    smoke.start()
    try:
        run_part(args, limits, report, PYTEST, bounds[PYTEST], scratch)
    except BaseException:  # Ctrl-C: the smoke runs stop too
        STOP.set()
        raise
    finally:
        smoke.join()
    bound = end - time.monotonic()
    say(f"== {SPEED}, alone on the machine (bound {bound:.0f} s)")
    run_part(args, limits, report, SPEED, bound, scratch)
    return summarize(report, time.monotonic() - START)


def _terminated(signum, frame) -> None:
    STOP.set()
    raise SystemExit(128 + signum)


def run_part(args, limits: Limits, report: Report, name: str, bound: float, scratch: Path) -> None:
    """One part under its bound; its entry in gpu.json says ok, the seconds it took and its bound."""
    entry: dict[str, Any] = {"ok": False, "bound_s": round(bound, 1)}
    if bound < 5:
        entry["error"] = f"not started: {bound:.0f} s of the budget left for it"
        report.put(name, entry)
        say(f"   {name}: NOT OK: {entry['error']}")
        return
    report.put(name, entry)
    started = time.monotonic()
    try:
        if name == PYTEST:
            ok = pytest_part(args, limits, report, entry, bound, scratch)
        else:
            ok = child_part(args, limits, report, name, bound, scratch)
            entry = report.load()[name]
    except BaseException:  # interrupted: the entry says so, what it measured stays
        report.change(lambda data: data[name].setdefault("error", "the check was interrupted"))
        raise
    entry.update(ok=ok, seconds=round(time.monotonic() - started, 1))
    report.put(name, entry)
    if not ok:
        say(f"   {name}: NOT OK: {entry.get('error', '')[:2000]}")


def child_part(args, limits: Limits, report: Report, name: str, bound: float, scratch: Path) -> bool:
    """The smoke or speed part in a process of its own: stopped at its bound, what it wrote is kept."""
    until = time.time() + bound
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--part",
        name,
        "--until",
        str(until),
        "--soft",
        str(until - limits.tail[name]),
        "--output",
        str(args.output),
        "--workdir",
        str(scratch / "runs"),
    ]
    cmd += ["--cpu"] * args.cpu + ["--faults"] * args.faults
    lines = Lines(prefix="smoke | " if name == SMOKE else "")  # the smoke runs print beside pytest
    rc, cut = run_bounded(cmd, child_env(args), bound + 2, on_output=lines.feed)
    lines.close()
    entry = report.load().get(name, {})
    if cut or not entry.get("complete"):
        entry.setdefault("error", f"its process {cut or f'ended with exit code {rc}'} before it finished")
    report.put(name, entry)
    return rc == 0 and bool(entry.get("complete")) and "error" not in entry


def summarize(report: Report, seconds: float) -> int:
    data = report.load()
    data["check"]["seconds"] = round(seconds, 1)
    report.write(data)
    report.lock.unlink(missing_ok=True)
    say(f"\n{'part':<32} {'result':<8} {'seconds':>8} {'bound':>6}")
    for name in PARTS:
        part = data.get(name, {})
        say(
            f"{name:<32} {'ok' if part.get('ok') else 'NOT OK':<8} {part.get('seconds', 0):>8.1f} "
            f"{part.get('bound_s', 0):>6.0f}"
        )
    tests = data.get(PYTEST, {}).get("outcomes")
    if tests:
        say(f"  tests: {', '.join(f'{n} {k}' for k, n in tests.items())}")
    models = data.get(SMOKE, {}).get("counts")
    if models:
        say(f"  smoke models: {', '.join(f'{n} {k}' for k, n in models.items())}")
    for table in ("cases", "host_syncs_per_step"):
        for key, case in data.get(SPEED, {}).get(table, {}).items():
            say(f"  {key}: {_case_line(case)}")
    say(f"wrote {report.path} ({seconds:.0f} s)")
    return 0 if all(data.get(name, {}).get("ok") for name in PARTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())
