#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Run `jaxkernel train CONFIG [overrides]` on every worker at once, with its run directory on GCS.
#
#   ./launch.sh configs/tpu_smoke.yaml
#   ./launch.sh configs/bert_ner_lora.yaml train.steps=2000 --name jaxkernel
#   RUN_NAME=ner-try2 DRY_RUN=1 ./launch.sh configs/bert_ner_lora.yaml
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE_LINE="launch.sh [options] CONFIG [section.key=value ...]"
USAGE_TEXT="Copy CONFIG to every worker and run 'jaxkernel train' there at once (one JAX process per
worker). The run directory is BUCKET/runs/RUN_NAME (RUN_NAME defaults to CONFIG's file name), so
launching again resumes from its latest checkpoint. Each worker writes ~/jaxkernel-logs/RUN_NAME-worker-N.log
and copies it to RUN_DIR/logs/ when training ends; the exit status is non-zero if any worker failed."
parse_args "$@"

if [[ ${#ARGS[@]} -lt 1 ]]; then
  usage >&2
  exit 2
fi
config="${ARGS[0]}"
overrides=("${ARGS[@]:1}")
RUN_NAME="${RUN_NAME:-$(basename "${config%.*}")}"
RUN_DIR="${BUCKET}/runs/${RUN_NAME}"
if [[ "${DRY_RUN}" != "1" && ! -f "${config}" ]]; then
  echo "launch.sh: config file ${config} does not exist" >&2
  exit 2
fi

run gcloud compute tpus tpu-vm scp "${config}" "${NAME}:jaxkernel-${RUN_NAME}.yaml" "${WHERE[@]}" --worker=all

# The worker number comes from the VM's metadata server; JAXKERNEL_DISTRIBUTED=1 makes the
# train verb call jax.distributed.initialize(), which finds the other workers the same way.
log="jaxkernel-logs/${RUN_NAME}-worker-\${worker}.log"
train_args="$(quote_args "${overrides[@]+"${overrides[@]}"}" "train.run_dir=${RUN_DIR}")"
on_workers "worker=\$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)
mkdir -p jaxkernel-logs
JAXKERNEL_DISTRIBUTED=1 ${VENV}/bin/python -m jaxkernel.cli train jaxkernel-${RUN_NAME}.yaml ${train_args} 2>&1 | tee ${log}
status=\${PIPESTATUS[0]}
gcloud storage cp ${log} ${RUN_DIR}/logs/worker-\${worker}.log || true
exit \${status}"
