"""The GPT model: causality, parameter counts, layouts, remat, attention paths, positions."""

import dataclasses
import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.model.flops import model_stats, param_counts
from gptjax.model.gpt import GPT, GPTConfig, attention_mask, explicit_attention
from gptjax.model.layouts import layers_to_scanned, scanned_to_layers

TINY = GPTConfig.from_config(get_config("configs/smoke.py:tiny").model, backend="cpu")


def init(c, tokens, seed=0):
    return nn.unbox(GPT(c).init(jax.random.key(seed), tokens)["params"])


def tokens_for(c, batch=2, seed=1):
    return jax.random.randint(jax.random.key(seed), (batch, c.max_seq_len), 0, c.vocab_size)


@pytest.mark.parametrize("kw", [
    {}, {"position": "rotary"}, {"position": "sinusoidal"}, {"local_window": 4},
    {"scan_layers": False}, {"tie_embeddings": False, "use_bias": True},
])
def test_causal(kw):
    c = dataclasses.replace(TINY, **kw)
    tokens = tokens_for(c)
    params = init(c, tokens)
    t = 9
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % c.vocab_size)
    a = GPT(c).apply({"params": params}, tokens)
    b = GPT(c).apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert not np.allclose(a[:, t:], b[:, t:])


@pytest.mark.parametrize("kw", [
    {}, {"use_bias": False}, {"tie_embeddings": False}, {"position": "rotary"},
    {"num_heads": 3, "head_dim": 7}, {"local_window": 4, "scan_layers": False},
])
def test_param_count_closed_form(kw):
    c = dataclasses.replace(TINY, **kw)
    params = init(c, tokens_for(c))
    assert sum(x.size for x in jax.tree.leaves(params)) == param_counts(c)["params"]


GPT3_TABLE = {"small": 125e6, "medium": 350e6, "large": 760e6, "xl": 1.3e9, "2.7b": 2.7e9,
              "6.7b": 6.7e9, "13b": 13e9, "175b": 175e9}


@pytest.mark.parametrize("size", list(GPT3_TABLE))
def test_gpt3_sizes_match_table(size):
    c = GPTConfig.from_config(get_config(f"configs/gpt3.py:{size}").model, backend="tpu")
    stats = model_stats(c)  # closed form: nothing allocated
    assert abs(stats["params"] / GPT3_TABLE[size] - 1) < 0.03
    assert c.num_heads * c.head_dim == c.d_model


def test_gpt2_124m_matches_nanogpt():
    c = GPTConfig.from_config(get_config("configs/gpt2.py:124m").model, backend="tpu")
    stats = model_stats(c)
    # nanoGPT's GPT-2 with vocab 50304: 124.48M params, 123.69M without position embeddings.
    assert stats["params"] == 124_475_904
    assert stats["flops_params"] == 124_475_904 - 1024 * 768
    assert stats["flops_per_token"] == 6 * stats["flops_params"] + 12 * 12 * 12 * 64 * 1024


def _loss_and_grads(c, params, tokens):
    def loss(p):
        logits = GPT(c).apply({"params": p}, tokens).astype(jnp.float32)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(
            logits, tokens[..., None], -1)[..., 0])
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("local_window", [0, 4])
def test_scan_equals_unrolled(local_window):
    c = dataclasses.replace(TINY, local_window=local_window, num_layers=4)
    unrolled = dataclasses.replace(c, scan_layers=False)
    tokens = tokens_for(c)
    params = init(c, tokens)
    flat = scanned_to_layers(params, c)
    loss_s, grads_s = _loss_and_grads(c, params, tokens)
    loss_u, grads_u = _loss_and_grads(unrolled, flat, tokens)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads_s, layers_to_scanned(grads_u, c))
    assert jax.tree.structure(layers_to_scanned(flat, c)) == jax.tree.structure(params)


def test_scan_unroll_auto_unrolls_the_stack_on_cpu_only():
    model = get_config("configs/smoke.py").model
    assert GPTConfig.from_config(model, backend="cpu").scan_unroll == model.num_layers
    assert GPTConfig.from_config(model, backend="tpu").scan_unroll == 1
    assert GPTConfig.from_config(model, backend="gpu").scan_unroll == 1
    with model.unlocked():
        model.remat = "full"  # unrolled, XLA:CPU would keep every recomputed activation live
    assert GPTConfig.from_config(model, backend="cpu").scan_unroll == 1
    with model.unlocked():
        model.remat, model.scan_unroll = "none", "2"
    assert GPTConfig.from_config(model, backend="tpu").scan_unroll == 2
    for bad in ("0", "all"):
        with model.unlocked():
            model.scan_unroll = bad
        with pytest.raises(UserError, match="scan_unroll"):
            GPTConfig.from_config(model, backend="cpu")


