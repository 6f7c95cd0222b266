#!/bin/bash
#SBATCH --job-name=cvdist-compress
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --time=02:00:00
#SBATCH --output=runs/slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --no-requeue
# Pruning, INT8 quantization and the compression report (recipes/compress.py). It runs in one CPU
# process on one node (INT8 kernels and the latency column are CPU measurements; there is nothing
# to distribute and no checkpoint to resume, so no stop signal and no requeue). From the
# repository root, after `mkdir -p runs` (SLURM opens --output before this script runs):
#   sbatch slurm/compress.sh models.student_kd=runs/distill [key=value ...]
#   sbatch slurm/compress.sh models.teacher=runs/teacher models.student_kd=runs/distill prune.sparsity=0.3
# The output directory is CVDIST_OUTPUT_DIR/CVDIST_RUN_NAME (default runs/compress-<job id>).
RECIPE=compress
RECIPE_LAUNCH=one_process
source "${CVDIST_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"
