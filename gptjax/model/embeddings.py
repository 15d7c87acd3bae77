"""Embeddings: the token lookup and the fixed position encodings (sinusoidal, rotary).

The token table is read in its parameter dtype (float32) and only the looked-up rows are cast
to the compute dtype, so the backward pass adds each position's gradient into a float32 row
(a bfloat16 scatter-add loses a frequent token's gradient: 8192 equal terms of 1e-3 sum to
1.1 instead of 8.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class TokenEmbed(nn.Module):
    """tokens [B, T] -> rows [B, T, features] in `dtype`; the table [V, features] is
    `self.embedding` (the tied output head reads it too)."""
    num_embeddings: int
    features: int
    dtype: Any
    param_dtype: Any
    embedding_init: Callable

    def setup(self):
        self.embedding = self.param("embedding", self.embedding_init,
                                    (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, tokens):
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)


def sinusoidal(positions, d_model, dtype):
    """Fixed sin/cos embeddings of 'Attention is all you need', for integer positions [B, T]."""
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(0, d_model, 2) / d_model)
    angles = positions[..., None].astype(jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).astype(dtype)


def rotary(x, positions, theta):
    """Rotates pairs of channels of q or k [B, T, N, H] by position-dependent angles (RoPE)."""
    half = x.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., None, None].astype(jnp.float32) * freqs  # [B, T, 1, H/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)
