"""`gptjax eval --workdir DIR`: held-out loss, perplexity (and bits/char) of a trained workdir,
on the same eval batches training reports on (gptjax/training/evaluation.py)."""

from __future__ import annotations

import json

from gptjax.evaluation.heldout import evaluate_workdir
from gptjax.inference import quantization

APPLIES_OVERRIDES = True  # e.g. --config.train.eval_batches=50 on the saved config


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the newest complete one)")
    parser.add_argument("--batches", type=int, default=None,
                        help="number of eval batches (default: config.train.eval_batches)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quantize", choices=quantization.MODES, default="none",
                        help="evaluate quantized: int8 / int4 weight-only, w8a8 int8 weights "
                             "and activations (gptjax/inference/quantization.py)")


def run(args):
    result = evaluate_workdir(args.workdir, args.overrides, step=args.step, batches=args.batches,
                              quantize=args.quantize)
    if args.json:
        print(json.dumps(result))
        return 0
    line = (f"step {result['step']}: eval loss {result['loss']:.4f}, perplexity "
            f"{result['perplexity']:.3f} over {result['tokens']:,} tokens")
    if "bits_per_char" in result:
        line += f", {result['bits_per_char']:.4f} bits/char"
    print(line)
    return 0
