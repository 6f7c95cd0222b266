# shellcheck shell=bash
# Shared body of the sbatch scripts in slurm/ (one per recipe). A recipe's script holds only its
# #SBATCH defaults, RECIPE=<name> and `source .../_common.sh`; this file does the rest (its
# functions live in slurm/_lib.sh):
#
#   sbatch slurm/supervised.sh [key=value ...]      # from the repository root; runs/ must exist
#   sbatch --nodes=4 --gpus-per-node=8 slurm/supervised.sh optim.lr=0.2 "data.train_shards=[data/x]"
#
# One task per node runs a torchrun agent (srun), which starts the processes of its node; all
# agents meet through a c10d rendezvous on the first node of the job. Arguments after the script
# are the recipe's config overrides (`--config FILE.yaml` too). A recipe that runs in one process
# (compress) sets RECIPE_LAUNCH=one_process next to RECIPE: one `srun python` task, no torchrun,
# no stop signal, no requeue.
#
# Environment (all optional; sbatch passes the submitting shell's environment to the job). Every
# number must be digits only (anything else is refused: the values feed shell arithmetic):
#   CVDIST_ROOT            repository root             default: $SLURM_SUBMIT_DIR (where sbatch ran)
#   CVDIST_VENV            virtual environment         default: $CVDIST_ROOT/.venv; "none": use PATH as is
#   CVDIST_OUTPUT_DIR      runs directory (output_dir=)  default: $CVDIST_ROOT/runs
#   CVDIST_RUN_NAME        run name (name=)            default: <recipe>-<job id>, so a requeued job
#                          (same job id) finds its own run directory OUTPUT_DIR/RUN_NAME again
#   CVDIST_PROCS_PER_NODE  processes per node          default: the node's GPUs ($SLURM_GPUS_ON_NODE), else 1
#   CVDIST_MASTER_PORT     rendezvous port             default: 29500 + job id % 1000
#   CVDIST_MAX_RESTARTS    torchrun --max-restarts     default: 0 (a crashed worker ends the job); with
#                          N > 0 a dead worker restarts all workers from the newest checkpoint
#   CVDIST_REQUEUE         1: requeue after a stop on SIGUSR1; 0: stop only   default: 1
#   CVDIST_MAX_REQUEUES    requeue at most this many times (SLURM_RESTART_COUNT)  default: 20
#   OMP_NUM_THREADS        default: --cpus-per-task / processes per node (at least 1)
# The run always gets checkpoint.resume=auto: a requeued job continues from its newest checkpoint.
# name=, output_dir= and checkpoint.resume= overrides are refused (set CVDIST_RUN_NAME /
# CVDIST_OUTPUT_DIR instead): this script must know the run directory to decide about the
# requeue, and a fixed resume point (a path, or none) would make every requeued attempt start
# over from the same place.
#
# Pre-emption and time limits: the recipe scripts ask for `--signal=B:USR1@N --requeue`, so
# SLURM sends SIGUSR1 to this batch shell N seconds (give or take up to a minute) before the time
# limit. The trap below forwards it to every process of the job step (`scancel --signal=USR1`);
# every rank of the training agrees on it at the next step boundary, saves a checkpoint and
# exits 0 with summary.json "stopped_early": true (the recipes catch the signal from their first
# line on; one that arrives during start-up stops the run before its first step, with nothing
# new to save). After srun returns, this script requeues the job (`scontrol requeue`) when
#   - it forwarded a stop signal and the run's fresh summary.json says stopped_early,
#   - the run's newest checkpoint is at a later step than when this attempt started (an attempt
#     that made no progress would make the next one no better: requeueing it could loop forever),
#   - and the job was requeued fewer than CVDIST_MAX_REQUEUES times (SLURM_RESTART_COUNT).
# Otherwise it says why it does not requeue and exits 0; the run directory keeps its newest
# checkpoint, and resubmitting with the same CVDIST_RUN_NAME continues from it. The requeued
# job (same id, SLURM_RESTART_COUNT=1, 2, ...) resumes from the checkpoint and continues the
# same W&B run. To pre-empt a job by hand:
#   scancel --batch --signal=USR1 <job id>
# A SIGUSR1 that arrives before the job step started stops the job without starting it.
# Only SIGUSR1 leads to a requeue: SIGTERM also makes the run save and stop (SLURM sends it at
# the time limit, on `scancel` and on pre-emption, to every process), but it is also how a user
# cancels a job, and SLURM's own PreemptMode=REQUEUE requeues by itself.
#
# The torchrun agents ignore SIGUSR1 (by default it would kill them; with torchrun's
# --signals_to_handle it would be treated as a death signal: workers shut down, SIGKILL after
# --shutdown_timeout, non-zero exit). The workers get the signal directly, as SLURM signals every
# process of a job step (proctrack/cgroup and proctrack/linuxproc), and one rank receiving it is
# enough: the engine reduces the stop flag over all ranks.
set -euo pipefail

# shellcheck source=slurm/_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/_lib.sh"
cvdist_slurm_main "$@"
