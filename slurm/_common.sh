# shellcheck shell=bash
# Shared body of the sbatch scripts in slurm/ (one per recipe). A recipe's script holds only its
# #SBATCH defaults, RECIPE=<name> and `source .../_common.sh`; this file does the rest:
#
#   sbatch slurm/supervised.sh [key=value ...]      # from the repository root; runs/ must exist
#   sbatch --nodes=4 --gpus-per-node=8 slurm/supervised.sh optim.lr=0.2 "data.train_shards=[data/x]"
#
# One task per node runs a torchrun agent (srun), which starts the processes of its node; all
# agents meet through a c10d rendezvous on the first node of the job. Arguments after the script
# are the recipe's config overrides (`--config FILE.yaml` too).
#
# Environment (all optional; sbatch passes the submitting shell's environment to the job):
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
#   OMP_NUM_THREADS        default: --cpus-per-task / processes per node (at least 1)
# The run always gets checkpoint.resume=auto: a requeued job continues from its newest checkpoint.
# name= and output_dir= overrides are refused (set CVDIST_RUN_NAME / CVDIST_OUTPUT_DIR instead),
# because this script must know the run directory to decide about the requeue.
#
# Pre-emption and time limits: the recipe scripts ask for `--signal=B:USR1@N --requeue`, so
# SLURM sends SIGUSR1 to this batch shell N seconds (give or take up to a minute) before the time
# limit. The trap below forwards it to every process of the job step (`scancel --signal=USR1`);
# every rank of the training agrees on it at the next step boundary, saves a checkpoint and
# exits 0 with summary.json "stopped_early": true. After srun returns, this script requeues the
# job (`scontrol requeue`) when it forwarded a stop signal and the run's fresh summary.json says
# stopped_early; the requeued job (same id, SLURM_RESTART_COUNT=1, 2, ...) resumes from the
# checkpoint and continues the same W&B run. To pre-empt a job by hand:
#   scancel --batch --signal=USR1 <job id>
# Only SIGUSR1 leads to a requeue: SIGTERM also makes the run save and stop (SLURM sends it at
# the time limit, on `scancel` and on pre-emption, to every process), but it is also how a user
# cancels a job, and SLURM's own PreemptMode=REQUEUE requeues by itself.
#
# The torchrun agents ignore SIGUSR1 (by default it would kill them; with torchrun's
# --signals_to_handle it would be treated as a death signal: workers shut down, SIGKILL after
# --shutdown_timeout, non-zero exit). The workers get the signal directly, as SLURM signals every
# process of a job step (proctrack/cgroup and proctrack/linuxproc), and one rank receiving it is
# enough: the engine reduces the stop flag over all ranks.

cvdist_die() {
    echo "cvdist-slurm: error: $*" >&2
    exit 2
}

cvdist_log() {
    echo "[cvdist-slurm] $*"
}

# NodeAddr of a SLURM node (what other nodes can reach it at); its name when none is configured.
cvdist_node_addr() {
    local addr
    addr=$(scontrol show node "$1" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | head -n1 | cut -d= -f2)
    if [ -n "$addr" ] && [ "$addr" != "(null)" ]; then echo "$addr"; else echo "$1"; fi
}

cvdist_head_node() {
    scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1
}

cvdist_default_procs_per_node() {
    local gpus=${SLURM_GPUS_ON_NODE:-0}
    if [ "$gpus" -gt 0 ] 2>/dev/null; then echo "$gpus"; else echo 1; fi
}

# True when $1 (summary.json) was written at or after epoch second $2 and says stopped_early.
cvdist_stopped_early() {
    [ -f "$1" ] && [ "$(stat -c %Y "$1")" -ge "$2" ] || return 1
    "$CVDIST_PYTHON" - "$1" <<'PY'
import json, sys
sys.exit(0 if json.load(open(sys.argv[1])).get("stopped_early") is True else 1)
PY
}

CVDIST_STOP_SIGNAL=""
# Forward a stop signal once to every process of every job step (not to this batch shell).
cvdist_forward_stop() {
    [ -n "$CVDIST_STOP_SIGNAL" ] && return 0
    CVDIST_STOP_SIGNAL=$1
    cvdist_log "got SIG$1: forwarding it to the job step; the run saves at the next step boundary"
    scancel --signal="$1" "$SLURM_JOB_ID" || cvdist_log "scancel --signal=$1 failed"
}

# Wait for background process $1 through trapped signals; its exit status in CVDIST_STATUS.
# (Not in a $(...) subshell: only this shell can wait for its own child.)
cvdist_wait() {
    while :; do
        wait "$1"
        CVDIST_STATUS=$?
        # >128: a trapped signal interrupted `wait`; the process may still be running.
        if [ "$CVDIST_STATUS" -le 128 ]; then return; fi
        if ! kill -0 "$1" 2>/dev/null; then
            wait "$1"  # already reaped: bash returns the status it kept
            CVDIST_STATUS=$?
            return
        fi
    done
}

