#!/bin/bash
#SBATCH --job-name=cvdist-distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=8
##SBATCH --gpus-per-node=8
#SBATCH --time=04:00:00
#SBATCH --output=runs/slurm-%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
# Knowledge distillation (recipes/distill.py): the teacher is replicated on every process, the
# student trained under any strategy. From the repository root, after `mkdir -p runs` (SLURM
# opens --output before this script runs):
#   sbatch slurm/distill.sh teacher.path=runs/teacher [key=value ...]   options and environment: slurm/_common.sh
#   sbatch slurm/distill.sh teacher.path=runs/teacher dist.strategy=zero2 kd.feature_weight=1 \
#       kd.teacher_hint=layer3 kd.student_hint=layer3 model.name=resnet18
RECIPE=distill
source "${CVDIST_ROOT:-${SLURM_SUBMIT_DIR:-.}}/slurm/_common.sh"
