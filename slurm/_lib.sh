# shellcheck shell=bash
# Functions of slurm/_common.sh (documented there). Sourcing this file defines functions only,
# so tests can call them one by one (tests/test_slurm_script.py).

cvdist_die() {
    echo "cvdist-slurm: error: $*" >&2
    exit 2
}

cvdist_log() {
    echo "[cvdist-slurm] $*"
}

# Echo the value of number variable $1 (its default $2 when unset or empty), in base 10. Only
# digits pass: bash arithmetic on other text evaluates it as an expression, and an expression
# such as `a[$(command)]` runs the command.
cvdist_number() {
    local name=$1 value=${!1:-$2}
    if ! [[ $value =~ ^[0-9]{1,9}$ ]]; then
        cvdist_die "$name='$value' is not a whole number; set it to digits only, e.g. $name=$2"
    fi
    echo $((10#$value))
}

# NodeAddr of a SLURM node (what other nodes can reach it at); its name when none is configured.
cvdist_node_addr() {
    local addr
    addr=$(scontrol show node "$1" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2) || true
    addr=${addr%%$'\n'*}
    if [ -n "$addr" ] && [ "$addr" != "(null)" ]; then echo "$addr"; else echo "$1"; fi
}

cvdist_head_node() {
    local hosts
    hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST") || cvdist_die "cannot read SLURM_JOB_NODELIST"
    echo "${hosts%%$'\n'*}"
}

cvdist_default_procs_per_node() {
    local gpus=${SLURM_GPUS_ON_NODE:-0}
    if [[ $gpus =~ ^[0-9]{1,9}$ ]] && [ "$gpus" -gt 0 ]; then echo "$gpus"; else echo 1; fi
}

# The step of the newest complete checkpoint of run directory $1 (a step-XXXXXXXX directory
# holding meta.json, as cvdist/engine/checkpoint.py writes them); -1 when there is none.
cvdist_checkpoint_step() {
    local newest=-1 directory digits
    for directory in "$1"/checkpoints/step-*; do
        digits=${directory##*/step-}
        if [[ $digits =~ ^[0-9]{8}$ ]] && [ -f "$directory/meta.json" ] && [ $((10#$digits)) -gt "$newest" ]; then
            newest=$((10#$digits))
        fi
    done
    echo "$newest"
}

# True when $1 (summary.json) was written at or after epoch second $2 and says stopped_early.
cvdist_stopped_early() {
    [ -f "$1" ] && [ "$(stat -c %Y "$1")" -ge "$2" ] || return 1
    "$CVDIST_PYTHON" - "$1" <<'PY'
import json, sys
sys.exit(0 if json.load(open(sys.argv[1])).get("stopped_early") is True else 1)
PY
}

# After a stop on a signal: requeue (status 0) or not (1, with the reason logged). Arguments:
# run directory, epoch second the attempt started, checkpoint step before it, requeues so far,
# the cap.
cvdist_should_requeue() {
    local run_dir=$1 started_at=$2 step_before=$3 requeues=$4 max_requeues=$5 step_after
    if ! cvdist_stopped_early "$run_dir/summary.json" "$started_at"; then
        cvdist_log "not requeueing: the run did not stop early with a checkpoint (it finished or failed)"
        return 1
    fi
    step_after=$(cvdist_checkpoint_step "$run_dir")
    if [ "$step_after" -le "$step_before" ]; then
        cvdist_log "not requeueing: no progress in this attempt (newest checkpoint: step $step_after, as" \
            "when it started); resubmit with CVDIST_RUN_NAME=${run_dir##*/} to continue"
        return 1
    fi
    if [ "$requeues" -ge "$max_requeues" ]; then
        cvdist_log "not requeueing: requeued $requeues time(s), CVDIST_MAX_REQUEUES=$max_requeues; resubmit" \
            "with CVDIST_RUN_NAME=${run_dir##*/} (or raise CVDIST_MAX_REQUEUES) to continue from step $step_after"
        return 1
    fi
    cvdist_log "attempt advanced from step $step_before to $step_after"
    return 0
}

CVDIST_STOP_SIGNAL=""
CVDIST_STEP_STARTED=0
# Forward a stop signal once to every process of every job step (not to this batch shell).
cvdist_forward_stop() {
    if [ -n "$CVDIST_STOP_SIGNAL" ]; then return 0; fi
    CVDIST_STOP_SIGNAL=$1
    if [ "$CVDIST_STEP_STARTED" = 0 ]; then
        cvdist_log "got SIG$1 before the job step started: not starting it"
        return 0
    fi
    cvdist_log "got SIG$1: forwarding it to the job step; the run saves at the next step boundary"
    scancel --signal="$1" "$SLURM_JOB_ID" || cvdist_log "scancel --signal=$1 failed"
}

# Wait for background process $1 through trapped signals; its exit status in CVDIST_STATUS.
# (Not in a $(...) subshell: only this shell can wait for its own child.)
cvdist_wait() {
    while :; do
        CVDIST_STATUS=0
        wait "$1" || CVDIST_STATUS=$?
        # >128: a trapped signal interrupted `wait`; the process may still be running.
        if [ "$CVDIST_STATUS" -le 128 ]; then return 0; fi
        if ! kill -0 "$1" 2>/dev/null; then
            CVDIST_STATUS=0
            wait "$1" || CVDIST_STATUS=$?  # already reaped: bash returns the status it kept
            return 0
        fi
    done
}

# Refuse overrides this script sets itself (see _common.sh).
cvdist_check_overrides() {
    local arg
    for arg in "$@"; do
        case "$arg" in
            name=*|output_dir=*)
                cvdist_die "'$arg': set CVDIST_RUN_NAME / CVDIST_OUTPUT_DIR instead" \
                    "(this script must know the run directory)" ;;
            checkpoint.resume=*|checkpoint=*)
                cvdist_die "'$arg': a SLURM job always resumes with checkpoint.resume=auto (a fixed resume point" \
                    "would make every requeued attempt start over from the same place); to start from another" \
                    "run's weights use the recipe's own option (e.g. transfer.*), or run recipes/$RECIPE.py directly" ;;
        esac
    done
}

# Activate the virtual environment (CVDIST_VENV) and set CVDIST_PYTHON.
cvdist_activate() {
    local venv=${CVDIST_VENV:-$1/.venv}
    if [ "$venv" != none ]; then
        [ -f "$venv/bin/activate" ] ||
            cvdist_die "no virtual environment at $venv (set CVDIST_VENV, or CVDIST_VENV=none)"
        # shellcheck disable=SC1091
        source "$venv/bin/activate"
    fi
    CVDIST_PYTHON=$(command -v python || command -v python3) || cvdist_die "no python on PATH"
}

# The recipe in one process on one node (RECIPE_LAUNCH=one_process): nothing to distribute,
# nothing to resume.
cvdist_run_one_process() {
    local script=$1 output_dir=$2 run_name=$3
    shift 3
    cvdist_log "job $SLURM_JOB_ID: 1 process, run $output_dir/$run_name, recipe $RECIPE"
    CVDIST_STATUS=0
    srun --nodes=1 --ntasks=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} \
        "$CVDIST_PYTHON" "$script" "$@" output_dir="$output_dir" name="$run_name" || CVDIST_STATUS=$?
    cvdist_log "srun exited with $CVDIST_STATUS"
    exit "$CVDIST_STATUS"
}

# One torchrun agent per node (see _common.sh); sets CVDIST_STATUS. Arguments: script, procs
# per node, rendezvous address:port, then the recipe's arguments.
cvdist_run_torchrun() {
    local script=$1 procs=$2 endpoint=$3 nnodes
    shift 3
    nnodes=$(cvdist_number SLURM_NNODES 1)
    # The agent ignores SIGUSR1 (see _common.sh); the node that hosts the rendezvous store is the
    # job's first node (SLURM_NODEID 0), said explicitly so that several "nodes" on one host (or a
    # NodeAddr that is not the host name) work.
    srun --nodes="$nnodes" --ntasks="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1 \
        ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} \
        bash -c 'trap "" USR1; is_host=false; [ "${SLURM_NODEID:-0}" = 0 ] && is_host=true
                 exec torchrun --rdzv_conf="is_host=$is_host" "$@"' cvdist-agent \
        --nnodes="$nnodes" --nproc_per_node="$procs" --rdzv_backend=c10d --rdzv_endpoint="$endpoint" \
        --rdzv_id="$SLURM_JOB_ID" --max_restarts="$CVDIST_MAX_RESTARTS" "$script" "$@" &
    CVDIST_STEP_STARTED=1
    cvdist_wait $!
}

# Check every number of the environment up front, before any of them reaches arithmetic.
cvdist_check_numbers() {
    local name
    for name in SLURM_JOB_ID SLURM_NNODES SLURM_CPUS_PER_TASK SLURM_RESTART_COUNT CVDIST_PROCS_PER_NODE \
        CVDIST_MASTER_PORT CVDIST_MAX_RESTARTS CVDIST_MAX_REQUEUES; do
        if [ -n "${!name:-}" ]; then cvdist_number "$name" 1 >/dev/null; fi
    done
    case "${CVDIST_REQUEUE:-1}" in
        0|1) ;;
        *) cvdist_die "CVDIST_REQUEUE='$CVDIST_REQUEUE' must be 1 (requeue after a stop on SIGUSR1) or 0" ;;
    esac
    case "${RECIPE_LAUNCH:-torchrun}" in
        torchrun|one_process) ;;
        *) cvdist_die "RECIPE_LAUNCH='$RECIPE_LAUNCH' in slurm/$RECIPE.sh must be torchrun or one_process" ;;
    esac
}

cvdist_slurm_main() {
    [ -n "${RECIPE:-}" ] || cvdist_die "set RECIPE=<name of recipes/<name>.py> before sourcing _common.sh"
    [ -n "${SLURM_JOB_ID:-}" ] ||
        cvdist_die "not inside a SLURM job; submit with: sbatch slurm/$RECIPE.sh [key=value ...]"
    cvdist_check_numbers
    cvdist_check_overrides "$@"
    local root=${CVDIST_ROOT:-$SLURM_SUBMIT_DIR}
    local script="$root/recipes/$RECIPE.py"
    [ -f "$script" ] || cvdist_die "no recipe $script (CVDIST_ROOT=$root)"
    cd "$root" || cvdist_die "cannot cd to $root"
    cvdist_activate "$root"
    local output_dir=${CVDIST_OUTPUT_DIR:-$root/runs}
    local run_name=${CVDIST_RUN_NAME:-$RECIPE-$SLURM_JOB_ID}
    if [ "${RECIPE_LAUNCH:-torchrun}" = one_process ]; then
        cvdist_run_one_process "$script" "$output_dir" "$run_name" "$@"
    fi
    cvdist_run_training "$script" "$output_dir" "$run_name" "$@"
}

# The torchrun launch of a training recipe, then the requeue decision (see _common.sh).
cvdist_run_training() {
    local script=$1 output_dir=$2 run_name=$3
    shift 3
    local run_dir="$output_dir/$run_name" job_id procs port head head_addr requeues max_requeues
    trap 'cvdist_forward_stop USR1' USR1  # first: SLURM's default action for SIGUSR1 ends this shell
    job_id=$(cvdist_number SLURM_JOB_ID 0)
    procs=$(cvdist_number CVDIST_PROCS_PER_NODE "$(cvdist_default_procs_per_node)")
    [ "$procs" -ge 1 ] || cvdist_die "CVDIST_PROCS_PER_NODE=$procs: at least 1 process per node"
    port=$(cvdist_number CVDIST_MASTER_PORT $((29500 + job_id % 1000)))
    [ "$port" -ge 1 ] && [ "$port" -le 65535 ] || cvdist_die "CVDIST_MASTER_PORT=$port is not a TCP port (1-65535)"
    CVDIST_MAX_RESTARTS=$(cvdist_number CVDIST_MAX_RESTARTS 0)
    requeues=$(cvdist_number SLURM_RESTART_COUNT 0)
    max_requeues=$(cvdist_number CVDIST_MAX_REQUEUES 20)
    if [ "$CVDIST_MAX_RESTARTS" -gt 0 ]; then
        # Restarted workers must not share torchrun's agent store with the dead attempt (stale
        # keys: connection refused / hang in init_process_group, pytorch/pytorch#135712).
        export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
    fi
    if [ -z "${OMP_NUM_THREADS:-}" ]; then
        OMP_NUM_THREADS=$(( $(cvdist_number SLURM_CPUS_PER_TASK 1) / procs ))
        [ "$OMP_NUM_THREADS" -ge 1 ] || OMP_NUM_THREADS=1
        export OMP_NUM_THREADS
    fi
    head=$(cvdist_head_node)
    head_addr=$(cvdist_node_addr "$head")
    cvdist_log "job $job_id SLURM_RESTART_COUNT=$requeues: $(cvdist_number SLURM_NNODES 1) node(s) x $procs" \
        "process(es), rendezvous $head_addr:$port ($head), run $run_dir, recipe $RECIPE"
    local started_at step_before
    started_at=$(date +%s)
    step_before=$(cvdist_checkpoint_step "$run_dir")
    if [ -n "$CVDIST_STOP_SIGNAL" ]; then
        exit 0  # stopped before the job step started (logged by cvdist_forward_stop)
    fi
    cvdist_run_torchrun "$script" "$procs" "$head_addr:$port" \
        "$@" output_dir="$output_dir" name="$run_name" checkpoint.resume=auto
    if [ -n "$CVDIST_STOP_SIGNAL" ]; then
        if [ "${CVDIST_REQUEUE:-1}" = 0 ]; then
            cvdist_log "run stopped on SIG$CVDIST_STOP_SIGNAL; CVDIST_REQUEUE=0: not requeueing"
        elif cvdist_should_requeue "$run_dir" "$started_at" "$step_before" "$requeues" "$max_requeues"; then
            cvdist_log "run stopped early on SIG$CVDIST_STOP_SIGNAL with a checkpoint: requeueing job $job_id"
            scontrol requeue "$job_id" || cvdist_die "scontrol requeue $job_id failed"
            exit 0
        fi
    fi
    cvdist_log "srun exited with $CVDIST_STATUS"
    exit "$CVDIST_STATUS"
}
