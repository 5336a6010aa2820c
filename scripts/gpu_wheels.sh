#!/usr/bin/env bash
# Fill wheels/ with what the GPU machine lacks and cannot download, for scripts/gpu_check.sh's offline install:
# omegaconf >= 2.4 (pure Python, its parser vendored: it needs only PyYAML, which lightning brings) and
# setuptools >= 77 (pip builds cnnkit's editable install from it, isolated and offline). wandb is not needed:
# the check runs with W&B disabled and cnnkit imports wandb only for a W&B logger.
# wheels/ is git-ignored, so it reaches the GPU machine only when the run carries it (carry: ["wheels"]).
# Run here, where the package registry is reachable:  bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
mkdir -p wheels
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  -d wheels "omegaconf>=2.4" "setuptools>=77"
ls -1 wheels
echo "wheels/: $(du -sk wheels | cut -f1) KiB; carry it with the tree: carry: [\"wheels\"]"
