#!/usr/bin/env bash
# Launch IPO training with the `deepspeed` launcher, on one node or many.
#
#   scripts/launch_multinode.sh [options] [--] [TRAINING_SCRIPT [SCRIPT_ARGS...]]
#
# TRAINING_SCRIPT defaults to scripts/train_ipo.py; everything after it is passed to it unchanged, e.g.
#   scripts/launch_multinode.sh --hostfile scripts/hostfile.example --master-addr 10.0.0.1 -- \
#       scripts/train_ipo.py --model_name_or_path Qwen/Qwen2.5-7B --dataset_name my/prefs --deepspeed zero3 ...
#
# Options (each also read from the environment variable in brackets):
#   --hostfile FILE       [HOSTFILE]       one line per node: "<hostname> slots=<GPUs>" (see scripts/hostfile.example).
#                                          Without it the run is single-node on this machine.
#   --num-nodes N         [NUM_NODES]      use the first N hosts of the hostfile (default: all).
#   --gpus-per-node N     [GPUS_PER_NODE]  ranks per node (default: the hostfile slots, or every local GPU).
#   --master-addr ADDR    [MASTER_ADDR]    address of the node running rank 0 (required with a hostfile).
#   --master-port PORT    [MASTER_PORT]    rendezvous port on that node (default 29500).
#   --node-rank R         [NODE_RANK]      start only node R's ranks, without ssh. Run the same command on every
#                                          node with its own R (this is how SLURM's srun uses it, see
#                                          scripts/slurm_ipo.sbatch). Without it, node 0 starts all nodes over
#                                          passwordless ssh (pdsh).
#   --dry-run                              print the launcher command instead of running it.
#
# The collective timeout is the training argument --ddp_timeout (seconds, default 1800): a rank that waits longer
# than that for a dead or stuck peer raises and the job exits non-zero.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

HOSTFILE=${HOSTFILE:-}
NUM_NODES=${NUM_NODES:-}
GPUS_PER_NODE=${GPUS_PER_NODE:-}
MASTER_ADDR=${MASTER_ADDR:-}
MASTER_PORT=${MASTER_PORT:-29500}
NODE_RANK=${NODE_RANK:-}
DRY_RUN=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --hostfile) HOSTFILE=$2; shift 2 ;;
        --num-nodes) NUM_NODES=$2; shift 2 ;;
        --gpus-per-node) GPUS_PER_NODE=$2; shift 2 ;;
        --master-addr) MASTER_ADDR=$2; shift 2 ;;
        --master-port) MASTER_PORT=$2; shift 2 ;;
        --node-rank) NODE_RANK=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) echo "launch_multinode.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TRAINING_SCRIPT=${1:-$SCRIPT_DIR/train_ipo.py}
[[ $# -gt 0 ]] && shift

if [[ ! -f "$TRAINING_SCRIPT" ]]; then
    echo "launch_multinode.sh: training script $TRAINING_SCRIPT not found" >&2
    exit 2
fi

cmd=(deepspeed --master_port "$MASTER_PORT")
if [[ -n "$HOSTFILE" ]]; then
    if [[ ! -f "$HOSTFILE" ]]; then
        echo "launch_multinode.sh: hostfile $HOSTFILE not found" >&2
        exit 2
    fi
    if [[ -z "$MASTER_ADDR" ]]; then
        echo "launch_multinode.sh: --master-addr (or MASTER_ADDR) is required with a hostfile: the address of the node running rank 0" >&2
        exit 2
    fi
    cmd+=(--hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR")
elif [[ -n "$NODE_RANK" || -n "$NUM_NODES" && "$NUM_NODES" != 1 ]]; then
    echo "launch_multinode.sh: --node-rank and --num-nodes > 1 need a --hostfile listing the nodes" >&2
    exit 2
fi
[[ -n "$NUM_NODES" ]] && cmd+=(--num_nodes "$NUM_NODES")
[[ -n "$GPUS_PER_NODE" ]] && cmd+=(--num_gpus "$GPUS_PER_NODE")
[[ -n "$NODE_RANK" ]] && cmd+=(--no_ssh --node_rank "$NODE_RANK")
cmd+=("$TRAINING_SCRIPT" "$@")

if [[ $DRY_RUN == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
