#!/usr/bin/env bash
# Run an sdft command with the DeepSpeed launcher, on this node or on the hosts of a hostfile.
#
#   launch/deepspeed.sh --num_gpus 8 run examples/quickstart.yaml train.deepspeed=zero2
#   launch/deepspeed.sh --hostfile hosts.txt train my.yaml train.deepspeed=zero3
#   launch/deepspeed.sh --dry-run --hostfile hosts.txt train my.yaml    # print the command only
#
# A hostfile has one "hostname slots=<gpus>" line per node; the launcher reaches them over ssh
# (passwordless, same paths and virtualenv on every node). On CPU pass --num_gpus explicitly: the
# launcher otherwise counts NUMA nodes and starts one process.
set -euo pipefail
dry=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --hostfile|--num_gpus|--num_nodes|--master_addr|--master_port|--include|--exclude) args+=("$1" "$2"); shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: $0 [--dry-run] [--hostfile F] [--num_gpus N] <sdft command> CONFIG.yaml [key=value ...]" >&2; exit 2; }
cmd=("${SDFT_DEEPSPEED:-deepspeed}" "${args[@]}" --no_local_rank --module sdft "$@")
if [ "$dry" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; exit 0; fi
exec "${cmd[@]}"
