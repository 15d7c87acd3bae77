"""`gptjax distill --config FILE.py[:ARG] --workdir DIR`: train a student on a teacher's soft
targets (gptjax/training/distill.py)."""

from __future__ import annotations

import jax

from gptjax.commands.args import add_config_arg
from gptjax.commands.train.train import summary
from gptjax.training.distill import Distillation
from gptjax.training.train import train
from gptjax.workdir import storage_errors


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--workdir", required=True, help="the student's run directory")


def run(args):
    result = storage_errors(lambda: train(args.config, args.workdir, Distillation()),
                            args.workdir)
    if jax.process_index() == 0:
        print(summary(result))
    return 0
