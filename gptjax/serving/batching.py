"""The compiled programs of continuous batching: one KV-cache row per slot, sampling per row.

    cache    k and v [layers, S, C, heads, head_dim]: S slots, each a row of C positions,
             allocated once (C = the served context, at most max_seq_len for learned positions)
    prefill  one request's prompt, right-padded to a bucket length P, runs at positions
             0..P-1 of slot i's row (the row is cut out, filled and written back) -> first token
    decode   one token for every slot at its own position -> every slot's next token; only
             the first 1, 2, 4, ... slots when no later one is busy (one program per width)

A slot's row keeps stale keys/values of its previous request: they sit at positions after the
new request's, which attention masks until the new request overwrites them (the right-padding
argument of gptjax/inference/generate.py). Free slots within the decoded width decode too (at
position 0, results dropped): requests join and leave between decode steps without a recompile
(the programs, one per width, are compiled at start-up).

Sampling settings are arrays over the rows (gptjax/inference/rows.py: temperature, top_k, top_p,
and a seed and token count that make the row's key), so one decode program serves every mix of
settings; prefill compiles once per bucket (powers of two from 16 up to C).
"""

from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp
import numpy as np

from gptjax.inference import generate, speculative
from gptjax.inference import quantization as quant
from gptjax.inference import rows as rows_
from gptjax.inference.rows import Rows, host_rows
from gptjax.model.gpt import GPT

TOP_LOGPROBS = 5  # alternatives returned per token (OpenAI's completions allow up to 5)
MIN_BUCKET = 16


class Drawn(typing.NamedTuple):
    """What a program returns per row: the token, its log-probability and the most likely
    alternatives (under the model's distribution: temperature 1, no filtering)."""
    token: jax.Array      # [B] int32
    logprob: jax.Array    # [B] float32
    top_ids: jax.Array    # [B, TOP_LOGPROBS] int32
    top_logprobs: jax.Array  # [B, TOP_LOGPROBS] float32


def draw(logits, vocab_size: int, rows: Rows) -> Drawn:
    """logits [B, V] -> one token per row (argmax where temperature is 0) and log-probs."""
    masked = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size,
                       logits.astype(jnp.float32), -jnp.inf)
    logp = jax.nn.log_softmax(masked, axis=-1)
    token = rows_.sample(logits, vocab_size, rows)
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    return Drawn(token, jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0],
                 top_ids.astype(jnp.int32), top_lp)


def _batch_axis(leaf) -> int:
    return leaf.ndim - 4  # [..., B, C, heads, head_dim]


def prefill_slot(model: GPT, params, cache, slot, tokens, length, rows: Rows):
    """tokens [P] right-padded, length: real tokens -> (Drawn [1], cache with slot's row)."""
    row = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, slot, 1, _batch_axis(x)),
                       cache)
    logits, row = generate.prefill(model, params, row, tokens[None], length[None])
    cache = jax.tree.map(
        lambda x, r: jax.lax.dynamic_update_slice_in_dim(x, r, slot, _batch_axis(x)), cache, row)
    return draw(logits, model.config.vocab_size, rows), cache


def decode_slots(model: GPT, width: int, params, cache, tokens, positions, rows: Rows):
    """tokens [S] at positions [S] -> (Drawn [width], cache): one step of the first `width`
    slots (the engine fills the lowest free slot first, so few requests decode few rows)."""
    part = jax.tree.map(lambda x: jax.lax.slice_in_dim(x, 0, width, axis=_batch_axis(x)), cache)
    logits, part = generate.decode_step(model, params, part, tokens[:width], positions[:width])
    cache = jax.tree.map(
        lambda x, r: jax.lax.dynamic_update_slice_in_dim(x, r, 0, _batch_axis(x)), cache, part)
    rows = Rows(*(f[:width] for f in rows))
    return draw(logits, model.config.vocab_size, rows), cache


def score_tokens(model: GPT, params, tokens):
    """tokens [1, P] -> (log-probability of each token after the first given the ones before
    [P - 1], top alternatives ids / log-probs [P - 1, TOP_LOGPROBS]): a prompt's log-likelihood
    (`echo` with `logprobs`), one forward without the cache."""
    weights = quant.dequantize(params, model.config.dtype)
    logits = model.apply({"params": weights}, tokens)[0, :-1].astype(jnp.float32)
    logits = jnp.where(jnp.arange(logits.shape[-1]) < model.config.vocab_size, logits, -jnp.inf)
    logp = jax.nn.log_softmax(logits, axis=-1)
    chosen = jnp.take_along_axis(logp, tokens[0, 1:, None], axis=-1)[:, 0]
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    return chosen, top_ids, top_lp


