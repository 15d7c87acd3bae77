"""Splash attention (gptjax/model/attention.py) in Pallas' interpreter on CPU: forward and gradients
equal XLA's attention, causal and locally banded, on one device and sharded over a mesh.

Tolerances (float32 inputs): outputs within 2e-5 absolute, gradients within 1e-4 absolute of
XLA's; the kernel's online softmax sums in a different order, nothing more.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.model import attention
from gptjax.model.attention import fused_attention, supported
from gptjax.parallel import sharding

T, HEADS = 256, 2


def qkv(batch=2, head_dim=64, seed=0):
    return jax.random.normal(jax.random.key(seed), (3, batch, T, HEADS, head_dim))


def loss(implementation, window, segment_ids=None):
    def f(q, k, v):
        out = fused_attention(q, k, v, window, implementation, segment_ids=segment_ids)
        return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))
    return f


def assert_splash_grads_match_xla(q, k, v, window, segment_ids=None):
    want = jax.grad(loss("xla", window, segment_ids), argnums=(0, 1, 2))(q, k, v)
    got = jax.grad(loss("splash", window, segment_ids), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("window,head_dim", [(0, 64), (64, 64), (0, 80)])
def test_splash_matches_xla(window, head_dim):
    """Causal and banded (window 64: half of a 128 block), and a head_dim that is not a multiple
    of 128 (zero-padded inside)."""
    q, k, v = qkv(head_dim=head_dim)
    want = fused_attention(q, k, v, window, "xla")
    got = fused_attention(q, k, v, window, "splash")
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert_splash_grads_match_xla(q, k, v, window)


def test_splash_sharded_over_batch_and_heads():
    """Under a data=4 x tensor=2 mesh the kernel runs per device under shard_map."""
    config = get_config("configs/smoke.py:tiny", ["--config.mesh.data=4",
                                                  "--config.mesh.tensor=2"])
    mesh = sharding.make_mesh(config.mesh)
    q, k, v = qkv(batch=4)
    want = fused_attention(q, k, v, 0, "xla")
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config)):
        got = jax.jit(lambda q, k, v: fused_attention(q, k, v, 0, "splash"))(q, k, v)
        text = jax.jit(lambda q, k, v: fused_attention(q, k, v, 0, "splash")).lower(
            q, k, v).as_text()
    np.testing.assert_allclose(got, want, atol=2e-5)
    assert "shard_map" in text or "sdy.manual_computation" in text or "manual" in text


def test_other_lengths_use_xla():
    assert supported(2048) and supported(128) and not supported(100)
    q, k, v = jax.random.normal(jax.random.key(0), (3, 1, 100, 2, 8))
    np.testing.assert_allclose(fused_attention(q, k, v, 0, "splash"),
                               fused_attention(q, k, v, 0, "xla"), atol=1e-6)


@pytest.mark.parametrize("head_dim,padded", [(64, 64), (128, 128), (80, 128), (32, 128)])
def test_head_dim_64_runs_unpadded(head_dim, padded):
    """GPT-2 and GPT-3 small / medium (head_dim 64) no longer pay a padding to 128."""
    assert attention.kernel_head_dim(head_dim) == padded
    q, k, v = qkv(batch=1, head_dim=head_dim)
    jaxpr = str(jax.make_jaxpr(lambda q, k, v: attention.splash_attention(q, k, v, 0, 0.125))(
        q, k, v))
    assert ("pad[" in jaxpr) == (padded != head_dim)
