"""Sampling settings per row, as arrays: one compiled program for every mix of settings.

`gptjax serve` decodes requests with different temperatures, top-k and top-p in one batch
(gptjax/serving/batching.py), and speculative decoding (gptjax/inference/speculative.py) needs
the target's and the draft's *distributions*, not just a sample; both use these functions. The
filters are `gptjax sample`'s (gptjax/inference/generate.py), row by row: temperature (0 =
greedy), then top-k (0 = off), then nucleus top-p (1 = off). A row's random key is its seed
folded with its count of tokens drawn so far, so one request's samples do not depend on which
others share the batch.
"""

from __future__ import annotations

import typing

import jax
import jax.numpy as jnp
import numpy as np


class Rows(typing.NamedTuple):
    """Per-row sampling settings, each an array [B]."""
    temperature: jax.Array  # float32, 0 = greedy
    top_k: jax.Array        # int32, 0 = off
    top_p: jax.Array        # float32, 1 = off
    seed: jax.Array         # uint32
    count: jax.Array        # int32: tokens this row has drawn so far (folded into its key)


def host_rows(n: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
              seed=0) -> Rows:
    """n rows of the same settings as numpy arrays (which callers may edit in place); `seed`:
    one int for all rows, or one per row."""
    return Rows(np.full(n, temperature, np.float32), np.full(n, top_k, np.int32),
                np.full(n, top_p, np.float32),
                (np.zeros(n, np.int64) + np.asarray(seed, np.int64)).astype(np.uint32),
                np.zeros(n, np.int32))


def filtered_logits(logits, vocab_size: int, rows: Rows):
    """logits [B, V] -> temperature-scaled logits, top-k / top-p filtered entries (and padded
    vocabulary entries) at -inf."""
    logits = logits.astype(jnp.float32)
    width = logits.shape[-1]
    logits = jnp.where(jnp.arange(width) < vocab_size, logits, -jnp.inf)
    t = jnp.where(rows.temperature > 0, rows.temperature, 1.0)[:, None]
    scaled = logits / t
    ordered = -jnp.sort(-scaled, axis=-1)  # descending
    k = jnp.where((rows.top_k > 0) & (rows.top_k < vocab_size), rows.top_k, vocab_size)
    kth = jnp.take_along_axis(ordered, (k - 1)[:, None], axis=-1)
    scaled = jnp.where(scaled < kth, -jnp.inf, scaled)
    ordered = jnp.where(jnp.arange(width) < k[:, None], ordered, -jnp.inf)
    # top-p: the smallest set of most likely tokens whose probability reaches top_p.
    probs = jax.nn.softmax(ordered, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    threshold = jnp.min(jnp.where(mass_before < rows.top_p[:, None], ordered, jnp.inf), axis=-1,
                        keepdims=True)
    threshold = jnp.where(rows.top_p[:, None] < 1.0, threshold, -jnp.inf)
    return jnp.where(scaled < threshold, -jnp.inf, scaled)


def probabilities(logits, vocab_size: int, rows: Rows):
    """logits [B, V] -> the distribution each row samples from [B, V] (one-hot on the argmax
    where temperature is 0)."""
    soft = jax.nn.softmax(filtered_logits(logits, vocab_size, rows), axis=-1)
    masked = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
    hard = jax.nn.one_hot(jnp.argmax(masked, axis=-1), logits.shape[-1], dtype=soft.dtype)
    return jnp.where(rows.temperature[:, None] > 0, soft, hard)


def keys(rows: Rows, salt: int = 0):
    """One key per row: its seed, folded with its token count and `salt` (one per use)."""
    def key(seed, count):
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), count), salt)
    return jax.vmap(key)(rows.seed, rows.count)


def sample(logits, vocab_size: int, rows: Rows):
    """logits [B, V] -> one token per row [B] int32 (the argmax where temperature is 0)."""
    sampled = jax.vmap(jax.random.categorical)(keys(rows),
                                              filtered_logits(logits, vocab_size, rows))
    masked = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
    return jnp.where(rows.temperature > 0, sampled, jnp.argmax(masked, axis=-1)).astype(jnp.int32)
