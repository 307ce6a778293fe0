#!/bin/bash
# Multi-node training under SLURM: one torchrun per node, 8 GPUs each, c10d rendezvous on the first node.
#   sbatch scripts/slurm_train.sh --config imagenet256_sddit_xl2 --run-dir runs/sddit_xl2
#SBATCH --job-name=sddit
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=72:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# Re-submitting the same command resumes from the newest valid checkpoint in --run-dir.
# torchrun of the environment sddit is installed in: activate it before sbatch, or set TORCHRUN=/path/to/torchrun.
srun "${TORCHRUN:-torchrun}" \
  --nnodes="$SLURM_NNODES" --nproc_per_node=8 \
  --rdzv_id="$SLURM_JOB_ID" --rdzv_backend=c10d --rdzv_endpoint="$head_node:29500" \
  -m sddit.cli train "$@"
