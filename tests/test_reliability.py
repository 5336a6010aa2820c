"""Reliability: exact resume after SIGKILL, checkpoints that never corrupt."""

import json
import subprocess
import textwrap

import pytest
import torch

from .conftest import QUICKSTART, REPO, SMOKE, assert_one_line_error, cli, run_cli

EXACT = [
    "trainer.deterministic=true",
    "trainer.max_epochs=2",
    "trainer.progress_bar=none",
    "trainer.enable_model_summary=false",
    "checkpoint.every_n_steps=4",
    "trainer.log_every_n_steps=1",
    "model.backbone={name: simple_cnn, channels: [8, 16], hidden: [32], dropout: 0.3}",
    "data.augment=[random_crop, horizontal_flip, cutout]",
    "optim.scheduler=cosine",
]

KILLER = textwrap.dedent("""
    import os, signal
    import signal as _signal
    from typing import Optional
    import lightning as L
    from cnnkit import CALLBACKS

    @CALLBACKS.register("kill_at")
    class KillAt(L.Callback):
        \"\"\"Send ``signal`` once (per rank) after optimizer step ``step``, or as training epoch ``epoch`` starts.

        Once: the resumed run is the same command, callback included, and must not stop again.
        \"\"\"

        def __init__(self, step: Optional[int] = None, epoch: Optional[int] = None, signal: str = "SIGKILL"):
            self.step, self.epoch, self.signal = step, epoch, signal
            # Ctrl-C as a terminal's process gets it: a test runner's worker may hand its children SIGINT
            # ignored (seen under CI's xdist workers), and an ignored signal stays ignored across exec
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)

        def _fire(self, trainer):
            marker = f"killed.{trainer.global_rank}"
            if not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), getattr(signal, self.signal))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == self.step:
                self._fire(trainer)

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == self.epoch:
                self._fire(trainer)
""")


def only_run(root):
    """The one run directory under runs/<name>/ (its variant is named from the command's overrides)."""
    (path,) = [p for p in root.iterdir() if p.is_dir()]
    return path


