#!/bin/bash
# Train a cnnkit recipe on SLURM: 2 nodes x 4 GPUs = 8 processes (one per GPU).
#   sbatch scripts/slurm.sh recipes/bn_eval_stats.yaml
# Lightning reads the SLURM environment (ranks, master address); srun starts one task per GPU.
# data.batch_size in the recipe is the GLOBAL batch: each of the 8 processes loads batch_size / 8.
#SBATCH --job-name=cnnkit
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # = trainer.devices
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=SIGUSR1@90          # Lightning saves a checkpoint and requeues the job on this signal
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
recipe=${1:?usage: sbatch scripts/slurm.sh RECIPE [KEY=VALUE ...]}
shift
srun python -m cnnkit fit --config "$recipe" --config configs/trainer/ddp_multinode.yaml \
    trainer.num_nodes="$SLURM_JOB_NUM_NODES" trainer.devices="$SLURM_NTASKS_PER_NODE" "$@"
