#!/usr/bin/env bash
# Fill wheels/ (git-ignored, it travels with the working tree) with what the GPU machine lacks and cannot
# download: omegaconf >= 2.4 (pure Python, with its own antlr4; it needs PyYAML, which is installed there).
# Run here, where the package registry is reachable:  bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p wheels
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 -d wheels "omegaconf>=2.4"
ls -1 wheels