def final_state(path):
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["state_dict"], checkpoint["optimizer_states"][0], checkpoint["global_step"]


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@pytest.fixture(scope="module")
def kill_images(tmp_path_factory):
    """A 32x32 PNG class-folder tree (4 classes x 150 training images: 9 steps per epoch at batch 64)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("kill-images")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 150), ("val", 20), ("test", 20)):
        for c in range(4):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(32, 32, 3, generator=gen) * 100 + 40 * c).byte().numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def with_images(data: tuple[str, ...], root) -> list[str]:
    return [item.replace("IMAGES", str(root)) for item in data]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, kill_images):
    """The uninterrupted run of each data path, computed once for all kill points."""
    done = {}

    def run(data: tuple[str, ...]):
        if data not in done:
            cwd = tmp_path_factory.mktemp("straight")
            args = [
                "fit",
                "--config",
                QUICKSTART,
                *EXACT,
                *with_images(data, kill_images),
                "name=straight",
                f"runs_dir={cwd / 'runs'}",
            ]
            proc = run_cli(*args, cwd=cwd, timeout=600) if needs_processes(data) else cli(*args)
            assert proc.returncode == 0, proc.stderr[-2000:]
            run = only_run(cwd / "runs/straight")
            done[data] = (final_state(run / "checkpoints/last.ckpt"), (run / "metrics.csv").read_text())
        return done[data]

    return run


def needs_processes(data: tuple[str, ...]) -> bool:
    """DDP starts its ranks by running the command again: only a process of its own can do that."""
    return any("ddp" in item for item in data)


# 19 steps per epoch (16 under DDP): step 26 is inside epoch 1; "epoch 1" kills as it starts, after epoch 0's
# validation saved last.ckpt; workers > 0 start fresh processes in the resumed run. Under DDP every
# rank kills itself at the step; the resumed ranks restore their own RNG states and data shards, and
# the epoch's training metrics (summed over ranks when saved) log the same values. "after the best"
# uses the quickstart's own checkpoint settings (no step saves) with a best checkpoint that stops
# improving after epoch 0: last.ckpt must still be epoch 1's end. SIGINT lands inside a hook, SIGTERM
# stops at the next batch boundary; both leave status "interrupted" and exit 128 + the signal.
TENSOR = ("data.loader=tensor",)
# a cached image folder on the tensor path, with every batched transform of the course's HW3 tiers
CACHED_FOLDER = (
    "data.dataset={name: image_folder, root: IMAGES}",
    "data.cache=disk",
    "data.loader=tensor",
    "data.augment=[random_resized_crop, horizontal_flip, color_jitter, random_rotation]",
)
AFTER_BEST = (
    "data.loader=tensor",
    "checkpoint.every_n_steps=null",
    "checkpoint.monitor=epoch",
    "checkpoint.mode=min",
    "trainer.max_epochs=3",
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, kill",
    [
        (TENSOR, "step: 26"),
        (TENSOR, "epoch: 1"),
        (("data.loader=dataloader", "data.num_workers=0"), "step: 26"),
        (("data.loader=dataloader", "data.num_workers=2"), "step: 26"),
        (("data.loader=dataloader", "data.num_workers=2"), "epoch: 1"),
        (("--config", str(REPO / "configs/trainer/ddp_cpu.yaml"), "trainer.max_epochs=3"), "step: 26"),
        (AFTER_BEST, "epoch: 2"),
        (TENSOR, "step: 26, signal: SIGINT"),
        (TENSOR, "step: 26, signal: SIGTERM"),
        (CACHED_FOLDER, "step: 13"),
    ],
    ids=[
        "tensor-mid-epoch",
        "tensor-epoch-boundary",
        "dataloader-mid-epoch",
        "workers-mid-epoch",
        "workers-epoch-boundary",
        "ddp-two-processes-mid-epoch",
        "after-the-last-improvement",
        "sigint-mid-epoch",
        "sigterm-mid-epoch",
        "cached-image-folder-mid-epoch",
    ],
)
def test_killed_and_resumed_run_ends_bitwise_equal(tmp_path, uninterrupted, kill_images, data, kill):
    (tmp_path / "killer.py").write_text(KILLER)
    common = [
        "--config",
        QUICKSTART,
        *EXACT,
        *with_images(data, kill_images),
        "name=killed",
        "imports=[killer.py]",
        f"callbacks=[{{name: kill_at, {kill}}}]",
    ]
    killed = run_cli("fit", *common, cwd=tmp_path, timeout=600)
    run = only_run(next((tmp_path / "runs").glob("**/killed")))  # runs/killed; runs/ddp_cpu/killed
    status = json.loads((run / "status.json").read_text())
    signal = kill.partition("signal: ")[2]
    if signal:  # exit 128 + signal, and one last cnnkit line saying where it stopped and how to resume
        assert killed.returncode == {"SIGINT": 130, "SIGTERM": 143}[signal], killed.stderr[-2000:]
        assert status["status"] == "interrupted" and status["step"] == 26 and status["signal"] == signal
        last = killed.stderr.strip().splitlines()[-1]
        assert last == (
            f"cnnkit: killed/{run.name} interrupted by {signal} at step 26; resume it from its last "
            f"checkpoint with the same command and --ckpt last"
        ), killed.stderr[-2000:]
        assert sum(line.startswith("cnnkit:") for line in killed.stderr.splitlines()) == 1
        assert "Traceback" not in killed.stderr
    else:
        assert killed.returncode == -9
        assert status["status"] == "running"  # what a kill leaves; resume picks it up
    # the kill needs a process of its own; the resume (and the uninterrupted run) may run in this one
    resumed = (
        run_cli("fit", *common, "--ckpt", "last", cwd=tmp_path, timeout=600)
        if needs_processes(data)
        else cli("fit", *common, "--ckpt", "last")
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, metrics = uninterrupted(data)
    b = final_state(run / "checkpoints/last.ckpt")
    # every logged value (step losses, the resumed epoch's train/acc and train/loss_epoch, val, test)
    assert (run / "metrics.csv").read_text() == metrics
    assert a[2] == b[2]
    assert_same(a[0], b[0])  # parameters and BN buffers
    assert_same(a[1], b[1])  # optimizer state
    assert sorted(p.name for p in (run / "checkpoints").glob("last*")) == ["last.ckpt"]


@pytest.mark.slow
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    common = [
        "--config",
        QUICKSTART,
        "trainer.max_epochs=2",
        "trainer.progress_bar=none",
        "trainer.enable_model_summary=false",
        "checkpoint.save_top_k=0",
        "checkpoint.every_n_steps=5",
    ]
    proc = run_cli("fit", *common, cwd=tmp_path, env_extra={"CNNKIT_FAULT_KILL_IN_SAVE": "2"})
    assert proc.returncode == -9
    run = only_run(tmp_path / "runs/quickstart")
    checkpoints = run / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)  # the first save, whole
    assert last["global_step"] == 5
    assert not list(checkpoints.glob("*.tmp")) or all(p.name.startswith(".") for p in checkpoints.glob("*.tmp"))
    resumed = cli("fit", *common, "--ckpt", "last")  # the kill needed a process; the resume runs here
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    import resource
    import sys

    common = [
        "--config",
        QUICKSTART,
        "trainer.max_epochs=2",
        "trainer.progress_bar=none",
        "trainer.enable_model_summary=false",
        "checkpoint.save_top_k=0",
        "checkpoint.every_n_steps=5",
        "logger.wandb.mode=disabled",
        "optim.scheduler=constant",
        "variant=default",
    ]
    first = cli("fit", *common, "trainer.max_steps=5")  # one whole checkpoint first (in this process)
    assert first.returncode == 0, first.stderr[-2000:]
    size = (tmp_path / "runs/quickstart/default/checkpoints/last.ckpt").stat().st_size

    def limit():  # files may grow to half a checkpoint: the next save cannot complete
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    env = {
        **__import__("os").environ,
        "WANDB_MODE": "disabled",
        "CNNKIT_NO_PLUGINS": "1",
        "PYTHONPATH": str(QUICKSTART.rsplit("/recipes", 1)[0]),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cnnkit", "fit", *common, "--ckpt", "last"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cnnkit: error:")]
    assert len(errors) == 1 and "disk is full or a file-size limit" in errors[0] and "Traceback" not in proc.stderr
    checkpoints = tmp_path / "runs/quickstart/default/checkpoints"
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5
    assert not list(checkpoints.glob(".*.tmp"))
    assert json.loads((tmp_path / "runs/quickstart/default/status.json").read_text())["status"] == "failed"


def test_a_diverged_run_keeps_its_last_good_checkpoint_and_refuses_to_resume():
    import cnnkit
    from cnnkit.errors import CnnkitError

    from .conftest import tiny_config

    # lr 1e4 overflows the weights in an update a step before the loss turns non-finite: the save in
    # between must not replace the last good checkpoint
    cfg = tiny_config(
        "optim.lr=1.0e+4",
        "optim.scheduler=constant",
        "checkpoint.every_n_steps=2",
        "trainer.limit_train_batches=10",
        "trainer.max_epochs=3",
    )
    result = cnnkit.fit(cfg)
    assert result.status == "diverged" and result.diverged["what"] in ("weights", "training loss")
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "diverged" and status["last_good"].endswith("last.ckpt")
    checkpoints = sorted((result.run_dir / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "the steps before the divergence were saved"
    for path in checkpoints:
        checkpoint = torch.load(path, weights_only=True)
        assert checkpoint["global_step"] <= status["step"]
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values() if t.is_floating_point())
    with pytest.raises(
        CnnkitError,
        match=r"diverged \(non-finite .* at step \d+ \(lr 10000\)\); resuming it would "
        r"diverge again: .* --init-from .*last.ckpt --overwrite",
    ):
        cnnkit.fit(cfg, ckpt="last")


def test_resuming_a_finished_run_does_nothing_unless_it_may_train_longer():
    import cnnkit

    from .conftest import tiny_config

    cfg = tiny_config("optim.scheduler=constant")
    first = cnnkit.fit(cfg)
    metrics = (first.run_dir / "metrics.csv").read_text()
    again = cnnkit.fit(cfg, ckpt="last")
    assert again.status == "finished" and again.metrics == first.metrics
    assert again.best_checkpoint == first.best_checkpoint and again.last_checkpoint == first.last_checkpoint
    assert (first.run_dir / "metrics.csv").read_text() == metrics  # untouched
    (longer,) = cnnkit.fit_recipe(
        [QUICKSTART, SMOKE], ["optim.scheduler=constant", "trainer.max_epochs=2"], ckpt="last"
    )
    assert longer.status == "finished" and longer.run_dir == first.run_dir
    assert torch.load(longer.last_checkpoint, weights_only=True)["epoch"] == 1


def test_resuming_a_run_that_a_live_process_is_training_is_refused(tmp_path):
    import socket
    import sys

    import cnnkit
    from cnnkit.errors import CnnkitError

    from .conftest import tiny_config

    cfg = tiny_config()
    first = cnnkit.fit(cfg)
    status = first.run_dir / "status.json"
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "cnnkit", "fit"])
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a reused pid
    try:
        status.write_text(
            json.dumps({"status": "running", "step": 3, "pid": trainer.pid, "host": socket.gethostname()})
        )
        with pytest.raises(CnnkitError, match=f"is being trained right now by process {trainer.pid}"):
            cnnkit.fit(cfg, ckpt="last")
        # the same pid now belongs to a process that is not cnnkit: the run's own process is gone
        status.write_text(
            json.dumps({"status": "running", "step": 3, "pid": stranger.pid, "host": socket.gethostname()})
        )
        assert cnnkit.fit(cfg, ckpt="last").status == "finished"
    finally:
        for process in (trainer, stranger):
            process.kill()
            process.wait()
    status.write_text(json.dumps({"status": "running", "step": 3, "pid": trainer.pid, "host": socket.gethostname()}))
    assert cnnkit.fit(cfg, ckpt="last").status == "finished"  # that process is gone: resume


# -- bad input: one line, exit 2, nothing half-written ---------------------------------------------
@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A real cnnkit checkpoint of the quickstart model (a few steps)."""
    import cnnkit

    root = tmp_path_factory.mktemp("trained")
    result = cnnkit.fit(cnnkit.load_config([QUICKSTART, SMOKE], [f"runs_dir={root / 'runs'}"]))
    assert result.status == "finished"
    return result.last_checkpoint