def test_unrolled_scan_has_no_layer_loop_and_the_same_gradients():
    looped = dataclasses.replace(TINY, num_layers=4, scan_unroll=1)
    unrolled = dataclasses.replace(looped, scan_unroll=4)
    tokens = tokens_for(looped)
    params = init(looped, tokens)
    hlo = {c.scan_unroll: jax.jit(functools.partial(_loss_and_grads, c)).lower(
        params, tokens).compile().as_text() for c in (looped, unrolled)}
    assert " while(" in hlo[1] and " while(" not in hlo[4]
    loss_l, grads_l = _loss_and_grads(looped, params, tokens)
    loss_u, grads_u = _loss_and_grads(unrolled, params, tokens)
    np.testing.assert_allclose(loss_l, loss_u, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads_l, grads_u)


def test_flat_weight_grads_on_cpu_only_same_gradients_no_transposed_activation():
    model = get_config("configs/smoke.py").model
    assert GPTConfig.from_config(model, backend="cpu").flat_weight_grads
    assert not GPTConfig.from_config(model, backend="tpu").flat_weight_grads
    assert not GPTConfig.from_config(model, backend="gpu").flat_weight_grads
    flat = dataclasses.replace(TINY, d_ff=48, tie_embeddings=False)  # untied: the head's too
    tokens = tokens_for(flat, batch=4)
    params = init(flat, tokens)
    einsum = dataclasses.replace(flat, flat_weight_grads=False)
    (loss_f, grads_f), (loss_e, grads_e) = (_loss_and_grads(c, params, tokens)
                                            for c in (flat, einsum))
    np.testing.assert_allclose(loss_f, loss_e, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads_f, grads_e)
    # The reason (docs/performance.md): as one einsum over (b, t), XLA:CPU copies the MLP
    # activation [B*T, d_ff] transposed, every layer, to feed the output projection's gradient.
    rows = tokens.size
    transposed = re.compile(rf"%copy\S*fusion\S* = f32\[{flat.d_ff},{rows}\]")
    hlo = {c.flat_weight_grads: jax.jit(functools.partial(_loss_and_grads, c)).lower(
        params, tokens).compile().as_text() for c in (flat, einsum)}
    assert transposed.search(hlo[False]) and not transposed.search(hlo[True])


@pytest.mark.parametrize("policy", ["full", "save_dots", "save_proj", "save_qkv"])
@pytest.mark.parametrize("scan", [True, False])
def test_remat_equals_no_remat(policy, scan):
    c = dataclasses.replace(TINY, scan_layers=scan)
    tokens = tokens_for(c)
    params = init(c, tokens)
    loss_a, grads_a = _loss_and_grads(c, params, tokens)
    loss_b, grads_b = _loss_and_grads(dataclasses.replace(c, remat=policy), params, tokens)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 grads_a, grads_b)


@pytest.mark.parametrize("policy, kept", [("save_qkv", {"qkv"}),
                                           ("save_proj", {"qkv", "attn_out", "mlp_hidden"})])
def test_remat_policy_keeps_its_named_activations(policy, kept, capsys):
    """What each named-checkpoint policy keeps for the backward pass, per layer."""
    c = dataclasses.replace(TINY, remat=policy, scan_layers=False)
    tokens = tokens_for(c)
    params = init(c, tokens)
    jax.ad_checkpoint.print_saved_residuals(
        lambda p: GPT(c).apply({"params": p}, tokens).sum(), params)
    names = re.findall(r"named '(\w+)'", capsys.readouterr().out)
    assert sorted(names) == sorted(list(kept) * c.num_layers)


