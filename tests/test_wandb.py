"""W&B failure modes: whatever W&B does, the training run completes and keeps its local metrics."""

import http.server
import sys
import textwrap
import threading

import pytest

import cnnkit
from cnnkit.config.load import load_config

from .conftest import QUICKSTART, SMOKE, run_cli


@pytest.fixture(autouse=True)
def fresh_wandb():
    """wandb keeps its settings (base URL, key) in a process-wide singleton: start each test without it."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        try:
            wandb.teardown()
        except Exception:
            pass


def fit_online(monkeypatch, base_url: str, api_key: str):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", api_key)
    monkeypatch.setenv("WANDB_BASE_URL", base_url)
    cfg = load_config([QUICKSTART, SMOKE], ["logger.wandb.mode=online", "logger.wandb.init_timeout=5"])
    return cnnkit.fit(cfg)


def assert_finished_with_local_metrics(result):
    assert result.status == "finished"
    assert "test/acc" in (result.run_dir / "metrics.csv").read_text()


class Unauthorized(http.server.BaseHTTPRequestHandler):
    """What W&B's server answers a key it does not know."""

    def _deny(self):
        body = b'{"data": null, "errors": [{"message": "user is not logged in"}]}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _deny

    def log_message(self, *args):
        pass


@pytest.fixture
def rejecting_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unauthorized)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_no_network(monkeypatch, capsys):
    result = fit_online(monkeypatch, "http://127.0.0.1:9", "0" * 40)  # a closed local port
    assert_finished_with_local_metrics(result)
    assert "W&B logging is off for this run: it could not start" in capsys.readouterr().err


def test_a_key_the_server_rejects(monkeypatch, capsys, rejecting_server):
    result = fit_online(monkeypatch, rejecting_server, "0" * 40)
    assert_finished_with_local_metrics(result)
    err = capsys.readouterr().err
    assert "W&B logging is off for this run" in err and "401" in err


def test_a_malformed_key(monkeypatch, capsys, rejecting_server):
    result = fit_online(monkeypatch, rejecting_server, "short")
    assert_finished_with_local_metrics(result)
    assert "AuthenticationError" in capsys.readouterr().err


def test_wandb_not_importable(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    cfg = load_config([QUICKSTART, SMOKE], ["logger.wandb.mode=offline"])
    assert_finished_with_local_metrics(cnnkit.fit(cfg))
    assert "W&B logging is off: wandb cannot be imported" in capsys.readouterr().err


SERVICE_KILLER = textwrap.dedent("""
    import os, signal
    import lightning as L
    from cnnkit import CALLBACKS

    @CALLBACKS.register("kill_wandb_service")
    class KillWandbService(L.Callback):
        \"\"\"SIGKILL this process's W&B service (wandb-core) after optimizer step ``step``.\"\"\"

        def __init__(self, step: int):
            self.step = step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step != self.step:
                return
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        if b"wandb-core" in cmdline.read():
                            os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the service process through /proc")
def test_the_wandb_service_dying_mid_run(tmp_path):
    (tmp_path / "killer.py").write_text(SERVICE_KILLER)
    proc = run_cli(
        "fit",
        "--config",
        QUICKSTART,
        "trainer.max_epochs=2",
        "trainer.progress_bar=none",
        "logger.wandb.mode=offline",
        "imports=[killer.py]",
        "callbacks=[{name: kill_wandb_service, step: 5}]",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B logging stopped mid-run" in proc.stderr and "Traceback" not in proc.stderr
    assert "cnnkit: finished" in proc.stdout
    (run,) = (tmp_path / "runs/quickstart").iterdir()  # named from the overrides: imports=[killer.py]
    assert "test/acc" in (run / "metrics.csv").read_text()


def test_a_server_that_never_answers_costs_a_bounded_wait(monkeypatch, capsys, tmp_path):
    """wandb gives up init_timeout seconds into creating the run (its own checks add about 10 s)."""
    import socket
    import time

    from cnnkit.training.loggers import make_wandb_logger

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections, never answers
    try:
        monkeypatch.setenv("WANDB_MODE", "online")
        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        cfg = load_config([QUICKSTART, SMOKE], ["logger.wandb.mode=online", "logger.wandb.init_timeout=2"])
        start = time.monotonic()
        assert make_wandb_logger(cfg, tmp_path) is None
        waited = time.monotonic() - start
    finally:
        silent.close()
    assert 2 <= waited < 30, waited
    assert "W&B logging is off for this run: it could not start (init_timeout 2 s" in capsys.readouterr().err
