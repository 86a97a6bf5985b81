#!/usr/bin/env bash
# Run an sdft command on N local ranks with torchrun (one per GPU; CPU ranks use gloo).
#
#   launch/torchrun.sh --nproc 8 run examples/quickstart.yaml train.deepspeed=zero3
#   launch/torchrun.sh --dry-run --nproc 8 train my.yaml          # print the command only
#   launch/torchrun.sh --nproc 8 --max-restarts 3 run my.yaml      # restart the ranks when one dies
#
# Several nodes without SLURM: run the same line on every node with
#   NNODES=2 MASTER_ADDR=<head node> MASTER_PORT=29500 RDZV_ID=<any id, the same on every node> \
#     launch/torchrun.sh --nproc 8 ...
# Defaults: --nproc = number of visible GPUs (1 without GPUs); --max-restarts = $SDFT_MAX_RESTARTS or 0.
# On SIGTERM (preemption) the ranks finish their step and checkpoint; torchrun waits SDFT_STOP_GRACE
# seconds (300; torch's own default is 30) for that before it kills them.
# With restarts, a rank that dies (killed, out of memory) makes torchrun restart every rank, and the
# command resumes from its last checkpoint (finished stages are skipped, training resumes at its step).
set -euo pipefail
dry=0
nproc=""
restarts=${SDFT_MAX_RESTARTS:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --nproc) nproc=$2; shift 2 ;;
    --max-restarts) restarts=$2; shift 2 ;;
    *) break ;;
  esac
done
[[ "$restarts" =~ ^[0-9]+$ ]] || { echo "$0: --max-restarts $restarts: expected a whole number, 0 or more" >&2; exit 2; }
grace=${SDFT_STOP_GRACE:-300}
[[ "$grace" =~ ^[0-9]+$ ]] || { echo "$0: SDFT_STOP_GRACE=$grace: expected a whole number of seconds" >&2; exit 2; }
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=$grace
[ $# -gt 0 ] || { echo "usage: $0 [--dry-run] [--nproc N] <sdft command> CONFIG.yaml [key=value ...]" >&2; exit 2; }
if [ -z "$nproc" ]; then
  nproc=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [ "${nproc:-0}" -gt 0 ] || nproc=1
fi
py=${SDFT_PYTHON:-python}
# The c10d rendezvous (not the static one), and the workers' own store for each round rather than the
# agent's shared one: after a restart, gloo reads the addresses of the dead ranks from a shared store
# ("connectFullMesh failed ... Connection refused").
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
cmd=("$py" -m torch.distributed.run --nnodes="${NNODES:-1}" --nproc_per_node="$nproc" --rdzv-backend=c10d
     --rdzv-endpoint="${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" --rdzv-id="${RDZV_ID:-sdft}"
     --max-restarts="$restarts" -m sdft "$@")
if [ "$dry" = 1 ]; then printf '%q ' "TORCH_ELASTIC_SHUTDOWN_TIMEOUT=$grace" "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