def reference_attention(q, k, v, window):
    """Naive numpy attention, one query at a time."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    b, t, n, h = q.shape
    out = np.zeros_like(q)
    for i in range(t):
        lo = max(0, i - window + 1) if window else 0
        s = np.einsum("bnh,bknh->bnk", q[:, i], k[:, lo:i + 1]) / math.sqrt(h)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, i] = np.einsum("bnk,bknh->bnh", p, v[:, lo:i + 1])
    return out


@pytest.mark.parametrize("window", [0, 3])
def test_attention_paths_match_reference(window):
    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 12, 4, 8))
    want = reference_attention(q, k, v, window)
    xla = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla",
                                       local_window_size=(window - 1, 0) if window else None)
    pos = jnp.broadcast_to(jnp.arange(12), (2, 12))
    explicit = explicit_attention(q, k, v, attention_mask(pos, pos, window), lambda p: p,
                                  jnp.float32)
    np.testing.assert_allclose(xla, want, atol=1e-5)
    np.testing.assert_allclose(explicit, want, atol=1e-5)
    if jax.default_backend() == "gpu":
        cudnn = jax.nn.dot_product_attention(
            q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
            is_causal=True, implementation="cudnn",
            local_window_size=(window - 1, 0) if window else None)
        np.testing.assert_allclose(cudnn.astype(jnp.float32), want, atol=3e-2)


def test_attention_dropout_path_equals_fused_when_deterministic():
    c = dataclasses.replace(TINY, attn_dropout=0.5)
    tokens = tokens_for(c)
    params = init(c, tokens)
    det = GPT(c).apply({"params": params}, tokens, deterministic=True)
    ref = GPT(dataclasses.replace(c, attn_dropout=0.0)).apply({"params": params}, tokens)
    np.testing.assert_allclose(det, ref, atol=1e-6)
    rngs = {"dropout": jax.random.key(3)}
    train = GPT(c).apply({"params": params}, tokens, deterministic=False, rngs=rngs)
    assert not np.allclose(train, det)


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_position_types(position):
    """Rotary attention depends only on relative positions: shifting every position by the
    same offset leaves the output unchanged. Absolute schemes (learned, sinusoidal) change."""
    c = dataclasses.replace(TINY, position=position)
    tokens = tokens_for(c)[:, :8]
    params = init(c, tokens)
    pos = jnp.broadcast_to(jnp.arange(8), tokens.shape)
    a = GPT(c).apply({"params": params}, tokens, positions=pos)
    b = GPT(c).apply({"params": params}, tokens, positions=pos + 5)
    assert np.isfinite(a).all()
    if position == "rotary":
        np.testing.assert_allclose(a, b, atol=1e-4)
        assert "wpe" not in params
    else:
        assert not np.allclose(a, b, atol=1e-4)
        assert ("wpe" in params) == (position == "learned")


def test_sliding_window_does_not_see_past_window():
    window = 4
    c = dataclasses.replace(TINY, num_layers=1, local_window=window, local_every=1)
    tokens = tokens_for(c)
    params = init(c, tokens)
    t = 12
    base = GPT(c).apply({"params": params}, tokens)
    outside = tokens.at[:, t - window].add(1) % c.vocab_size
    inside = tokens.at[:, t - window + 1].add(1) % c.vocab_size
    np.testing.assert_array_equal(base[:, t], GPT(c).apply({"params": params}, outside)[:, t])
    assert not np.allclose(base[:, t], GPT(c).apply({"params": params}, inside)[:, t])


def test_gpt2_init_scales_residual_projections():
    c = dataclasses.replace(TINY, d_model=256, d_ff=1024, num_heads=4, head_dim=64, num_layers=8)
    params = init(c, tokens_for(c))
    block = params["layers"]["block_0"]
    np.testing.assert_allclose(np.std(block["mlp"]["fc"]["kernel"]), 0.02, rtol=0.05)
    np.testing.assert_allclose(np.std(block["mlp"]["proj"]["kernel"]),
                               0.02 / math.sqrt(2 * 8), rtol=0.05)
    np.testing.assert_allclose(np.std(params["wte"]["embedding"]), 0.02, rtol=0.05)


def test_every_param_has_logical_axes():
    c = dataclasses.replace(TINY, tie_embeddings=False, use_bias=True)
    tokens = tokens_for(c)
    boxed = GPT(c).init(jax.random.key(0), tokens)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for x in leaves:
        assert len(x.names) == x.value.ndim
        assert set(x.names) <= {"embed", "mlp", "heads", "kv", "vocab", "layers", "norm", None}


def test_bfloat16_compute_keeps_float32_params():
    c = dataclasses.replace(TINY, dtype=jnp.bfloat16)
    tokens = tokens_for(c)
    params = init(c, tokens)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert GPT(c).apply({"params": params}, tokens).dtype == jnp.float32  # logits: fp32 accum


def test_vocab_padding():
    c = dataclasses.replace(TINY, vocab_size=65, vocab_multiple=128)
    assert c.padded_vocab == 128
    assert GPT(c).apply({"params": init(c, tokens_for(c))}, tokens_for(c)).shape[-1] == 128
