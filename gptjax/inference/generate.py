"""Text generation with a key/value cache, compiled as ONE XLA program.

    cache   = zeros [layers, B, cache_len, heads, head_dim] for k and v (model.py, decode=True)
    prefill : the right-padded prompts [B, P] run once at positions 0..P-1, filling the cache;
              row b's next-token logits are read at its last real token, lengths[b] - 1
    decode  : a `lax.while_loop`; step s feeds row b's previous token at position
              lengths[b] + s - 1 and samples the next one; it stops after max_new_tokens or when
              every row has produced EOS

Rows keep their own positions, so prompts of different lengths need no left padding: a shorter
row's padding slots are masked (they lie after its position) until its own tokens overwrite them.
Sampling: greedy (temperature 0), or temperature with optional top-k and nucleus (top-p)
filtering, from one seed. `gptjax bench-decode` times this program (tokens/s,
gptjax/performance/decode_bench.py).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.errors import UserError
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPT, GPTConfig


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Static settings of one compiled generation program (changing one recompiles)."""
    max_new_tokens: int = 100
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0            # 0 = off
    top_p: float = 1.0        # 1.0 = off
    eos_id: int = -1          # -1 = never stop early

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if self.temperature < 0:
            raise UserError(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise UserError(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"top_p={self.top_p} must be in (0, 1] (1 = off)")


# ----------------------------------------------------------------------------- pieces


def init_cache(model: GPT, params, batch: int, cache_len: int):
    """Zero k/v caches of length `cache_len` with the layout the model's decode path uses."""
    tokens = jnp.zeros((batch, 1), jnp.int32)
    shapes = jax.eval_shape(
        lambda p: model.apply({"params": _weights(model, p)}, tokens, decode=True,
                              mutable=["cache"])[1]["cache"], params)
    # Each leaf is [..., B, max_seq_len, heads, head_dim]; only the length changes.
    return jax.tree.map(
        lambda s: jnp.zeros(s.shape[:-3] + (cache_len,) + s.shape[-2:], s.dtype), shapes)


def _weights(model: GPT, params):
    # Quantized weights (gptjax/inference/quantization.py) stay quantized in device memory and
    # are dequantized inside the step: the embedding / head here, each layer's by the model
    # from `quantization.prepare` inside that layer (one layer's float weights at a time);
    # float params pass through unchanged.
    return quant.dequantize(params, model.config.dtype)


def prefill(model: GPT, params, cache, tokens, lengths):
    """Right-padded prompts [B, P] -> (next-token logits [B, V] at each row's end, cache)."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    logits, mutated = model.apply({"params": _weights(model, params), "cache": cache}, tokens,
                                  positions,
                                  decode=True, mutable=["cache"])
    last = logits[jnp.arange(tokens.shape[0]), lengths - 1]
    return last, mutated["cache"]


def decode_step(model: GPT, params, cache, tokens, positions):
    """One new token per row: tokens [B] at positions [B] -> (logits [B, V], cache)."""
    logits, mutated = model.apply({"params": _weights(model, params), "cache": cache},
                                  tokens[:, None],
                                  positions[:, None], decode=True, mutable=["cache"])
    return logits[:, 0], mutated["cache"]


def sample_logits(rng, logits, vocab_size: int, s: Sampling):
    """logits [B, padded_vocab] -> token ids [B]; padded vocabulary entries are never drawn."""
    logits = logits.astype(jnp.float32)
    logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
    if s.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / s.temperature
    if 0 < s.top_k < vocab_size:
        kth = jax.lax.top_k(logits, s.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if s.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose probability reaches top_p.
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        threshold = jnp.min(jnp.where(mass_before < s.top_p, ordered, jnp.inf), axis=-1,
                            keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


# ----------------------------------------------------------------------------- the program


def generate(model: GPT, params, prompts, lengths, rng, s: Sampling, cache_len: int,
             stream=None):
    """prompts [B, P] int32 right-padded, lengths [B] -> (tokens [B, max_new_tokens], steps).

    Traceable (wrap in jax.jit with model, s, cache_len, stream static: see `make_generate`).
    After a row's EOS its remaining tokens are EOS too. `stream(step, tokens[B])` is called on
    the host as each step's tokens are produced (step 0 = first new token). Unordered callbacks
    (ordered ones are not allowed with more than one device) may arrive out of order: use the
    step number."""
    c = model.config
    batch = prompts.shape[0]
    pad = max(s.eos_id, 0)
    cache = init_cache(model, params, batch, cache_len)
    logits, cache = prefill(model, params, cache, prompts, lengths)
    rng, key = jax.random.split(rng)
    token = sample_logits(key, logits, c.vocab_size, s)
    out = jnp.full((batch, s.max_new_tokens), pad, jnp.int32).at[:, 0].set(token)
    done = token == s.eos_id
    if stream is not None:
        jax.debug.callback(stream, 0, token, ordered=False)

    def cond(state):
        step, _, _, _, _, done = state
        return (step < s.max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, token, cache, rng, out, done = state
        logits, cache = decode_step(model, params, cache, token, lengths + step - 1)
        rng, key = jax.random.split(rng)
        token = jnp.where(done, pad, sample_logits(key, logits, c.vocab_size, s))
        if stream is not None:
            jax.debug.callback(stream, step, token, ordered=False)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, cache, rng, out, done | (token == s.eos_id)

    state = (jnp.int32(1), token, cache, rng, out, done)
    steps, _, _, _, out, _ = jax.lax.while_loop(cond, body, state)
    return out, steps


def make_generate(model: GPT, s: Sampling, cache_len: int, stream=None):
    """jit-compiled `generate(params, prompts, lengths, rng)` for fixed settings and shapes."""
    s.validate()
    return jax.jit(functools.partial(generate, model, s=s, cache_len=cache_len, stream=stream))


def pad_prompts(prompts: list[list[int]], max_new_tokens: int, c: GPTConfig):
    """Token lists -> (right-padded int32 [B, P], lengths [B], cache_len); checks the lengths."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token (an empty prompt encodes to "
                        "nothing; try --prompt '\\n')")
    width = max(len(p) for p in prompts)
    cache_len = width + max_new_tokens
    if c.position == "learned" and cache_len > c.max_seq_len:
        raise UserError(f"prompt of {width} tokens + max_new_tokens={max_new_tokens} = "
                        f"{cache_len} exceeds the model's max_seq_len={c.max_seq_len} (learned "
                        f"positions); shorten the prompt or lower max_new_tokens")
    tokens = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = p
    return tokens, np.asarray([len(p) for p in prompts], np.int32), cache_len


