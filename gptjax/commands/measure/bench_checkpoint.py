"""`gptjax bench-checkpoint`: the save-time cost of the checkpoint integrity manifest
(gptjax/performance/checkpoint_bench.py).

    gptjax bench-checkpoint --config configs/gpt2.py:124m --repeats 3 --json
"""

from __future__ import annotations

import json

from gptjax.commands.args import add_config_arg
from gptjax.performance import checkpoint_bench


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--repeats", type=int, default=3, help="saves of each kind (median)")
    parser.add_argument("--dir", default=None,
                        help="where to write the checkpoints (default: the system temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    result = checkpoint_bench.bench(args.config, repeats=args.repeats, directory=args.dir)
    print(json.dumps(result) if args.json else checkpoint_bench.format_result(result))
    return 0
