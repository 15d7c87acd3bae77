"""`gptjax quantize`: an int8 / int4 weight-only copy of a trained workdir (no float
checkpoint in it; `gptjax sample` / `eval` read it like any workdir)."""

from __future__ import annotations

from gptjax.compression.surgery import quantize_workdir, quantized_line


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="a trained gptjax workdir")
    parser.add_argument("--out", required=True, help="new workdir for the quantized model")
    parser.add_argument("--mode", choices=("int8", "int4"), default="int8")
    parser.add_argument("--group", type=int, default=None,
                        help="input channels per scale (0 = per output channel; default: "
                             "int8 0, int4 32)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")


def run(args):
    q = quantize_workdir(args.workdir, args.out, args.mode, args.group, args.step)
    print(quantized_line(q))
    return 0
