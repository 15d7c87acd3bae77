"""`gptjax SUBCOMMAND ...`: one entry point; each subcommand lives in its own module.

COMMANDS names each subcommand's module under gptjax/commands/ (train/: what makes a run,
use/: what reads one, measure/: what sizes a config); the module provides `add_args(parser)`
and `run(args) -> int | None`. It is imported only when its subcommand runs, so `gptjax info`
never pays for TensorFlow.
Every `UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gptjax.commands.args import Parser
from gptjax.config.loader import get_config
from gptjax.errors import UserError

COMMANDS = {
    "info": ("measure.info", "parameter count, training FLOPs per token and memory of a config"),
    "train": ("train.train", "train a model in a workdir (resumes if it holds a checkpoint)"),
    "eval": ("use.heldout", "held-out loss / perplexity of a trained workdir"),
    "evaluate-tasks": ("use.evaluate_tasks", "zero/one/few-shot in-context tasks (GPT-3 style)"),
    "sample": ("use.sample", "generate text from a trained workdir"),
    "plot": ("train.plot", "draw the loss curves of a workdir to loss.png"),
    "data": ("train.data", "tokenizers, exporting shards, input-pipeline benchmark"),
    "bench": ("measure.bench", "time the real train step on synthetic data (no TensorFlow)"),
    "bench-checkpoint": ("measure.bench_checkpoint",
                         "save time of a checkpoint with and without its integrity manifest"),
    "bench-decode": ("measure.bench_decode",
                     "KV-cache decode tokens/s of a config (random weights)"),
    "plan": ("measure.plan", "per-device memory of a config on a mesh and device"),
    "compile": ("measure.tpu_compile",
                "compile the train step for a TPU slice here: memory, FLOPs"),
    "sweep": ("train.sweep", "model-size scaling sweeps, fits and plots"),
    "finetune": ("train.finetune", "fine-tune on prompt/response JSONL"),
    "convert": ("use.convert", "import / export Hugging Face GPT-2 weights"),
    "quantize": ("use.quantize", "write an int8 / int4 weight-only copy of a workdir"),
    "prune": ("use.prune", "prune weights, heads or MLP neurons (+ recovery fine-tune)"),
    "trim": ("use.trim", "drop layers or unused vocabulary: a smaller model"),
    "distill": ("train.distill", "train a student on a teacher's soft targets"),
    "compress": ("use.compress", "size / quality / speed report of compression methods"),
    "checkpoints": ("use.checkpoints",
                    "a run's checkpoints: step, time, size, verified / corrupt / incomplete"),
    "serve": ("use.serve", "an OpenAI-compatible HTTP server over a trained workdir"),
    "bench-serve": ("use.bench_serve",
                    "load test of `gptjax serve`: tokens/s and latency at N clients"),
    "bench-speculative": ("use.bench_speculative",
                          "speculative decoding: acceptance rate and speedup of draft models"),
}


def command_module(name: str):
    """The module of subcommand `name` (gptjax/commands/...), imported now."""
    return importlib.import_module(f"gptjax.commands.{COMMANDS[name][0]}")


def _split_overrides(rest: list[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.KEY=VALUE` (or `--config.KEY VALUE`) from other leftovers."""
    overrides, unknown = [], []
    it = iter(rest)
    for arg in it:
        if arg.startswith("--config.") and "=" not in arg:
            overrides.append(f"{arg}={next(it, '')}")
        elif arg.startswith("--config."):
            overrides.append(arg)
        else:
            unknown.append(arg)
    return overrides, unknown


def _build_parser(selected: str | None) -> argparse.ArgumentParser:
    parser = Parser(prog="gptjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            command_module(name).add_args(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    try:
        if selected is not None and selected not in COMMANDS:
            raise UserError(f"unknown command {selected!r}; choose one of {', '.join(COMMANDS)}")
        parser = _build_parser(selected)
        if selected is None:
            parser.print_help()
            return 0 if argv and argv[0] in ("-h", "--help") else 2
        args, rest = parser.parse_known_args(argv)
        args.overrides, unknown = _split_overrides(rest)
        if unknown:
            raise UserError(f"unrecognised arguments: {' '.join(unknown)}")
        module = command_module(selected)
        if getattr(args, "config", None) is not None:
            args.config = get_config(args.config, args.overrides)
        elif args.overrides and not getattr(module, "APPLIES_OVERRIDES", False):
            raise UserError(f"`gptjax {selected}` takes no --config.KEY=VALUE overrides "
                            f"(got {args.overrides[0]})")
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"gptjax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gptjax: interrupted", file=sys.stderr)
        return 130
