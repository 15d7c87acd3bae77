"""`gptjax bench`: time the real jitted train step on synthetic tokens
(gptjax/performance/step_bench.py); `--against nanogpt`: alternating windows of it and of
nanoGPT's torch step on the same shape, with the ratio (gptjax/performance/versus_nanogpt.py).

    gptjax bench --config configs/gpt2.py:124m --config.train.batch_size=16 --steps 20 --json
    gptjax bench --config configs/smoke.py --against nanogpt --windows 8 --steps 5
"""

from __future__ import annotations

import json
import sys

from gptjax.commands.args import add_config_arg
from gptjax.performance import step_bench, versus_nanogpt


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", default="", help="also append the JSON result to this file")
    parser.add_argument("--tag", default="", help="a label stored with the result (--out)")
    parser.add_argument("--against", choices=("nanogpt",), default=None,
                        help="also time nanoGPT's torch step on the same shape (CPU) in "
                             "alternating windows of --steps steps, and print the ratio")
    parser.add_argument("--nanogpt-dir", default=versus_nanogpt.DEFAULT_NANOGPT_DIR,
                        help="a nanoGPT checkout (its model.py is imported from there)")
    parser.add_argument("--windows", type=int, default=8,
                        help="--against: timed windows per side")
    parser.add_argument("--threads", type=int, default=0,
                        help="--against: pin both sides to this many CPUs (0 = all)")


def run(args):
    if args.against:
        result = versus_nanogpt.compare(args.config, args.nanogpt_dir, windows=args.windows,
                                        steps=args.steps, warmup=args.warmup,
                                        threads=args.threads)
        text = versus_nanogpt.format_result(result)
    else:
        result = step_bench.bench(args.config, steps=args.steps, warmup=args.warmup)
        text = step_bench.format_result(result)
    if args.tag:
        result["tag"] = args.tag
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    if args.json:
        print(json.dumps(result))
    else:
        print(text)
    sys.stdout.flush()
    return 0
