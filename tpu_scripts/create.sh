#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Create a TPU VM (or pod slice) for jaxkernel.
#
#   ./create.sh --accelerator-type v5litepod-8 --zone us-west4-a --spot
#   QUEUED=1 ACCELERATOR_TYPE=v4-32 ZONE=us-central2-b ./create.sh
#   DRY_RUN=1 ./create.sh            # print the gcloud commands only
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE_LINE="create.sh [options]"
USAGE_TEXT="Create the TPU VM NAME: directly (gcloud compute tpus tpu-vm create), or with --queued
through a queued resource NAME-qr that waits for capacity. --spot asks for spot capacity."
parse_args "$@"

spot_flag=()
if [[ "${SPOT}" == "1" ]]; then
  spot_flag=(--spot)
fi

if [[ "${QUEUED}" == "1" ]]; then
  run gcloud compute tpus queued-resources create "${NAME}-qr" "${WHERE[@]}" --node-id="${NAME}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --runtime-version="${RUNTIME_VERSION}" "${spot_flag[@]}"
  # The node exists once the queued resource is ACTIVE; poll until then.
  describe=(gcloud compute tpus queued-resources describe "${NAME}-qr" "${WHERE[@]}" --format='value(state.state)')
  if [[ "${DRY_RUN}" == "1" ]]; then
    run "${describe[@]}"
    echo "# (repeated every 60 s until it prints ACTIVE)"
  else
    while state="$("${describe[@]}")"; [[ "${state}" != "ACTIVE" ]]; do
      if [[ "${state}" == "FAILED" || "${state}" == "SUSPENDED" ]]; then
        echo "queued resource ${NAME}-qr is ${state}; delete it (./delete.sh) and try another zone" >&2
        exit 1
      fi
      echo "queued resource ${NAME}-qr: ${state:-unknown}; waiting for ACTIVE" >&2
      sleep 60
    done
  fi
else
  run gcloud compute tpus tpu-vm create "${NAME}" "${WHERE[@]}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" "${spot_flag[@]}"
fi
