"""Sampling from a workdir (`gptjax sample`): `sample(workdir, prompts, temperature=0.8, ...)`.

Loads the newest checkpoint of a trained (or fine-tuned, or imported) workdir and generates with
the KV-cache program of gptjax/inference/generate.py: every prompt x num_samples rows decode
together as one batch. Settings default to the run's `config.sample` section; flags or
`--config.sample.KEY=VALUE` override them.
"""

from __future__ import annotations

import contextlib
import sys
import time

import flax.linen as nn
import jax

from gptjax.config.defaults import base_config
from gptjax.config.loader import apply_overrides
from gptjax.errors import UserError
from gptjax.inference import generate, speculative
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding
from gptjax.workdir import open_run, read_config

SETTINGS = ("max_new_tokens", "num_samples", "temperature", "top_k", "top_p", "seed",
            "quantize")


def _settings(config, prompts, overrides, flags: dict) -> dict:
    """config.sample with the overrides and the given settings (None: the config's) applied."""
    for key, value in base_config().sample.items():  # keys newer than the run's config.json
        if key not in config.sample:
            config.sample[key] = value
    apply_overrides(config, list(overrides))
    s = dict(config.sample)
    unknown = set(flags) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unknown sample settings {sorted(unknown)}")
    s.update({k: v for k, v in flags.items() if v is not None})
    s["prompts"] = list(prompts) or [s["prompt"]]
    if s["num_samples"] < 1:
        raise UserError(f"num_samples={s['num_samples']} must be >= 1")
    return s


def load(workdir: str, mesh=None, step: int | None = None):
    """-> (config, params, tokenizer) of a trained, fine-tuned or imported workdir."""
    config, params, tokenizer, _ = open_run(workdir, mesh=mesh, step=step)
    return config, params, tokenizer


def load_model(workdir: str, quantize: str = "none", step: int | None = None):
    """-> (config, model, params, tokenizer) ready to generate: params in the compute dtype,
    quantized as `quantize` (one of quantization.MODES) on one device."""
    config, params, tokenizer = load(workdir, step=step)
    c = GPTConfig.from_config(config.model)
    model, params = quant.prepare(GPT(c), generate.cast_params(params, c.dtype), quantize)
    return config, model, params, tokenizer


def sample(workdir: str, prompts=(), overrides=(), step: int | None = None, shard: bool = False,
           stream: bool = False, draft: str | None = None, draft_tokens: int = 4,
           **settings) -> list[str]:
    """Samples from a workdir -> prompt + generated text, each prompt `num_samples` times.

    `settings`: any of SETTINGS (None or absent: the run's config.sample value); `overrides`:
    `--config.KEY=VALUE` strings; shard: params over config.mesh instead of one device; stream:
    print the first sample's tokens to stdout as they are generated; draft: a workdir whose
    model (same tokenizer) proposes `draft_tokens` tokens per target forward
    (gptjax/inference/speculative.py)."""
    config = read_config(workdir)
    mesh = sharding.make_mesh(config.mesh) if shard else None
    config, params, tokenizer = load(workdir, mesh, step)
    s = _settings(config, prompts, overrides, settings)
    c = GPTConfig.from_config(config.model)
    weights = s["quantize"] if s["quantize"] != "none" else (
        "quantized" if quant.is_quantized(params) else "float")
    model, params = quant.prepare(GPT(c), generate.cast_params(params, c.dtype), s["quantize"])

    eos = tokenizer.eos_id if (s["stop_at_eos"] and tokenizer.eos_id is not None) else -1
    settings = generate.Sampling(max_new_tokens=int(s["max_new_tokens"]),
                                 temperature=float(s["temperature"]), top_k=int(s["top_k"]),
                                 top_p=float(s["top_p"]), eos_id=int(eos))
    rows = [tokenizer.encode(p) for p in s["prompts"] for _ in range(s["num_samples"])]
    if draft and (stream or mesh is not None):
        raise UserError("--draft decodes on one device and does not --stream")
    spec = _speculator(draft, s["quantize"], model, params, draft_tokens) if draft else None
    streamer = _Streamer(tokenizer, eos, s["prompts"][0]) if stream else None
    t0, stats = time.perf_counter(), {}
    with contextlib.ExitStack() as stack:
        if mesh is not None:
            stack.enter_context(jax.set_mesh(mesh))
            stack.enter_context(nn.logical_axis_rules(sharding.logical_rules(config)))
        if spec is not None:
            out = speculative.generate_ids(spec, rows, settings, int(s["seed"]), stats)
        else:
            out = generate.generate_ids(model, params, rows, settings, int(s["seed"]), streamer)
    seconds = time.perf_counter() - t0
    if stats:
        print(f"[draft: {stats['tokens'] / max(stats['rounds'], 1):.2f} tokens per target "
              f"forward and row, {draft_tokens} proposed]", file=sys.stderr)
    if streamer is not None:
        streamer.finish()
    texts = [tokenizer.decode(ids) for ids in out]
    print(f"[{len(rows)} samples, {sum(map(len, out))} tokens in {seconds:.1f}s (incl. "
          f"compile), {weights} weights]", file=sys.stderr)
    prompts = [p for p in s["prompts"] for _ in range(s["num_samples"])]
    return [prompt + text for prompt, text in zip(prompts, texts, strict=True)]


def _speculator(draft: str, quantize: str, model, params, k: int) -> speculative.Speculator:
    _, dmodel, dparams, _ = load_model(draft, quantize)
    return speculative.Speculator(model, params, dmodel, dparams, k)


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
