#!/bin/bash
#SBATCH --job-name=cvdist-pretrain-contrastive
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
##SBATCH --gpus-per-node=8
#SBATCH --time=12:00:00
#SBATCH --output=runs/slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
# Contrastive self-supervised pretraining (recipes/pretrain_contrastive.py): SimCLR NT-Xent with
# negatives from every rank of every node, or ssl.method=moco_v3 / triplet. From the repository
# root, after `mkdir -p runs`:
#   sbatch slurm/pretrain_contrastive.sh                                   # defaults: Fashion-MNIST
#   sbatch --nodes=4 --gpus-per-node=8 slurm/pretrain_contrastive.sh model.name=resnet50 \
#       "data.train_shards=[/data/imagenet/train-{000000..001023}.tar]" optim.name=lars optim.lr=4.8
# Options and environment: slurm/_common.sh
RECIPE=pretrain_contrastive
source "${CVDIST_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"
