#!/usr/bin/env bash
# The GPU readiness check, one command (about 4 minutes on one H100): installs cnnkit with no network,
# then benchmarks/gpu_check.py runs pytest -m gpu, a smoke run per distinct recipe model on generated
# data, and the speed figures; writes benchmarks/results/gpu.json (or $OUT/gpu.json) and prints a table.
#   bash scripts/gpu_wheels.sh          # first, where the package registry is reachable (fills wheels/)
#   bash scripts/gpu_check.sh           # on the GPU machine
#   bash scripts/gpu_check.sh --cpu --quick   # the dry run on a CPU: nothing installed, no network
set -uo pipefail
cd "$(dirname "$0")/.."
cpu=0
args=()
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1; args+=("--cpu") ;;
    --quick) args+=("--quick") ;;
    *) echo "gpu_check: unknown option '$arg' (use --cpu, --quick)" >&2; exit 2 ;;
  esac
done
output="${OUT:-benchmarks/results}/gpu.json"
export WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$cpu" = 0 ]; then
  echo "== install (offline: wheels/ and this tree)"
  if ! python -c "import omegaconf" 2>/dev/null; then
    python -m pip install --quiet --no-index --find-links wheels omegaconf \
      || { echo "gpu_check: omegaconf is not installed and wheels/ has no wheel for it: run bash scripts/gpu_wheels.sh first" >&2; exit 1; }
  fi
  # no build isolation: it would fetch setuptools; no deps: wandb is not there and cnnkit runs without it
  python -m pip install --quiet --no-index --no-deps --no-build-isolation -e . \
    || { echo "gpu_check: installing cnnkit failed" >&2; exit 1; }
  python -c "import cnnkit, torch; print('cnnkit', cnnkit.__version__, '· torch', torch.__version__, '· cuda', torch.version.cuda)"
fi
python benchmarks/gpu_check.py "${args[@]}" --output "$output"
