#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Delete the TPU VM (and its queued resource). Run directories on GCS are kept.
#
#   ./delete.sh --name jaxkernel --zone us-west4-a
#   DRY_RUN=1 QUEUED=1 ./delete.sh
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE_LINE="delete.sh [options]"
USAGE_TEXT="Delete the TPU VM NAME without asking (with --queued: the queued resource NAME-qr and its node).
Checkpoints and logs under BUCKET stay."
parse_args "$@"

if [[ "${QUEUED}" == "1" ]]; then
  run gcloud compute tpus queued-resources delete "${NAME}-qr" "${WHERE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "${NAME}" "${WHERE[@]}" --quiet
fi