cvdist_slurm_main() {
    [ -n "${RECIPE:-}" ] || cvdist_die "set RECIPE=<name of recipes/<name>.py> before sourcing _common.sh"
    [ -n "${SLURM_JOB_ID:-}" ] ||
        cvdist_die "not inside a SLURM job; submit with: sbatch slurm/$RECIPE.sh [key=value ...]"
    local arg
    for arg in "$@"; do
        case "$arg" in
            name=*|output_dir=*)
                cvdist_die "'$arg': set CVDIST_RUN_NAME / CVDIST_OUTPUT_DIR instead" \
                    "(this script must know the run directory)" ;;
        esac
    done

    local root=${CVDIST_ROOT:-$SLURM_SUBMIT_DIR}
    local script="$root/recipes/$RECIPE.py"
    [ -f "$script" ] || cvdist_die "no recipe $script (CVDIST_ROOT=$root)"
    cd "$root" || cvdist_die "cannot cd to $root"
    local venv=${CVDIST_VENV:-$root/.venv}
    if [ "$venv" != none ]; then
        [ -f "$venv/bin/activate" ] ||
            cvdist_die "no virtual environment at $venv (set CVDIST_VENV, or CVDIST_VENV=none)"
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
    fi
    CVDIST_PYTHON=$(command -v python || command -v python3)

    local output_dir=${CVDIST_OUTPUT_DIR:-$root/runs}
    local run_name=${CVDIST_RUN_NAME:-$RECIPE-$SLURM_JOB_ID}
    local run_dir="$output_dir/$run_name"
    local procs=${CVDIST_PROCS_PER_NODE:-$(cvdist_default_procs_per_node)}
    local nnodes=${SLURM_NNODES:-1}
    local head head_addr port
    head=$(cvdist_head_node)
    head_addr=$(cvdist_node_addr "$head")
    port=${CVDIST_MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}
    if [ "${CVDIST_MAX_RESTARTS:-0}" -gt 0 ]; then
        # Restarted workers must not share torchrun's agent store with the dead attempt (stale
        # keys: connection refused / hang in init_process_group, pytorch/pytorch#135712).
        export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
    fi
    if [ -z "${OMP_NUM_THREADS:-}" ]; then
        OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-1} / procs ))
        [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
        export OMP_NUM_THREADS
    fi

    cvdist_log "job $SLURM_JOB_ID SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}:" \
        "$nnodes node(s) x $procs process(es)," \
        "rendezvous $head_addr:$port ($head), run $run_dir, recipe $RECIPE"
    trap 'cvdist_forward_stop USR1' USR1
    local started_at
    started_at=$(date +%s)
    # One torchrun agent per node. It ignores SIGUSR1 (see above); the node that hosts the
    # rendezvous store is the job's first node (SLURM_NODEID 0), said explicitly so that
    # several "nodes" on one host (or a NodeAddr that is not the host name) work.
    srun --nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} \
        bash -c 'trap "" USR1; is_host=false; [ "${SLURM_NODEID:-0}" = 0 ] && is_host=true
                 exec torchrun --rdzv_conf="is_host=$is_host" "$@"' cvdist-agent \
        --nnodes="$nnodes" --nproc_per_node="$procs" --rdzv_backend=c10d --rdzv_endpoint="$head_addr:$port" \
        --rdzv_id="$SLURM_JOB_ID" --max_restarts="${CVDIST_MAX_RESTARTS:-0}" \
        "$script" output_dir="$output_dir" name="$run_name" checkpoint.resume=auto "$@" &
    cvdist_wait $!

    if [ -n "$CVDIST_STOP_SIGNAL" ] && cvdist_stopped_early "$run_dir/summary.json" "$started_at"; then
        if [ "${CVDIST_REQUEUE:-1}" = 1 ]; then
            cvdist_log "run stopped early on SIG$CVDIST_STOP_SIGNAL with a checkpoint: requeueing job $SLURM_JOB_ID"
            scontrol requeue "$SLURM_JOB_ID" || cvdist_die "scontrol requeue $SLURM_JOB_ID failed"
        else
            cvdist_log "run stopped early on SIG$CVDIST_STOP_SIGNAL; CVDIST_REQUEUE=0: not requeueing"
        fi
        exit 0
    fi
    cvdist_log "srun exited with $CVDIST_STATUS"
    exit "$CVDIST_STATUS"
}

cvdist_slurm_main "$@"
