"""Argument pieces every command shares: the `--config` flag, a parser whose errors are one
line, and comma lists of whole numbers."""

from __future__ import annotations

import argparse

from gptjax.errors import UserError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (a UserError: exit 2), not usage + message."""

    def error(self, message):
        raise UserError(f"{message} (see `{self.prog} --help`)")


def add_config_arg(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--config", required=required, metavar="FILE.py[:ARG]",
        help="config file, e.g. configs/gpt3.py:small; override keys with --config.KEY=VALUE")


def int_list(text: str, flag: str, minimum: int = 0) -> list[int]:
    """A comma-separated list of integers >= `minimum` (shot counts, batch sizes), or one line
    naming `flag`."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated integers") from None
    if not values or min(values) < minimum:
        raise UserError(f"{flag} {text!r}: expected integers >= {minimum}")
    return values
