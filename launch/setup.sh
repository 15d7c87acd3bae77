# shellcheck shell=bash
# Sourced by launch/*.sh: creates and activates .venv with gptjax and its dependencies.
# Re-installs only when pyproject.toml changed. Set GPTJAX_EXTRAS=cuda on a GPU machine
# (tpu on a TPU VM, gcs for gs:// workdirs elsewhere, interop-test for the transformers parity
# tests, eval for lm-eval-harness, eval-test for its tests, gcs-test for the GCS emulator tests);
# several: a comma list, e.g. GPTJAX_EXTRAS=interop-test,eval-test. With
# GPTJAX_EXTRAS_OPTIONAL=1 (launch/test.sh) an extra that fails to install is reported, not fatal.
PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=".venv/.installed-dev-interop${GPTJAX_EXTRAS:+-${GPTJAX_EXTRAS//,/-}}"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "setup: installing gptjax[dev,interop${GPTJAX_EXTRAS:+,$GPTJAX_EXTRAS}] into .venv (first run only)" >&2
  python -m pip install --quiet -e ".[dev,interop]"
  IFS=, read -r -a _extras <<< "${GPTJAX_EXTRAS:-}"
  for _extra in "${_extras[@]}"; do
    # torch (the interop-test extra) in its CPU build where pip finds one (2.13.0 is a local
    # CPU wheel on the project's CI machines): the suite needs no GPU build.
    if [[ "$_extra" == interop-test || "$_extra" == eval-test ]] \
        && ! python -c "import torch" 2>/dev/null; then
      python -m pip install --quiet "torch==2.13.0" 2>/dev/null || true
    fi
    if ! python -m pip install --quiet -e ".[dev,interop,$_extra]"; then
      if [[ -z "${GPTJAX_EXTRAS_OPTIONAL:-}" ]]; then
        echo "setup: could not install gptjax[$_extra]" >&2
        return 1
      fi
      echo "setup: gptjax[$_extra] could not be installed here; the tests that need it skip" >&2
    fi
  done
  touch "$stamp"
fi
# libtpu (the tests' TPU compiler) on a machine with no TPU and no CUDA plugin: run on the CPU
# without JAX first probing for a TPU (a page of libtpu warnings). `gptjax compile` still works.
if [[ -z "${JAX_PLATFORMS:-}" && ! -e /dev/accel0 && ! -e /dev/vfio/0 ]] && python -c "
import importlib.util as u, pkgutil, sys
plugins = [m.name for m in pkgutil.iter_modules() if m.name.startswith('jax_cuda')]
sys.exit(not u.find_spec('libtpu') or bool(plugins))" 2>/dev/null; then
  export JAX_PLATFORMS=cpu
fi
# The CUDA plugin (gpu-compile: XLA:GPU's compiler) on a machine with no NVIDIA GPU: run on the
# CPU too (else JAX fails its CUDA check loudly); `gptjax compile --topology h100-8` still works.
if [[ -z "${JAX_PLATFORMS:-}" && ! -e /dev/nvidiactl && ! -e /dev/accel0 && ! -e /dev/vfio/0 ]] \
    && python -c "import importlib.util as u, sys; sys.exit(not u.find_spec('jax_cuda12_plugin'))" \
    2>/dev/null; then
  export JAX_PLATFORMS=cpu
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}" TF_ENABLE_ONEDNN_OPTS=0
# Offline copy of tiny_shakespeare beside the repo (CI, tests); elsewhere TFDS downloads it.
if [[ -z "${GPTJAX_MANUAL_DIR:-}" && -f ../shared/data/tiny_shakespeare/input.txt ]]; then
  GPTJAX_MANUAL_DIR="$(cd ../shared/data/tiny_shakespeare && pwd)"
  export GPTJAX_MANUAL_DIR
fi
