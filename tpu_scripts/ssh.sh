#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Open a shell on one worker of the TPU VM, or run a command on one or all workers.
#
#   ./ssh.sh                              # interactive shell on worker 0
#   ./ssh.sh --worker 2 -- nvidia-smi     # (any command) on worker 2
#   ./ssh.sh --worker all -- 'tail -n 5 ~/jaxkernel-logs/*.log'
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE_LINE="ssh.sh [options] [--worker N|all] [-- COMMAND...]"
USAGE_TEXT="SSH into worker N (default 0) of the TPU VM NAME; with a COMMAND, run it there and return.
  --worker N|all          which worker (all = every worker at once; needs a COMMAND)"
WORKER="${WORKER:-0}"
args=("$@")
rest=()
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ "${args[i]}" == "--worker" ]]; then
    WORKER="${args[i + 1]:?--worker needs a value}"
    i=$((i + 1))
  else
    rest+=("${args[i]}")
  fi
done
parse_args "${rest[@]+"${rest[@]}"}"

command_flag=()
if [[ ${#ARGS[@]} -gt 0 ]]; then
  command_flag=(--command="${ARGS[*]}")
elif [[ "${WORKER}" == "all" ]]; then
  echo "ssh.sh: --worker all needs a command after --, e.g. ./ssh.sh --worker all -- hostname" >&2
  exit 2
fi
run gcloud compute tpus tpu-vm ssh "${NAME}" "${WHERE[@]}" --worker="${WORKER}" "${command_flag[@]}"
