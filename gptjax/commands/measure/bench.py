"""`gptjax bench`: time the real jitted train step on synthetic tokens
(gptjax/performance/step_bench.py).

    gptjax bench --config configs/gpt2.py:124m --config.train.batch_size=16 --steps 20 --json
"""

from __future__ import annotations

import json
import sys

from gptjax.commands.args import add_config_arg
from gptjax.performance import step_bench


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default="", help="also append the JSON result to this file")
    parser.add_argument("--tag", default="", help="a label stored with the result (--out)")


def run(args):
    result = step_bench.bench(args.config, steps=args.steps, warmup=args.warmup)
    if args.tag:
        result["tag"] = args.tag
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(step_bench.format_result(result))
    sys.stdout.flush()
    return 0
