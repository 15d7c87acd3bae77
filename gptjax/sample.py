"""`gptjax sample --workdir DIR [--prompt TEXT ...] [--quantize int8] [--stream]`.

Loads the newest checkpoint of a trained (or fine-tuned, or imported) workdir and generates with
the KV-cache program of gptjax/generate.py: every prompt x num_samples rows decode together as
one batch. Settings default to the run's `config.sample` section; flags or
`--config.sample.KEY=VALUE` override them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import flax.linen as nn
import jax

from gptjax import checkpoint, generate, quant, sharding
from gptjax.config import apply_overrides
from gptjax.defaults import base_config
from gptjax.errors import UserError
from gptjax.model import GPT, GPTConfig

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
    parser.add_argument("--quantize", choices=quant.MODES,
                        help="int8 / int4: weight-only; w8a8: int8 weights and activations "
                             "(gptjax/quant.py)")
    parser.add_argument("--stream", action="store_true",
                        help="print the first sample's tokens as they are generated")
    parser.add_argument("--step", type=int, help="checkpoint step (default: newest)")
    parser.add_argument("--shard", action="store_true",
                        help="shard the params over config.mesh (for models that do not fit "
                             "one device); default: one device")


def _settings(args, config) -> dict:
    """config.sample with the command-line flags applied."""
    for key, value in base_config().sample.items():  # keys newer than the run's config.json
        if key not in config.sample:
            config.sample[key] = value
    apply_overrides(config, list(args.overrides))
    s = dict(config.sample)
    for key in ("max_new_tokens", "num_samples", "temperature", "top_k", "top_p", "seed",
                "quantize"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    prompts = list(args.prompt or [])
    if args.prompt_file:
        if not os.path.isfile(args.prompt_file):
            raise UserError(f"--prompt-file {args.prompt_file}: no such file")
        with open(args.prompt_file, encoding="utf-8") as f:
            prompts.append(f.read())
    s["prompts"] = prompts or [s["prompt"]]
    if s["num_samples"] < 1:
        raise UserError(f"num_samples={s['num_samples']} must be >= 1")
    return s


def load(workdir: str, mesh=None, step: int | None = None):
    """-> (config, params, tokenizer) of a trained, fine-tuned or imported workdir."""
    config, params, tokenizer, _ = checkpoint.load_for_inference(workdir, mesh=mesh, step=step)
    return config, params, tokenizer


def sample(workdir: str, args) -> list[str]:
    config = checkpoint.read_config(workdir)
    mesh = sharding.make_mesh(config.mesh) if args.shard else None
    config, params, tokenizer = load(workdir, mesh, args.step)
    s = _settings(args, config)
    c = GPTConfig.from_config(config.model)
    weights = s["quantize"] if s["quantize"] != "none" else (
        "quantized" if quant.is_quantized(params) else "float")
    model, params = quant.prepare(GPT(c), generate.cast_params(params, c.dtype), s["quantize"])

    eos = tokenizer.eos_id if (s["stop_at_eos"] and tokenizer.eos_id is not None) else -1
    settings = generate.Sampling(max_new_tokens=int(s["max_new_tokens"]),
                                 temperature=float(s["temperature"]), top_k=int(s["top_k"]),
                                 top_p=float(s["top_p"]), eos_id=int(eos))
    rows = [tokenizer.encode(p) for p in s["prompts"] for _ in range(s["num_samples"])]
    streamer = _Streamer(tokenizer, eos, s["prompts"][0]) if args.stream else None
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if mesh is not None:
            stack.enter_context(jax.set_mesh(mesh))
            stack.enter_context(nn.logical_axis_rules(sharding.logical_rules(config)))
        out = generate.generate_ids(model, params, rows, settings, int(s["seed"]), streamer)
    seconds = time.perf_counter() - t0
    if streamer is not None:
        streamer.finish()
    texts = [tokenizer.decode(ids) for ids in out]
    print(f"[{len(rows)} samples, {sum(map(len, out))} tokens in {seconds:.1f}s (incl. "
          f"compile), {weights} weights]", file=sys.stderr)
    prompts = [p for p in s["prompts"] for _ in range(s["num_samples"])]
    return [prompt + text for prompt, text in zip(prompts, texts, strict=True)]


class _Streamer:
    """Host callback: prints row 0's text as the compiled loop produces tokens (in step order,
    even if callbacks arrive out of order; the step count restarts with each chunk)."""

    def __init__(self, tokenizer, eos: int, prompt: str):
        self.tokenizer, self.eos, self.ids, self.shown, self.done = tokenizer, eos, [], "", False
        self.pending, self.next = {}, 0
        sys.stdout.write(prompt)
        sys.stdout.flush()

    def __call__(self, step, tokens):
        step = int(step)
        if step == 0:  # a new chunk (generate_ids) starts counting again
            self.next = 0
        self.pending[step] = int(tokens[0])
        while self.next in self.pending:
            token = self.pending.pop(self.next)
            self.next += 1
            if self.done or token == self.eos:
                self.done = True
                continue
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids)  # decode all: multi-token characters stay whole
        sys.stdout.write(text[len(self.shown):])
        sys.stdout.flush()
        self.shown = text

    def finish(self):
        sys.stdout.write("\n---------- (streamed sample 1 done)\n")
        sys.stdout.flush()


def run(args) -> int:
    texts = sample(args.workdir, args)
    start = 1 if args.stream else 0
    for i, text in enumerate(texts[start:], start + 1):
        print(f"---------- sample {i}")
        print(text)
    return 0
