"""`gptjax bench-speculative --workdir TARGET --draft D1,D2 [--draft-tokens 2,4]`: acceptance
rate and speedup of speculative decoding with each draft (gptjax/performance/speculative_bench.py).
"""

from __future__ import annotations

import argparse

from gptjax.errors import UserError
from gptjax.performance import speculative_bench


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="the target: a trained gptjax workdir")
    parser.add_argument("--draft", required=True,
                        help="comma-separated draft workdirs (the target's tokenizer)")
    parser.add_argument("--draft-tokens", default="4", help="comma-separated k values")
    parser.add_argument("--temperature", default="0,1", help="comma-separated temperatures")
    parser.add_argument("--prompt", action="append", default=None,
                        help="a prompt (repeat for several rows in one batch; default '\\n')")
    parser.add_argument("--new-tokens", type=int, default=96, help="tokens generated per row")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest counts")


def _numbers(text: str, flag: str, kind):
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise UserError(f"{flag}: give at least one value")
    return values


def run(args) -> int:
    ks = _numbers(args.draft_tokens, "--draft-tokens", int)
    temperatures = _numbers(args.temperature, "--temperature", float)
    if min(ks) < 1 or min(temperatures) < 0:
        raise UserError("--draft-tokens must be >= 1 and --temperature >= 0")
    print(speculative_bench.HEADER, flush=True)
    rows = speculative_bench.bench(
        args.workdir, [d for d in args.draft.split(",") if d], ks, temperatures,
        args.prompt or ["\n"], args.new_tokens, args.repeats,
        log=lambda text: print(text, flush=True))
    return 1 if any(r.identical is False for r in rows) else 0
