#!/usr/bin/env bash
# Sets up .venv (first run only) and runs the test suite on CPU.
#   bash launch/test.sh            default suite (~minutes)
#   bash launch/test.sh --slow     only the slow tests (long fault-injection loops, sweeps)
#   bash launch/test.sh -k NAME    any other arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup.sh
if [[ "${1:-}" == "--slow" ]]; then
  shift
  exec python -m pytest -m slow "$@"
fi
exec python -m pytest "$@"
