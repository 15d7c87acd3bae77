"""`gptjax plot WORKDIR`: draw the loss curves of a workdir to loss.png
(gptjax/metrics/curves.py)."""

from __future__ import annotations

import argparse

from gptjax.errors import UserError
from gptjax.metrics import curves


def add_args(parser):
    parser.add_argument("workdir", nargs="?", help="a training workdir (holds metrics.jsonl)")
    parser.add_argument("--workdir", dest="workdir_flag", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--out", help="output PNG (default WORKDIR/loss.png)")


def run(args):
    workdir = args.workdir or args.workdir_flag
    if not workdir:
        raise UserError("gptjax plot WORKDIR: give the training workdir")
    print(curves.plot(workdir, out=args.out))
