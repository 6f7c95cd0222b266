#!/bin/bash
#SBATCH --job-name=cvdist-longtail
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
##SBATCH --gpus-per-node=8
#SBATCH --time=04:00:00
#SBATCH --output=runs/slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
# Long-tail fine-tuning (recipes/longtail.py). From the repository root, after `mkdir -p runs`
# (SLURM opens --output before this script runs):
#   sbatch slurm/longtail.sh [key=value ...]         options and environment: slurm/_common.sh
#   sbatch slurm/longtail.sh "data.train_shards=[data/fmnist-lt100]" loss.name=ldam loss.drw_epoch=20
RECIPE=longtail
source "${CVDIST_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"
