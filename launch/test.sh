#!/usr/bin/env bash
# Sets up .venv (first run only) with everything the suite needs, and runs the tests on CPU.
#   bash launch/test.sh            default suite (15 minutes on 2 cores, README.md "Tests")
#   bash launch/test.sh --slow     only the slow tests (long fault-injection loops, sweeps, docs)
#   bash launch/test.sh -k NAME    any other arguments go to pytest
# The suite's optional parts come with it (CI runs exactly this command): the GPT-2 parity tests
# (interop-test: transformers, torch), lm-evaluation-harness (eval-test), the TPU compiler
# (tpu: libtpu), the GCS emulator (gcs-test), `gptjax serve` with the openai client
# (serve-test), Weights & Biases in offline mode (wandb) and XLA:GPU's compiler (gpu-compile:
# the CUDA plugin and cuDNN, compile-only on a CPU machine). An extra that cannot be installed
# on this machine is reported by setup, and the tests that need it skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
export GPTJAX_EXTRAS="${GPTJAX_EXTRAS-interop-test,eval-test,tpu,gcs-test,serve-test,wandb,gpu-compile}"
export GPTJAX_EXTRAS_OPTIONAL=1
source launch/setup.sh
status=0
# One pytest-xdist worker per core, at most 4 (GPTJAX_TEST_WORKERS=N to choose, 0 for none); a
# test file's tests stay on one worker (--dist loadfile), so its module fixtures are made once.
workers=(-n "${GPTJAX_TEST_WORKERS:-auto}" --maxprocesses 4 --dist loadfile)
if [[ "${1:-}" == "--slow" ]]; then
  shift
  python -m pytest "${workers[@]}" -m slow "$@" || status=$?
else
  python -m pytest "${workers[@]}" "$@" || status=$?
fi
# pytest's 5 is "no test collected": with a -k that matches nothing, say so, but it is no failure.
if [[ $status == 5 ]]; then
  echo "test: no test matched" >&2
  status=0
fi
exit "$status"
