"""`gptjax serve --workdir DIR [--host 127.0.0.1 --port 8000] [--api-key KEY]`: an
OpenAI-compatible HTTP server over a trained workdir, with continuous batching
(gptjax/serving/). Needs the `serve` extra: pip install -e '.[serve]'."""

from __future__ import annotations

import argparse
import os

from gptjax.errors import UserError
from gptjax.inference import quantization

try:  # the serve extra (FastAPI, uvicorn): without it, one line and exit 2
    from gptjax.serving import server
except ModuleNotFoundError as e:
    if e.name not in ("fastapi", "uvicorn", "starlette", "pydantic", "anyio"):
        raise
    server, MISSING = None, e.name


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a trained gptjax workdir")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help="require `Authorization: Bearer KEY` (default: $GPTJAX_API_KEY; "
                             "unset = no key)")
    parser.add_argument("--slots", type=int, default=8,
                        help="requests decoded together (KV-cache rows)")
    parser.add_argument("--context", type=int, default=None,
                        help="tokens per slot, prompt + completion (default: max_seq_len)")
    parser.add_argument("--quantize", choices=quantization.MODES, default="none")
    parser.add_argument("--chat-template", default="auto", choices=("auto", "base", "finetune"),
                        help="how chat messages become a prompt (docs/inference.md)")
    parser.add_argument("--max-tokens", type=int, default=1024,
                        help="the largest max_tokens a request may ask for")
    parser.add_argument("--max-body", type=int, default=1 << 20,
                        help="the largest request body in bytes (413 beyond)")
    parser.add_argument("--draft", help="speculative decoding: a smaller workdir with the same "
                                        "tokenizer proposes tokens the model verifies")
    parser.add_argument("--draft-tokens", type=int, default=4,
                        help="tokens the draft proposes per round (with --draft)")
    parser.add_argument("--model-name", default=None,
                        help="the model id clients name (default: the workdir's basename)")


def run(args) -> int:
    if server is None:
        raise UserError(f"`gptjax serve` needs the serve extra ({MISSING} is not installed): "
                        f"pip install -e '.[serve]'")
    server.serve(args.workdir, host=args.host, port=args.port,
                 api_key=args.api_key or os.environ.get("GPTJAX_API_KEY") or None,
                 slots=args.slots, context=args.context, quantize=args.quantize,
                 template=args.chat_template, max_tokens=args.max_tokens,
                 max_body=args.max_body, name=args.model_name, draft=args.draft,
                 draft_tokens=args.draft_tokens)
    return 0