def speculate_slots(target: GPT, draft: GPT, k: int, tparams, dparams, tcache, dcache, tokens,
                    positions, rows: Rows):
    """One speculative round of every slot (gptjax/inference/speculative.py) -> (Drawn
    [S, k + 1], n [S]: how many of the k + 1 tokens are new, tcache, dcache)."""
    new, n, tcache, dcache, logp = speculative.speculate(target, draft, k, tparams, dparams,
                                                         tcache, dcache, tokens, positions, rows)
    top_lp, top_ids = jax.lax.top_k(logp, TOP_LOGPROBS)
    chosen = jnp.take_along_axis(logp, new[..., None], axis=-1)[..., 0]
    return Drawn(new, chosen, top_ids.astype(jnp.int32), top_lp), n, tcache, dcache


class Programs:
    """The jit-compiled prefill and decode of one model over S slots of C positions; with a
    draft model, decode is a speculative round of k proposals (rows of C + k positions)."""

    def __init__(self, model: GPT, params, slots: int, context: int, draft: GPT | None = None,
                 dparams=None, k: int = 4):
        self.model, self.params, self.slots, self.context = model, params, slots, context
        self.draft, self.dparams, self.k = draft, dparams, k if draft is not None else 0
        self.cache = generate.init_cache(model, params, slots, context + self.k)
        self._prefill = jax.jit(functools.partial(prefill_slot, model), donate_argnums=(1,))
        self._decode = jax.jit(functools.partial(decode_slots, model), static_argnums=(0,),
                               donate_argnums=(2,))
        self.buckets = buckets(context)
        self._score = jax.jit(functools.partial(score_tokens, model))
        self.widths = [w for w in (1, 2, 4, 8, 16, 32, 64, 128, 256) if w < slots] + [slots]
        if draft is not None:
            speculative.check_pair(model, draft)
            self.dcache = generate.init_cache(draft, dparams, slots, context + k)
            self._dprefill = jax.jit(functools.partial(prefill_slot, draft),
                                     donate_argnums=(1,))
            self._round = jax.jit(functools.partial(speculate_slots, model, draft, k),
                                  donate_argnums=(2, 3))

    def speculate(self, tokens, positions, rows: Rows):
        drawn, n, self.cache, self.dcache = self._round(self.params, self.dparams, self.cache,
                                                        self.dcache, tokens, positions, rows)
        return jax.device_get(drawn), np.asarray(n)

    def bucket(self, length: int) -> int:
        return next(b for b in self.buckets if b >= length)

    def prefill(self, slot: int, prompt: list[int], rows: Rows) -> Drawn:
        width = self.bucket(len(prompt))
        tokens = np.zeros(width, np.int32)
        tokens[:len(prompt)] = prompt
        drawn, self.cache = self._prefill(self.params, self.cache, np.int32(slot), tokens,
                                          np.int32(len(prompt)), rows)
        if self.draft is not None:
            _, self.dcache = self._dprefill(self.dparams, self.dcache, np.int32(slot), tokens,
                                            np.int32(len(prompt)), rows)
        return jax.device_get(drawn)

    def score(self, prompt: list[int]):
        """-> [(log-prob or None for the first token, [(id, log-prob)] alternatives)] per token;
        thread-safe (it touches no cache), so the HTTP side may call it beside the engine."""
        tokens = np.zeros((1, self.bucket(len(prompt))), np.int32)
        tokens[0, :len(prompt)] = prompt
        chosen, ids, lps = jax.device_get(self._score(self.params, tokens))
        return [(None, [])] + [(float(chosen[t]), list(zip(ids[t].tolist(), lps[t].tolist(),
                                                           strict=True)))
                               for t in range(len(prompt) - 1)]

    def decode(self, tokens, positions, rows: Rows, busy: int | None = None) -> Drawn:
        """One step of the first `busy` slots (default all), rounded up to a compiled width."""
        width = next(w for w in self.widths if w >= (busy or self.slots))
        drawn, self.cache = self._decode(width, self.params, self.cache, tokens, positions, rows)
        return jax.device_get(drawn)

    def warm_up(self) -> None:
        """Compiles decode and every prefill bucket now (not on the first requests)."""
        rows = host_rows(self.slots)
        # The first bucket twice: the freshly made cache is not laid out as the programs'
        # outputs are, and the first call's compile would not serve the next ones.
        for width in [self.buckets[0], *self.buckets]:
            self.prefill(0, [0] * min(width, self.context - 1), host_rows(1))
        zeros = np.zeros(self.slots, np.int32)
        if self.draft is not None:
            self.speculate(zeros, zeros, rows)
        else:
            for width in self.widths:
                self.decode(zeros, zeros, rows, width)


def buckets(context: int) -> list[int]:
    """Prompt lengths prefill compiles for: 16, 32, ... up to the context (which ends it)."""
    out, b = [], MIN_BUCKET
    while b < context:
        out.append(b)
        b *= 2
    return out + [context]
