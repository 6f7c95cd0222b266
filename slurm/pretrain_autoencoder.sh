#!/bin/bash
#SBATCH --job-name=cvdist-pretrain-ae
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
##SBATCH --gpus-per-node=8
#SBATCH --time=08:00:00
#SBATCH --output=runs/slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
# Autoencoder / masked-autoencoder / multi-task pretraining (recipes/pretrain_autoencoder.py).
# From the repository root, after `mkdir -p runs`:
#   sbatch slurm/pretrain_autoencoder.sh [key=value ...]                      conv autoencoder
#   sbatch slurm/pretrain_autoencoder.sh --config recipes/pretrain_mae.yaml   masked autoencoder (ViT)
#   sbatch slurm/pretrain_autoencoder.sh --config recipes/pretrain_multitask.yaml
# Options and environment: slurm/_common.sh
RECIPE=pretrain_autoencoder
source "${CVDIST_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"
