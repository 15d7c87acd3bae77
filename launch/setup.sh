# shellcheck shell=bash
# Sourced by launch/*.sh: creates and activates .venv with gptjax and its dependencies.
# Re-installs only when pyproject.toml changed. Set GPTJAX_EXTRAS=cuda on a GPU machine
# (tpu on a TPU VM, gcs for gs:// workdirs elsewhere, interop-test for the transformers parity
# tests, eval for lm-eval-harness, eval-test for its tests, gcs-test for the GCS emulator tests);
# several: a comma list, e.g. GPTJAX_EXTRAS=interop-test,eval-test.
PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
extras="dev,interop${GPTJAX_EXTRAS:+,$GPTJAX_EXTRAS}"
stamp=".venv/.installed-${extras//,/-}"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "setup: installing gptjax[$extras] into .venv (first run only)" >&2
  python -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" TF_ENABLE_ONEDNN_OPTS=0
# Offline copy of tiny_shakespeare beside the repo (CI, tests); elsewhere TFDS downloads it.
if [[ -z "${GPTJAX_MANUAL_DIR:-}" && -f ../shared/data/tiny_shakespeare/input.txt ]]; then
  GPTJAX_MANUAL_DIR="$(cd ../shared/data/tiny_shakespeare && pwd)"
  export GPTJAX_MANUAL_DIR
fi