def image_folder(root, empty_class=False, unreadable=False):
    """train/ and val/ with classes a and b, 4 tiny images each."""
    from PIL import Image

    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = root / "images" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            if empty_class and split == "train" and name == "b":
                continue
            for i in range(4):
                Image.new("RGB", (8, 8), (60 * i, 100, 30)).save(folder / f"{i}.png")
    if unreadable:
        (root / "images" / "train" / "a" / "broken.png").write_bytes(b"not a png")
    return f"data.dataset={{name: image_folder, root: {root / 'images'}, image_size: 8}}"


def truncated(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "cut.ckpt")


def not_cnnkit(tmp_path):
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, tmp_path / "plain.ckpt")
    return str(tmp_path / "plain.ckpt")


def a_file_named_runs(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    return "runs_dir=runs"


def python_tagged_yaml(tmp_path):
    (tmp_path / "evil.yaml").write_text("name: !!python/object/apply:os.system ['touch pwned']\n")
    return str(tmp_path / "evil.yaml")


FIT = ("fit", "--config", QUICKSTART, "--config", SMOKE)
BAD_INPUTS = {
    "checkpoint of another model": (
        lambda t, ckpt: [*FIT, "--ckpt", str(ckpt), "model.backbone={name: mlp, hidden: [16]}"],
        "was trained with another config (model.backbone.name simple_cnn → mlp, model.backbone.hidden [128] → "
        "[16], model.backbone.channels [32,64] → null); --ckpt resumes that run as it was",
    ),
    "truncated checkpoint": (lambda t, ckpt: ["test", "--ckpt", truncated(ckpt, t)], "is corrupt or truncated"),
    "not a cnnkit checkpoint": (lambda t, ckpt: ["test", "--ckpt", not_cnnkit(t)], "not a cnnkit checkpoint"),
    "empty class folder": (lambda t, ckpt: [*FIT, image_folder(t, empty_class=True)], "b' has no images"),
    "num_classes mismatch": (lambda t, ckpt: [*FIT, image_folder(t)[:-1] + ", num_classes: 3}"], "num_classes=3 but"),
    "unknown matrix key": (
        lambda t, ckpt: [*FIT, "matrix={model.nrom: [none, bn_pre]}"],
        "matrix: key 'model.nrom' does not exist in the config",
    ),
    "imports that fail": (lambda t, ckpt: [*FIT, "imports=[no_such_module_of_mine]"], "no_such_module_of_mine"),
    "run directory path is a file": (lambda t, ckpt: [*FIT, a_file_named_runs(t)], "exists and is a file"),
    "YAML that would run code": (
        lambda t, ckpt: [*FIT, "--config", python_tagged_yaml(t)],
        "could not determine a constructor for the tag",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2_and_leaves_nothing(case, tmp_path, trained_checkpoint, trainers):
    make_args, fragment = BAD_INPUTS[case]
    assert_one_line_error(cli(*make_args(tmp_path, trained_checkpoint)), fragment)
    assert not (tmp_path / "runs").is_dir() and not (tmp_path / "pwned").exists()
    assert trainers == []  # refused before Lightning's Trainer exists


@pytest.mark.parametrize("norm, cache", [("bn_pre", "auto"), ("none", "auto"), ("bn_pre", "none"), ("none", "none")])
def test_an_unreadable_image_is_one_line_naming_the_file(tmp_path, norm, cache):
    """A folder that fits in memory is decoded before the run starts, and bn_pre standardizes the inputs
    with every training image: either way nothing is written. Otherwise images are read as training goes,
    in a worker: the run ends marked failed."""
    proc = cli(
        *FIT,
        image_folder(tmp_path, unreadable=True),
        f"model.norm={norm}",
        "data.num_workers=1",
        "trainer.limit_train_batches=null",
        "data.batch_size=2",
        f"data.cache={cache}",
    )
    assert "broken.png' (Unsupported image file" in proc.stderr and ".cpp" not in proc.stderr
    if norm == "bn_pre" or cache == "auto":
        assert_one_line_error(proc, "cannot read image")
        assert not (tmp_path / "runs").exists()
    else:  # Lightning has started and said so; the error is still one line
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("cnnkit: error:")]
        assert len(errors) == 1 and "cannot read image" in errors[0]
        status = json.loads((only_run(tmp_path / "runs/smoke/quickstart") / "status.json").read_text())
        assert status["status"] == "failed" and "broken.png" in status["reason"]
        assert not list((tmp_path / "runs").rglob("*.tmp"))


def test_a_diverging_variant_is_one_line_and_the_matrix_finishes_the_others(tmp_path):
    recipe = tmp_path / "d.yaml"
    recipe.write_text(
        "name: diverge\nmodel: {norm: none, act: identity}\noptim: {scheduler: constant}\n"
        "matrix:\n  optim.lr: [1.0e+30, 0.01]\n"
    )
    proc = cli(*FIT, "--config", str(recipe))
    assert proc.returncode == 0, proc.stderr[-2000:]  # the matrix ran to its end
    lines = [line for line in proc.stdout.splitlines() if " diverged: " in line]
    assert len(lines) == 1
    assert lines[0].startswith("[1/2] lr=1e+30  diverged: non-finite training loss at step ")
    assert "(lr 1e+30)" in lines[0]
    assert any(line.startswith("[2/2] lr=0.01  finished") for line in proc.stdout.splitlines()), proc.stdout
    assert "(1 diverged, 1 finished)" in proc.stdout
    alone = cli(*FIT, "--config", str(recipe), "--only", "optim.lr=1.0e+30", "--overwrite")
    assert alone.returncode == 3  # a single diverged run is a failed command


def test_gradient_clipping_and_anomaly_detection_switches():
    import lightning as L

    import cnnkit
    from cnnkit import CALLBACKS

    from .conftest import tiny_config

    @CALLBACKS.register("record_first_update", override=True)
    class RecordFirstUpdate(L.Callback):
        """How far the first optimizer step moved the weights, and whether anomaly detection was on."""

        seen: dict = {}

        def on_train_start(self, trainer, pl_module):
            self.before = [p.detach().clone() for p in pl_module.parameters()]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            moved = torch.stack([(p.detach() - b).norm() for p, b in zip(pl_module.parameters(), self.before)])
            RecordFirstUpdate.seen.update(moved=float(moved.norm()), anomaly=torch.is_anomaly_enabled())

    def first_update(*overrides):
        cnnkit.fit(
            tiny_config(
                "trainer.max_steps=1",
                "optim.weight_decay=0",
                "optim.scheduler=constant",
                "optim.optimizer=sgd",
                "optim.lr=0.1",
                "callbacks=[record_first_update]",
                *overrides,
            ),
            overwrite=True,
        )
        return dict(RecordFirstUpdate.seen)

    free = first_update()
    clipped = first_update("trainer.gradient_clip_val=1.0e-6", "trainer.detect_anomaly=true")
    assert free["moved"] > 1e-3 and not free["anomaly"]
    assert clipped["moved"] <= 0.1 * 1.0e-6 * 1.001  # lr x the gradient norm it was clipped to
    assert clipped["anomaly"]
