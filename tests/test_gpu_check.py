"""The GPU readiness check cannot rot between GPU runs: its CPU dry run runs here (nothing installed)."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import REPO


def test_the_gpu_check_dry_run_passes_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--cpu", "--quick"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== install" not in proc.stdout  # the dry run installs nothing
    results = json.loads((tmp_path / "gpu.json").read_text())
    parts = ("pytest -m gpu", "smoke run per distinct model", "speed")
    assert all(results[part]["ok"] for part in parts), results
    assert results["smoke run per distinct model"]["result"] == {"models": 3, "finished": 3}
    speed = results["speed"]["result"]
    assert len(speed) == 2 and all(case["cnnkit_images_per_s"] > 0 and case["overhead"] > 0 for case in speed.values())
    assert all(line in proc.stdout for line in ("pytest -m gpu", "smoke run per distinct model", "speed"))


def test_an_unknown_option_is_one_line():
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == "gpu_check: unknown option '--fast' (use --cpu, --quick)"
