"""`gptjax bench-serve --workdir DIR [--clients 1,8,32] [--seconds 10]`: a load test of
`gptjax serve` on 127.0.0.1 next to sequential generation (gptjax/serving/bench.py). Needs the
`serve` extra."""

from __future__ import annotations

import argparse

from gptjax.errors import UserError
from gptjax.inference import quantization

try:  # the serve extra (FastAPI, uvicorn, httpx): without it, one line and exit 2
    from gptjax.serving import bench
except ModuleNotFoundError as e:
    if e.name not in ("fastapi", "uvicorn", "starlette", "pydantic", "anyio", "httpx"):
        raise
    bench, MISSING = None, e.name


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a trained gptjax workdir")
    parser.add_argument("--clients", default="1,8,32",
                        help="comma-separated concurrent client counts (one level each)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each level")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request")
    parser.add_argument("--prompt", default="\n")
    parser.add_argument("--draft", help="a draft workdir: speculative decoding")
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--quantize", choices=quantization.MODES, default="none")


def run(args) -> int:
    if bench is None:
        raise UserError(f"`gptjax bench-serve` needs the serve extra ({MISSING} is not "
                        f"installed): pip install -e '.[serve]'")
    try:
        clients = tuple(int(c) for c in args.clients.split(","))
    except ValueError:
        raise UserError(f"--clients {args.clients!r}: expected e.g. 1,8,32") from None
    if not clients or min(clients) < 1:
        raise UserError("--clients: every count must be >= 1")
    rows = bench.run(args.workdir, clients=clients, seconds=args.seconds,
                     max_tokens=args.max_tokens, prompt=args.prompt, draft=args.draft,
                     draft_tokens=args.draft_tokens, quantize=args.quantize)
    return 1 if any(r["failed"] or r["leaked_slots"] for r in rows) else 0