def generate_ids(model: GPT, params, prompts: list[list[int]], s: Sampling, seed: int = 0,
                 stream=None) -> list[list[int]]:
    """Token lists in, generated token lists out (cut before EOS): the whole-program generator
    plus the one thing it cannot do, running past a learned-position model's max_seq_len.

    Then generation continues in chunks: each chunk re-prefills every row's last
    max_seq_len // 2 tokens and generates until the context is full again (one compiled program
    per chunk shape). Rotary / sinusoidal models decode in one chunk at any length."""
    c = model.config
    window = c.max_seq_len if c.position == "learned" else None
    contexts, outs = [list(p) for p in prompts], [[] for _ in prompts]
    done = [False] * len(prompts)
    programs, remaining, chunk = {}, s.max_new_tokens, 0
    while remaining > 0 and not all(done):
        if window is not None:
            contexts = [ctx[-(window // 2):] if len(ctx) >= window else ctx for ctx in contexts]
            n = min(remaining, window - max(len(ctx) for ctx in contexts))
        else:
            n = remaining
        tokens, lengths, cache_len = pad_prompts(contexts, n, c)
        key = (cache_len, n)
        if key not in programs:
            programs[key] = make_generate(model, dataclasses.replace(s, max_new_tokens=n),
                                          cache_len, stream)
        out, _ = programs[key](params, tokens, lengths,
                               jax.random.fold_in(jax.random.key(seed), chunk))
        for b, row in enumerate(np.asarray(out).tolist()):
            if done[b]:
                continue
            if s.eos_id in row:
                row, done[b] = row[:row.index(s.eos_id)], True
            outs[b] += row
            contexts[b] += row
        remaining, chunk = remaining - n, chunk + 1
    return outs


def trim(tokens, eos_id: int) -> list[list[int]]:
    """Generated rows -> lists of ids cut before the first EOS."""
    rows = []
    for row in np.asarray(tokens).tolist():
        rows.append(row[:row.index(eos_id)] if eos_id in row else row)
    return rows


def cast_params(params, dtype):
    """Floating params -> the compute dtype (halves decode's weight traffic in bf16)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, params)
