"""`gptjax quantize`: an int8 / int4 weight-only copy of a trained workdir (no float
checkpoint in it; `gptjax sample` / `eval` read it like any workdir)."""

from __future__ import annotations

from gptjax import workdir
from gptjax.inference import quantization
from gptjax.storage import paths, quantized


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="a trained gptjax workdir")
    parser.add_argument("--out", required=True, help="new workdir for the quantized model")
    parser.add_argument("--mode", choices=("int8", "int4"), default="int8")
    parser.add_argument("--group", type=int, default=None,
                        help="input channels per scale (0 = per output channel; default: "
                             "int8 0, int4 32)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")


def run(args):
    config, params, tokenizer, step = workdir.open_run(args.workdir, step=args.step)
    q = quantization.quantize(params, args.mode, args.group)
    out = workdir.start(args.out, config, tokenizer, source=args.workdir)
    group = quantization.DEFAULT_GROUP[args.mode] if args.group is None else args.group
    path = quantized.save(out, q, {"mode": args.mode, "group": group, "step": step,
                                   "source": paths.resolve(args.workdir)})
    print(f"{args.mode} weights ({quantization.weight_bytes(q) / 1e6:.2f} MB, float "
          f"{quantization.weight_bytes(params) / 1e6:.2f} MB) -> {path}")
    return 0
