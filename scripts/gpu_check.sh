#!/usr/bin/env bash
# The GPU readiness check in one command, at most 4 minutes on one H100 by construction: an offline install
# (omegaconf and cnnkit from the carried wheels/), then benchmarks/gpu_check.py with what is left of --budget
# (default 225 s): pytest -m gpu, a smoke run per distinct recipe model, the speed figures, each part and each
# test under its own bound. Writes gpu.json and gpu_check.log (the whole output) to $OUT, or benchmarks/results.
#   bash scripts/gpu_wheels.sh            # first, where the package registry is reachable: fills wheels/
#   bash scripts/gpu_check.sh             # on the GPU machine; wheels/ is git-ignored: carry it (carry: ["wheels"])
#   bash scripts/gpu_check.sh --cpu       # the dry run on a CPU: the same parts, nothing installed
# PYTHON names the interpreter that has torch (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
cpu=0
budget=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1; args+=("--cpu") ;;
    --faults) args+=("--faults") ;;
    --budget)
      case "${2:-}" in
        ''|*[!0-9]*) echo "gpu_check: --budget needs whole seconds, e.g. --budget 225" >&2; exit 2 ;;
      esac
      budget="$2"; shift ;;
    *) echo "gpu_check: unknown option '$1' (use --cpu, --budget S)" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "gpu_check: $*" >&2; }
if [ "$cpu" = 0 ]; then
  out="${OUT:-benchmarks/results}"
else
  out="${OUT:-${TMPDIR:-/tmp}/cnnkit-gpu-check}"  # the dry run leaves nothing in the tree
fi
mkdir -p "$out"
log="$out/gpu_check.log"
: > "$log"
export WANDB_MODE=disabled PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# 1. what must have travelled: the wheels the GPU machine cannot download (git ignores wheels/)
if [ "$cpu" = 0 ] && ! compgen -G "wheels/omegaconf-*.whl" > /dev/null \
    && ! "$PYTHON" -c "import omegaconf" 2> /dev/null; then
  say "wheels/ is not in this tree: git ignores it, so it reaches the GPU machine only when the run carries it (carry: [\"wheels\"]); fill it first with 'bash scripts/gpu_wheels.sh' where the package registry is reachable"
  exit 1
fi
# 2. the interpreter, and torch in it
if ! command -v "$PYTHON" > /dev/null; then
  say "no '$PYTHON' on PATH: set PYTHON to the interpreter that has torch (PYTHON=/path/to/python3 bash scripts/gpu_check.sh)"
  exit 1
fi
if ! torch_line=$("$PYTHON" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())" 2>> "$log"); then
  say "$(command -v "$PYTHON") cannot import torch: set PYTHON to the interpreter that has torch (see $log)"
  exit 1
fi
read -r torch_version torch_cuda cuda_seen <<< "$torch_line"
# 3. the offline install: omegaconf from wheels/; cnnkit editable (PYTHONPATH already finds it: a failure is a note)
if [ "$cpu" = 0 ]; then
  if ! "$PYTHON" -c "import omegaconf" 2> /dev/null; then
    timeout 120 "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --find-links wheels omegaconf \
      >> "$log" 2>&1 || { say "installing omegaconf from wheels/ failed (see $log)"; exit 1; }
  fi
  timeout 120 "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --find-links wheels --no-deps \
    -e . >> "$log" 2>&1 || say "note: the editable install of cnnkit failed (see $log); PYTHONPATH finds cnnkit, the check goes on"
fi
if ! versions=$("$PYTHON" -c "import cnnkit, omegaconf, lightning, torchvision, torchmetrics, pytest
print(f'cnnkit {cnnkit.__version__} · torch $torch_version (CUDA $torch_cuda) · lightning {lightning.__version__} · omegaconf {omegaconf.__version__}')" 2>> "$log"); then
  say "cannot import what the check needs: $(grep -E '^[A-Za-z]+(Error|Exception)' "$log" | tail -1) (see $log)"
  exit 1
fi
say "$versions"
# 4. the device
if [ "$cpu" = 0 ] && [ "$cuda_seen" != True ]; then
  say "no CUDA device: torch $torch_version (CUDA $torch_cuda) sees none here (bash scripts/gpu_check.sh --cpu is the dry run)"
  exit 1
fi
# 5. the check, with what is left of the budget; its whole output also goes to gpu_check.log
if [ "$cpu" = 0 ] && [ -z "$budget" ]; then budget=225; fi
if [ -n "$budget" ]; then args+=("--budget" "$(( budget > SECONDS ? budget - SECONDS : 0 ))"); fi
"$PYTHON" benchmarks/gpu_check.py "${args[@]}" --output "$out/gpu.json" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
