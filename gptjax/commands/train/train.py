"""`gptjax train --config FILE.py[:ARG] --workdir DIR`: train (or resume) a run in a workdir."""

from __future__ import annotations

import jax

from gptjax.commands.args import add_config_arg
from gptjax.training.train import train
from gptjax.workdir import storage_errors


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, metrics, config.json, tokenizer; "
                             "training resumes if it already holds a checkpoint")


def summary(result: dict) -> str:
    """The last line a training command prints: final step, losses, time, workdir."""
    parts = [f"step {result['step']}", f"train loss {result['loss']:.4f}"]
    if "eval_loss" in result:
        at = result.get("eval_step")
        at = "" if at == result["step"] else f" (at step {at})"
        parts.append(f"val loss {result['eval_loss']:.4f}{at}")
    if "eval_bits_per_char" in result:
        parts.append(f"{result['eval_bits_per_char']:.3f} bits/char")
    parts.append(f"{result['wall_time']:.0f}s")
    return "done: " + ", ".join(parts) + f" -> {result['workdir']}"


def run(args):
    result = storage_errors(lambda: train(args.config, args.workdir), args.workdir)
    if jax.process_index() == 0:
        print(summary(result))
    return 0
