"""`gptjax finetune --config FILE.py[:ARG] --workdir DIR`: supervised fine-tuning on
prompt/response JSONL (gptjax/training/finetune.py)."""

from __future__ import annotations

import jax

from gptjax.commands.args import add_config_arg
from gptjax.training.finetune import Finetuning
from gptjax.training.train import train
from gptjax.workdir import storage_errors


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--workdir", required=True, help="where the fine-tuned run is written")


def run(args):
    r = storage_errors(lambda: train(args.config, args.workdir, Finetuning()), args.workdir)
    before = "" if "eval_start_loss" not in r else (
        f", held-out response loss {r['eval_start_loss']:.4f} -> {r['eval_loss']:.4f}")
    if jax.process_index() == 0:
        print(f"done: {r['step']} steps{before}, {r['wall_time']:.0f}s -> {r['workdir']}")
    return 0
