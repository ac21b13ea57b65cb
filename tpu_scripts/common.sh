# shellcheck shell=bash
# Settings and helpers shared by the TPU-VM scripts in this folder; sourced, never run.
#
# Every setting can come from the environment (PROJECT=... ./create.sh) or from a flag
# (./create.sh --project ...); flags win. DRY_RUN=1 (or --dry-run) prints each command,
# quoted so it can be pasted into a shell, instead of running it.

# ---- settings (edit these, or export them) --------------------------------------------------
PROJECT="${PROJECT:-my-gcp-project}"            # Google Cloud project id
ZONE="${ZONE:-us-west4-a}"                      # a zone that offers ACCELERATOR_TYPE
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-8}"  # v5litepod-8 (v5e-8), v4-32, v5p-8, v6e-8, ...
RUNTIME_VERSION="${RUNTIME_VERSION:-}"          # TPU VM image; empty = chosen from ACCELERATOR_TYPE below
NAME="${NAME:-jaxkernel}"                       # TPU VM (node) name; the queued resource is NAME-qr
BUCKET="${BUCKET:-gs://my-bucket/jaxkernel}"    # run directories go to BUCKET/runs/RUN_NAME
SPOT="${SPOT:-0}"                               # 1 = spot capacity (cheap, can be preempted)
QUEUED="${QUEUED:-0}"                           # 1 = create through a queued resource (waits for capacity)
JAX_VERSION="${JAX_VERSION:-0.10.2}"            # jax[tpu] version installed on the workers
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"        # jax 0.10 needs >= 3.11; TPU VM images ship 3.10, so uv installs it
# shellcheck disable=SC2034  # used by setup.sh and launch.sh
VENV="jaxkernel-venv"                           # the virtual environment on each worker (in the home directory)
JAXKERNEL_SPEC="${JAXKERNEL_SPEC:-}"            # pip spec of jaxkernel; empty = this checkout, copied over
DRY_RUN="${DRY_RUN:-0}"                         # 1 = print the commands instead of running them

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"

# Flags shared by every script; each script appends its own lines to USAGE_OPTIONS.
COMMON_OPTIONS="  --project ID            Google Cloud project (PROJECT, now: ${PROJECT})
  --zone ZONE             zone (ZONE, now: ${ZONE})
  --accelerator-type T    e.g. v5litepod-8 or v4-32 (ACCELERATOR_TYPE, now: ${ACCELERATOR_TYPE})
  --runtime-version V     TPU VM image (RUNTIME_VERSION, default from the accelerator type)
  --name NAME             TPU VM name (NAME, now: ${NAME})
  --bucket gs://...       where run directories go (BUCKET, now: ${BUCKET})
  --spot                  spot capacity (SPOT=1)
  --queued                use a queued resource (QUEUED=1)
  --dry-run               print the commands instead of running them (DRY_RUN=1)
  -h, --help              show this help"

usage() {
  printf 'Usage: %s\n\n%s\n\nOptions:\n%s\n' "${USAGE_LINE}" "${USAGE_TEXT}" "${COMMON_OPTIONS}"
}

# parse_args "$@": sets the settings above from flags; leaves the other arguments in ARGS.
ARGS=()
WHERE=()
parse_args() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help) usage; exit 0 ;;
      --project) PROJECT="$2"; shift 2 ;;
      --zone) ZONE="$2"; shift 2 ;;
      --accelerator-type) ACCELERATOR_TYPE="$2"; shift 2 ;;
      --runtime-version) RUNTIME_VERSION="$2"; shift 2 ;;
      --name) NAME="$2"; shift 2 ;;
      --bucket) BUCKET="$2"; shift 2 ;;
      --spot) SPOT=1; shift ;;
      --queued) QUEUED=1; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; ARGS+=("$@"); break ;;
      *) ARGS+=("$1"); shift ;;
    esac
  done
  if [[ -z "${RUNTIME_VERSION}" ]]; then
    RUNTIME_VERSION="$(default_runtime "${ACCELERATOR_TYPE}")"
  fi
  BUCKET="${BUCKET%/}"
  WHERE=("--project=${PROJECT}" "--zone=${ZONE}")  # the location flags every gcloud TPU command takes
}

# The TPU VM image Google documents for each generation.
default_runtime() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}

# quote_args ARG...: the arguments as one shell line (plain words bare, others single-quoted).
quote_args() {
  local out="" arg
  for arg in "$@"; do
    if [[ "${arg}" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
      out+="${arg} "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# run CMD...: run a command, or print it when DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    quote_args "$@"
  else
    "$@"
  fi
}

# on_workers REMOTE_COMMAND: run a shell command on every worker of the TPU VM at once.
on_workers() {
  run gcloud compute tpus tpu-vm ssh "${NAME}" "${WHERE[@]}" --worker=all --command="$1"
}

# Hand the settings to the other scripts this one calls.
export_settings() {
  export PROJECT ZONE ACCELERATOR_TYPE RUNTIME_VERSION NAME BUCKET SPOT QUEUED JAX_VERSION PYTHON_VERSION \
    JAXKERNEL_SPEC DRY_RUN
}
