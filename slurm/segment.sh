#!/bin/bash
#SBATCH --job-name=cvdist-segment
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
##SBATCH --gpus-per-node=8
#SBATCH --time=04:00:00
#SBATCH --output=runs/slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
# Semantic segmentation (recipes/segment.py). From the repository root, after
# `mkdir -p runs` (SLURM opens --output before this script runs):
#   sbatch slurm/segment.sh [key=value ...]      options and environment: slurm/_common.sh
RECIPE=segment
source "${CVDIST_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"
