#!/bin/bash
# A recipe's matrix as a SLURM job array: one array task per variant, each one small single-device run.
#   bash scripts/slurm_array.sh recipes/bn_placement.yaml [KEY=VALUE ...]    # submits the array (sbatch)
# Each task picks its variant from SLURM_ARRAY_TASK_ID: line N+1 of 'cnnkit fit --print-variants' (the
# matrix order, the same names as --only and runs/<recipe>/<variant>/), and trains it alone with
# 'cnnkit fit --only <variant>'. Finished variants are kept and interrupted ones resumed when the array
# runs again; the recipe's report reads them all. One big model on many GPUs: scripts/slurm.sh (DDP).
#SBATCH --job-name=cnnkit-array
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=4
#SBATCH --time=4:00:00
#SBATCH --signal=SIGUSR1@90          # Lightning saves a checkpoint and requeues the task on this signal
#SBATCH --requeue
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
PYTHON="${PYTHON:-python}"
recipe=${1:?usage: bash scripts/slurm_array.sh RECIPE [KEY=VALUE ...]}
shift
if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # submitting: one task per variant, this script being each task
  count=$("$PYTHON" -m cnnkit fit --config "$recipe" --print-variants "$@" | wc -l)
  exec sbatch --array="0-$(( count - 1 ))" "$0" "$recipe" "$@"
fi
variant=$("$PYTHON" -m cnnkit fit --config "$recipe" --print-variants "$@" | sed -n "$(( SLURM_ARRAY_TASK_ID + 1 ))p")
if [ -z "$variant" ]; then
  echo "slurm_array: task $SLURM_ARRAY_TASK_ID has no variant: $recipe has fewer; submit the array again" >&2
  exit 2
fi
# a requeued or resubmitted task continues its run (a finished one is kept)
exec "$PYTHON" -m cnnkit fit --config "$recipe" --only "$variant" --ckpt last "$@"
