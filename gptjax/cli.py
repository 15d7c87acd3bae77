"""`gptjax SUBCOMMAND ...`: one entry point; each subcommand lives in its own module.

A module named in COMMANDS provides `add_args(parser)` and `run(args) -> int | None`; it is
imported only when its subcommand runs, so `gptjax info` never pays for TensorFlow.
Every `UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gptjax.config import get_config
from gptjax.errors import UserError

COMMANDS = {
    "info": ("gptjax.info", "parameter count, training FLOPs per token and memory of a config"),
    "train": ("gptjax.train", "train a model in a workdir (resumes if it holds a checkpoint)"),
    "eval": ("gptjax.evaluate", "held-out loss / perplexity of a trained workdir"),
    "evaluate-tasks": ("gptjax.tasks", "zero/one/few-shot in-context tasks (GPT-3 style)"),
    "sample": ("gptjax.sample", "generate text from a trained workdir"),
    "plot": ("gptjax.metrics", "draw the loss curves of a workdir to loss.png"),
    "data": ("gptjax.data.cli", "tokenizers, exporting shards, input-pipeline benchmark"),
    "bench": ("gptjax.bench", "time the real train step on synthetic data (no TensorFlow)"),
    "bench-decode": ("gptjax.generate", "KV-cache decode tokens/s of a config (random weights)"),
    "plan": ("gptjax.plan", "per-device memory of a config on a mesh and device"),
    "compile": ("gptjax.compile", "compile the train step for a TPU slice here: memory, FLOPs"),
    "sweep": ("gptjax.sweep", "model-size scaling sweeps, fits and plots"),
    "finetune": ("gptjax.finetune", "fine-tune on prompt/response JSONL"),
    "convert": ("gptjax.interop", "import / export Hugging Face GPT-2 weights"),
    "quantize": ("gptjax.quant", "write an int8 / int4 weight-only copy of a workdir"),
    "prune": ("gptjax.prune", "prune weights, heads or MLP neurons (+ recovery fine-tune)"),
    "trim": ("gptjax.trim", "drop layers or unused vocabulary: a smaller model"),
    "distill": ("gptjax.distill", "train a student on a teacher's soft targets"),
    "compress": ("gptjax.compress", "size / quality / speed report of compression methods"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise UserError(f"{message} (see `{self.prog} --help`)")


def add_config_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--config", required=required, metavar="FILE.py[:ARG]",
        help="config file, e.g. configs/gpt3.py:small; override keys with --config.KEY=VALUE")


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
    parser = _Parser(prog="gptjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            importlib.import_module(module).add_args(p)
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
        module = importlib.import_module(COMMANDS[selected][0])
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
