#!/usr/bin/env bash
# Check pyproject's lower bounds: install the lowest versions it allows of lightning, torchmetrics,
# omegaconf and wandb (torch and torchvision as this machine serves them) into a new virtualenv and
# run a fast subset of the suite there: core training, resume, the run lifecycle, W&B offline, DDP.
#   bash scripts/min_versions.sh              # a new virtualenv, removed afterwards
#   bash scripts/min_versions.sh --in-place   # downgrade the active virtualenv instead (CI's own,
#                                             # which it removes anyway: saves the torch install)
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled
# "lightning>=2.6" in pyproject.toml → lightning==2.6 (the bound is the claim being checked)
pins=$(python3 - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
wanted = ("lightning", "torchmetrics", "omegaconf", "wandb")
for dep in deps:
    name, op, version = re.match(r"([A-Za-z0-9_.-]+)\s*(>=|==)?\s*([^,;\s]*)", dep).groups()
    if name in wanted:
        assert op == ">=", f"{dep}: expected a lower bound"
        print(f"{name}=={version}")
PY
)
start=$(date +%s)
if [ "${1:-}" = "--in-place" ]; then
  [ -n "${VIRTUAL_ENV:-}" ] || { echo "min-versions: --in-place needs an active virtualenv" >&2; exit 1; }
  # shellcheck disable=SC2086
  pip install --quiet $pins
else
  venv=$(mktemp -d "${TMPDIR:-/tmp}/cnnkit-min-venv.XXXXXX")
  trap 'rm -rf "$venv"' EXIT
  python3 -m venv "$venv"
  # shellcheck disable=SC1091
  source "$venv/bin/activate"
  # shellcheck disable=SC2086
  pip install --quiet -e ".[dev]" $pins
fi
echo "min-versions: installed in $(( $(date +%s) - start )) s:" $(pip freeze | grep -iE '^(lightning|torchmetrics|omegaconf|wandb|torch|torchvision)==')
pytest -q -p no:cacheprovider -n auto \
  tests/test_training.py::test_fit_writes_a_complete_run_directory \
  tests/test_training.py::test_resume_keeps_metrics_history_and_appends \
  tests/test_training.py::test_wandb_offline_run_is_written_and_finished \
  tests/test_lifecycle.py::test_last_checkpoint_is_the_final_state_when_the_best_is_early \
  tests/test_lifecycle.py::test_the_step_loss_is_logged_exactly_on_lightnings_logging_steps \
  tests/test_lifecycle.py::test_a_finished_run_with_the_same_config_is_kept_and_with_another_is_refused_naming_the_keys \
  tests/test_distributed.py::test_two_process_ddp_fit_through_the_cli \
  "tests/test_reliability.py::test_killed_and_resumed_run_ends_bitwise_equal[tensor-mid-epoch]" \
  "tests/test_reliability.py::test_killed_and_resumed_run_ends_bitwise_equal[sigterm-mid-epoch]"
