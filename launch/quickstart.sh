#!/usr/bin/env bash
# The main job: set up .venv, train the default small GPT on tiny_shakespeare, then sample.
#   bash launch/quickstart.sh [WORKDIR] [--config.KEY=VALUE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/setup.sh
workdir="${1:-runs/quickstart}"
shift || true
gptjax train --config configs/smoke.py --workdir "$workdir" "$@"
gptjax sample --workdir "$workdir" --prompt "ROMEO:"
