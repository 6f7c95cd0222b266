#!/usr/bin/env bash
# Multi-node training with torchrun, without SLURM: run this once on every node, with the same
# NNODES / MASTER_ADDR / MASTER_PORT and its own NODE_RANK.
#
#   launch/torchrun.sh [--max-restarts N] RECIPE [key=value ...]
#
#   # node 0 (10.0.0.1) and node 1, 8 GPUs each:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 launch/torchrun.sh supervised name=r50 optim.lr=0.2
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 launch/torchrun.sh supervised name=r50 optim.lr=0.2
#   # one machine, 4 processes, restart from the last checkpoint after up to 3 worker failures:
#   PROCS_PER_NODE=4 launch/torchrun.sh --max-restarts 3 supervised name=long checkpoint.every_steps=500
#
# RECIPE is a name under recipes/ (supervised) or a path to a recipe script. Arguments after it
# are the recipe's config overrides. The agents meet through torchrun's c10d rendezvous at
# MASTER_ADDR:MASTER_PORT; the agent with NODE_RANK=0 hosts the rendezvous store there (said
# explicitly, so MASTER_ADDR may be any address of node 0). Ranks are assigned at the rendezvous.
#
# Environment (defaults):
#   NNODES          number of nodes (1)
#   NODE_RANK       this node's rank, 0 .. NNODES-1 (0); node 0 hosts the rendezvous
#   MASTER_ADDR     address of node 0 that every node can reach (127.0.0.1)
#   MASTER_PORT     rendezvous port on node 0 (29500)
#   PROCS_PER_NODE  processes on this node (the number of GPUs, else 1)
#   RDZV_ID         rendezvous id, the same on every node of one job (cvdist-$MASTER_PORT)
#   CVDIST_VENV     virtual environment whose torchrun to use (.venv in the repository;
#                   "none": torchrun from PATH)
#
# Elastic restarts: with --max-restarts N > 0, when a worker dies (crash, OOM kill, SIGKILL)
# torchrun stops the others and starts all of them again, up to N times. The recipe then gets
# checkpoint.resume=auto (ahead of your overrides), so the restarted workers continue from the
# run's newest complete checkpoint instead of refusing the existing run directory. The steps
# after that checkpoint are redone; metrics.jsonl is cut back to it, so none appears twice.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
}

max_restarts=0
while [ $# -gt 0 ]; do
    case "$1" in
        --max-restarts|--max_restarts) [ $# -ge 2 ] || usage; max_restarts=$2; shift 2 ;;
        --max-restarts=*|--max_restarts=*) max_restarts=${1#*=}; shift ;;
        -h|--help) usage ;;
        -*) echo "launch/torchrun.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage
case "$max_restarts" in
    ''|*[!0-9]*) echo "launch/torchrun.sh: --max-restarts needs a number, got '$max_restarts'" >&2; exit 2 ;;
esac

recipe=$1
shift
if [ -f "$recipe" ]; then
    script=$recipe
elif [ -f "$root/recipes/$recipe.py" ]; then
    script="$root/recipes/$recipe.py"
else
    echo "launch/torchrun.sh: no recipe '$recipe' (neither a file nor $root/recipes/$recipe.py)" >&2
    exit 2
fi

venv=${CVDIST_VENV:-$root/.venv}
if [ "$venv" = none ]; then
    torchrun=$(command -v torchrun) || { echo "launch/torchrun.sh: torchrun not on PATH" >&2; exit 2; }
else
    torchrun="$venv/bin/torchrun"
    if [ ! -x "$torchrun" ]; then
        echo "launch/torchrun.sh: no $torchrun (set CVDIST_VENV, or CVDIST_VENV=none)" >&2
        exit 2
    fi
fi

nnodes=${NNODES:-1}
node_rank=${NODE_RANK:-0}
master_addr=${MASTER_ADDR:-127.0.0.1}
master_port=${MASTER_PORT:-29500}
if [ -z "${PROCS_PER_NODE:-}" ]; then
    PROCS_PER_NODE=1
    if command -v nvidia-smi >/dev/null 2>&1; then
        gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        [ "${gpus:-0}" -gt 0 ] && PROCS_PER_NODE=$gpus
    fi
fi
if [ "$node_rank" = 0 ]; then is_host=true; else is_host=false; fi

resume=()
if [ "$max_restarts" -gt 0 ]; then
    resume=(checkpoint.resume=auto)
    # torchrun (c10d) shares one agent-hosted TCPStore with the workers of every restart
    # attempt and keys of the dead attempt stay in it: restarted workers then connect to dead
    # peers or hang in init_process_group (pytorch/pytorch#135712; seen here with gloo, torch
    # 2.14). Opting out gives every attempt a fresh store hosted by its rank 0.
    export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
fi

echo "[cvdist-torchrun] node $node_rank/$nnodes x $PROCS_PER_NODE process(es), rendezvous $master_addr:$master_port" \
     "(host: $is_host), max restarts $max_restarts, recipe $script" >&2
# exec: signals sent to this script (SIGTERM, SIGINT) reach torchrun, which forwards them.
exec "$torchrun" --nnodes="$nnodes" --node_rank="$node_rank" --nproc_per_node="$PROCS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$master_addr:$master_port" --rdzv_id="${RDZV_ID:-cvdist-$master_port}" \
    --rdzv_conf="is_host=$is_host" --max_restarts="$max_restarts" \
    "$script" "${resume[@]}" "$@"
