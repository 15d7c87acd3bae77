#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: every worker (host) runs the same gptjax command, and
# jax.distributed finds its peers from the TPU metadata (gptjax/distributed.py).
#
#   launch/tpu_pod.sh [--dry-run] check ARGS...     # here, no TPU: gptjax compile ARGS for
#                                                   # ACCELERATOR (fits? memory, FLOPs)
#   launch/tpu_pod.sh [--dry-run] create            # create the TPU VM slice
#   launch/tpu_pod.sh [--dry-run] setup             # copy this checkout, install, mount GCS
#   launch/tpu_pod.sh [--dry-run] train ARGS...     # gptjax train ARGS on all workers
#   launch/tpu_pod.sh [--dry-run] run 'COMMAND'     # any shell command on all workers
#   launch/tpu_pod.sh [--dry-run] delete
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (v4-32, v5litepod-16, v5p-32, v6e-16,
# ...), PROJECT (optional; gcloud's default otherwise), BUCKET (gs://bucket: mounted with
# gcsfuse at MOUNT=/mnt/gcs on every worker, so checkpoints, metrics and the tokenizer are
# shared), TPU_VERSION (the TPU software version; derived from ACCELERATOR).
# Example:
#   export TPU_NAME=gpt ZONE=us-east5-a ACCELERATOR=v5p-32 BUCKET=gs://my-bucket
#   launch/tpu_pod.sh check --config configs/gpt3.py:xl    # needs libtpu here: pip install -e '.[tpu]'
#   launch/tpu_pod.sh create && launch/tpu_pod.sh setup
#   launch/tpu_pod.sh train --config configs/gpt3.py:xl \
#       --config.data.data_dir=gs://my-bucket/tfds --workdir /mnt/gcs/runs/xl
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
MOUNT="${MOUNT:-/mnt/gcs}"
REMOTE_DIR="${REMOTE_DIR:-gptjax}"

die() {
  echo "tpu_pod.sh: error: $*" >&2
  exit 2
}

run() {  # print, then run unless --dry-run
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "$DRY_RUN" == 0 ]]; then
    "$@"
  fi
}

need() {
  local name
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || die "set $name (see the header of launch/tpu_pod.sh)"
  done
}

tpu_version() {  # Cloud TPU software versions for JAX, per generation
  case "$1" in
    v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) die "ACCELERATOR=$1: expected v4-N, v5litepod-N, v5p-N or v6e-N (or set TPU_VERSION)" ;;
  esac
}

gcloud_tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone ... [--project ...] ARGS
  local sub="$1"
  shift
  local extra=()
  if [[ -n "${PROJECT:-}" ]]; then
    extra+=(--project="$PROJECT")
  fi
  run gcloud compute tpus tpu-vm "$sub" "$@" --zone="$ZONE" "${extra[@]}"
}

on_all_workers() {  # COMMAND string, run by bash on every worker at once
  gcloud_tpu ssh "$TPU_NAME" --worker=all --command="$1"
}

cmd_create() {
  need TPU_NAME ZONE ACCELERATOR
  local version="${TPU_VERSION:-}"
  if [[ -z "$version" ]]; then
    version="$(tpu_version "$ACCELERATOR")"
  fi
  gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$version"
}

cmd_check() {  # runs here: the TPU compiler on the slice ACCELERATOR describes
  need ACCELERATOR
  [[ $# -gt 0 ]] || die "check needs gptjax compile arguments, e.g. --config configs/gpt3.py:xl"
  run env JAX_PLATFORMS=cpu "${PYTHON:-python3}" -m gptjax compile --topology "$ACCELERATOR" "$@"
}

cmd_setup() {
  need TPU_NAME ZONE
  local repo archive
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  archive="${TMPDIR:-/tmp}/gptjax-src.tar.gz"
  # The checkout as committed (git archive): no local runs, caches or virtualenvs travel.
  run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  gcloud_tpu scp "$archive" "$TPU_NAME:gptjax-src.tar.gz" --worker=all
  local install="set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/gptjax-src.tar.gz -C ~/$REMOTE_DIR"
  install+=" && cd ~/$REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip"
  install+=" && .venv/bin/pip install -q -e '.[tpu]'"
  on_all_workers "$install"
  if [[ -n "${BUCKET:-}" ]]; then
    [[ "$BUCKET" == gs://* ]] || die "BUCKET=$BUCKET: expected gs://NAME"
    # Cloud Storage FUSE (packages.cloud.google.com), mounted on every worker.
    local mount="set -e; if ! command -v gcsfuse >/dev/null; then"
    mount+=" curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg"
    mount+=" | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
    mount+=" && echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc]"
    mount+=" https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\""
    mount+=" | sudo tee /etc/apt/sources.list.d/gcsfuse.list"
    mount+=" && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; fi"
    mount+=" && sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT"
    mount+=" && (mountpoint -q $MOUNT || gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT)"
    on_all_workers "$mount"
  fi
}

quote_args() {
  local out="" a
  for a in "$@"; do
    out+=" $(printf '%q' "$a")"
  done
  echo "$out"
}

cmd_train() {
  need TPU_NAME ZONE
  [[ $# -gt 0 ]] || die "train needs gptjax train arguments, e.g. --config configs/gpt3.py:xl --workdir $MOUNT/runs/xl"
  local args
  args="$(quote_args "$@")"
  on_all_workers "cd ~/$REMOTE_DIR && source launch/env/tpu.env && .venv/bin/gptjax train$args"
}

cmd_run() {
  need TPU_NAME ZONE
  [[ $# -eq 1 ]] || die "run takes one quoted command, e.g. run 'cd gptjax && git log -1'"
  on_all_workers "$1"
}

cmd_delete() {
  need TPU_NAME ZONE
  gcloud_tpu delete "$TPU_NAME" --quiet
}

main() {
  local cmd="${1:-}"
  [[ -n "$cmd" ]] || die "usage: launch/tpu_pod.sh [--dry-run] check|create|setup|train|run|delete [ARGS]"
  shift
  case "$cmd" in
    check) cmd_check "$@" ;;
    create) cmd_create "$@" ;;
    setup) cmd_setup "$@" ;;
    train) cmd_train "$@" ;;
    run) cmd_run "$@" ;;
    delete) cmd_delete "$@" ;;
    -h | --help) sed -n '2,25p' "$0" ;;
    *) die "unknown command '$cmd': choose check, create, setup, train, run or delete" ;;
  esac
}

main "$@"
