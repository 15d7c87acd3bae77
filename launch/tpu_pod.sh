#!/usr/bin/env bash
# Train on Cloud TPU slices: every worker (host) of every slice runs the same gptjax command,
# and jax.distributed finds its peers from the TPU metadata (gptjax/parallel/distributed.py).
#
#   launch/tpu_pod.sh [--dry-run] check ARGS...     # here, no TPU: gptjax compile ARGS for
#                                                   # ACCELERATOR x NUM_SLICES (fits? memory)
#   launch/tpu_pod.sh [--dry-run] create            # create the slice(s)
#   launch/tpu_pod.sh [--dry-run] setup             # copy this checkout to every worker, install
#   launch/tpu_pod.sh [--dry-run] train ARGS...     # gptjax train ARGS on all workers
#   launch/tpu_pod.sh [--dry-run] run 'COMMAND'     # any shell command on all workers
#   launch/tpu_pod.sh [--dry-run] delete
#
# Settings (environment): TPU_NAME, ZONE, ACCELERATOR (v4-32, v5litepod-16, v5p-32, v6e-16,
# ...), PROJECT (optional; gcloud's default otherwise), NUM_SLICES (default 1: one slice, a
# TPU VM; N > 1: Multislice, N slices of ACCELERATOR joined over the data-center network, as
# a queued resource), TPU_VERSION (the TPU software version; derived from ACCELERATOR).
# The workdir is a bucket, --workdir gs://BUCKET/runs/NAME: checkpoints, metrics and the
# tokenizer are written there directly (no FUSE mount; docs/multihost.md).
# Example:
#   export TPU_NAME=gpt ZONE=us-east5-a ACCELERATOR=v5p-32
#   launch/tpu_pod.sh check --config configs/gpt3.py:xl    # needs libtpu here: pip install -e '.[tpu]'
#   launch/tpu_pod.sh create && launch/tpu_pod.sh setup
#   launch/tpu_pod.sh train --config configs/gpt3.py:xl --config.mesh.fsdp=-1 \
#       --config.mesh.data=1 --config.data.data_dir=gs://my-bucket/tfds \
#       --workdir gs://my-bucket/runs/xl
#   NUM_SLICES=2 launch/tpu_pod.sh create   # ... and train with --config.mesh.dcn_data=2
# --dry-run prints the gcloud commands instead of running them.
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
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

slices() {  # NUM_SLICES, checked
  local n="${NUM_SLICES:-1}"
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "NUM_SLICES=$n: expected a positive integer"
  echo "$n"
}

gcloud_tpu() {  # gcloud compute tpus tpu-vm|queued-resources SUBCOMMAND ARGS --zone ... [--project]
  local sub="$1"
  shift
  local kind=tpu-vm extra=()
  if [[ "$(slices)" -gt 1 ]]; then
    kind=queued-resources  # Multislice: the slices are nodes of one queued resource
  fi
  if [[ -n "${PROJECT:-}" ]]; then
    extra+=(--project="$PROJECT")
  fi
  run gcloud compute tpus "$kind" "$sub" "$@" --zone="$ZONE" "${extra[@]}"
}

all_workers() {  # the flags that address every worker (of every slice)
  if [[ "$(slices)" -gt 1 ]]; then
    echo "--node=all --worker=all"
  else
    echo "--worker=all"
  fi
}

on_all_workers() {  # COMMAND string, run by bash on every worker at once
  local flags
  read -r -a flags <<<"$(all_workers)"
  gcloud_tpu ssh "$TPU_NAME" "${flags[@]}" --command="$1"
}

cmd_create() {
  need TPU_NAME ZONE ACCELERATOR
  local version="${TPU_VERSION:-}" n
  if [[ -z "$version" ]]; then
    version="$(tpu_version "$ACCELERATOR")"
  fi
  n="$(slices)"
  if [[ "$n" -gt 1 ]]; then
    gcloud_tpu create "$TPU_NAME" --node-count="$n" --node-prefix="$TPU_NAME" \
      --accelerator-type="$ACCELERATOR" --runtime-version="$version"
  else
    gcloud_tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$version"
  fi
}

cmd_check() {  # runs here: the TPU compiler on the slice ACCELERATOR describes
  need ACCELERATOR
  [[ $# -gt 0 ]] || die "check needs gptjax compile arguments, e.g. --config configs/gpt3.py:xl"
  run env JAX_PLATFORMS=cpu "${PYTHON:-python3}" -m gptjax compile --topology "$ACCELERATOR" \
    --num-slices "$(slices)" "$@"
}

cmd_setup() {
  need TPU_NAME ZONE
  local repo archive
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  archive="${TMPDIR:-/tmp}/gptjax-src.tar.gz"
  # The checkout as committed (git archive): no local runs, caches or virtualenvs travel.
  run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  local flags
  read -r -a flags <<<"$(all_workers)"
  gcloud_tpu scp "$archive" "$TPU_NAME:gptjax-src.tar.gz" "${flags[@]}"
  # .[tpu] includes gcsfs: gs:// workdirs and data are read and written directly.
  local install="set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf ~/gptjax-src.tar.gz -C ~/$REMOTE_DIR"
  install+=" && cd ~/$REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip"
  install+=" && .venv/bin/pip install -q -e '.[tpu]'"
  on_all_workers "$install"
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
  [[ $# -gt 0 ]] || die "train needs gptjax train arguments, e.g. --config configs/gpt3.py:xl --workdir gs://BUCKET/runs/xl"
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
  if [[ "$(slices)" -gt 1 ]]; then
    gcloud_tpu delete "$TPU_NAME" --force --quiet  # the queued resource and its slices
  else
    gcloud_tpu delete "$TPU_NAME" --quiet
  fi
}

main() {
  local cmd="${1:-}"
  [[ -n "$cmd" ]] || die "usage: launch/tpu_pod.sh [--dry-run] check|create|setup|train|run|delete [ARGS]"
  shift
  slices >/dev/null  # a bad NUM_SLICES stops here
  case "$cmd" in
    check) cmd_check "$@" ;;
    create) cmd_create "$@" ;;
    setup) cmd_setup "$@" ;;
    train) cmd_train "$@" ;;
    run) cmd_run "$@" ;;
    delete) cmd_delete "$@" ;;
    -h | --help) sed -n '2,27p' "$0" ;;
    *) die "unknown command '$cmd': choose check, create, setup, train, run or delete" ;;
  esac
}

main "$@"
