#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Keep a (spot) training run going: when the TPU VM is preempted, recreate it, set it up and
# launch again; `jaxkernel train` resumes from the latest Orbax checkpoint in the GCS run dir.
#
#   SPOT=1 ./resume_on_preemption.sh configs/bert_ner_lora.yaml train.steps=5000
#   DRY_RUN=1 ./resume_on_preemption.sh configs/tpu_smoke.yaml   # shows the recovery path
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

MAX_ATTEMPTS="${MAX_ATTEMPTS:-20}"   # launches before giving up
RETRY_WAIT="${RETRY_WAIT:-60}"       # seconds between a failed attempt and the next check
USAGE_LINE="resume_on_preemption.sh [options] CONFIG [section.key=value ...]"
USAGE_TEXT="Loop up to MAX_ATTEMPTS (now ${MAX_ATTEMPTS}) times: if the TPU VM NAME is not READY, delete
it (if it exists), create.sh and setup.sh; then launch.sh CONFIG. Stops when training finishes, or
when it fails on a TPU VM that is still READY (a real error, not a preemption: read the logs).
With DRY_RUN=1 the TPU state is taken from DRY_RUN_TPU_STATE (default PREEMPTED)."
parse_args "$@"
if [[ ${#ARGS[@]} -lt 1 ]]; then
  usage >&2
  exit 2
fi
export_settings

# check_state: STATE = the TPU VM's state (READY, PREEMPTED, ...; empty when it does not exist).
check_state() {
  local query=(gcloud compute tpus tpu-vm describe "${NAME}" "${WHERE[@]}" --format='value(state)')
  if [[ "${DRY_RUN}" == "1" ]]; then
    quote_args "${query[@]}"
    STATE="${DRY_RUN_TPU_STATE:-PREEMPTED}"
  else
    STATE="$("${query[@]}" 2>/dev/null)" || STATE=""
  fi
}

for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
  echo "# attempt ${attempt}/${MAX_ATTEMPTS}"
  check_state
  if [[ "${STATE}" != "READY" ]]; then
    echo "# TPU VM ${NAME} is ${STATE:-absent}: recreating it"
    # Delete whatever is left (a preempted node, a suspended queued resource); absent is fine.
    "${SCRIPT_DIR}/delete.sh" || true
    "${SCRIPT_DIR}/create.sh"
    "${SCRIPT_DIR}/setup.sh"
  fi
  if "${SCRIPT_DIR}/launch.sh" "${ARGS[@]}"; then
    echo "# training finished"
    exit 0
  fi
  check_state
  if [[ "${STATE}" == "READY" ]]; then
    echo "resume_on_preemption.sh: training failed on a READY TPU VM (not a preemption); see the worker logs" >&2
    exit 1
  fi
  sleep "${RETRY_WAIT}"
done
echo "resume_on_preemption.sh: gave up after ${MAX_ATTEMPTS} attempts" >&2
exit 1
