#!/usr/bin/env bash
# Run an sdft command on N local ranks with torchrun (one per GPU; CPU ranks use gloo).
#
#   launch/torchrun.sh --nproc 8 run examples/quickstart.yaml train.deepspeed=zero3
#   launch/torchrun.sh --dry-run --nproc 8 train my.yaml          # print the command only
#
# Several nodes without SLURM: run the same line on every node with
#   NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<head node> MASTER_PORT=29500 launch/torchrun.sh --nproc 8 ...
# Defaults: --nproc = number of visible GPUs (1 without GPUs).
set -euo pipefail
dry=0
nproc=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --nproc) nproc=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--dry-run] [--nproc N] <sdft command> CONFIG.yaml [key=value ...]" >&2; exit 2; }
if [ -z "$nproc" ]; then
  nproc=$(nvidia-smi -L 2>/dev/null | wc -l || true)
  [ "${nproc:-0}" -gt 0 ] || nproc=1
fi
py=${SDFT_PYTHON:-python}
cmd=("$py" -m torch.distributed.run --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$nproc"
     --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" -m sdft "$@")
if [ "$dry" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
