"""`gptjax sample --workdir DIR [--prompt TEXT ...] [--quantize int8] [--stream]`: generate
text from a trained workdir (gptjax/inference/sample.py). Settings default to the run's
`config.sample` section; flags or `--config.sample.KEY=VALUE` override them."""

from __future__ import annotations

import argparse
import os

from gptjax.errors import UserError
from gptjax.inference import quantization
from gptjax.inference.sample import SETTINGS, sample

APPLIES_OVERRIDES = True  # --config.sample.KEY=VALUE (and any other key) apply to this run


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a trained gptjax workdir")
    parser.add_argument("--prompt", action="append",
                        help="prompt text (repeat for several; default config.sample.prompt)")
    parser.add_argument("--prompt-file", help="read one prompt from this file")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--num-samples", type=int, help="samples per prompt")
    parser.add_argument("--temperature", type=float, help="0 = greedy")
    parser.add_argument("--top-k", type=int, help="0 = off")
    parser.add_argument("--top-p", type=float, help="1 = off")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--quantize", choices=quantization.MODES,
                        help="int8 / int4: weight-only; w8a8: int8 weights and activations "
                             "(gptjax/inference/quantization.py)")
    parser.add_argument("--stream", action="store_true",
                        help="print the first sample's tokens as they are generated")
    parser.add_argument("--draft", help="speculative decoding: a smaller workdir with the same "
                                        "tokenizer proposes tokens the model verifies")
    parser.add_argument("--draft-tokens", type=int, default=4,
                        help="tokens the draft proposes per round (with --draft)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--shard", action="store_true",
                        help="shard the params over config.mesh (for models that do not fit "
                             "one device); default: one device")


def _prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        if not os.path.isfile(args.prompt_file):
            raise UserError(f"--prompt-file {args.prompt_file}: no such file")
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts.append(f.read())
    return prompts


def run(args) -> int:
    texts = sample(args.workdir, _prompts(args), args.overrides, step=args.step,
                   shard=args.shard, stream=args.stream, draft=args.draft,
                   draft_tokens=args.draft_tokens,
                   **{key: getattr(args, key) for key in SETTINGS})
    start = 1 if args.stream else 0
    for i, text in enumerate(texts[start:], start + 1):
        print(f"---------- sample {i}")
        print(text)
    return 0
