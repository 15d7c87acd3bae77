"""Packed documents (`data.document_mask`, gptjax/model/documents.py): segment ids and restarted
positions from the window's EOS tokens; attention that never crosses a document on every path
against a dense masked reference (XLA's, splash's segment ids in Pallas' interpreter, sharded
and not, attention dropout's explicit path); the model on a packed window equal to running each
document on its own; the loss unchanged but for attention and positions; a run that sets the
tokenizer's EOS; the compiled GPU step (cuDNN's fused attention with the mask) and TPU step.

Tolerances (float32): attention outputs within 2e-5 and gradients within 1e-4 of the reference
(sums in another order); logits of a packed window within 1e-5 of each document alone.
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import needs_cuda_plugin, needs_libtpu
from test_splash import assert_splash_grads_match_xla

from gptjax import cli
from gptjax.config.loader import get_config
from gptjax.errors import UserError
from gptjax.hardware.tpu_slices import parse_topology
from gptjax.model.attention import fused_attention
from gptjax.model.documents import Documents, document_positions, segment_ids, set_eos_id
from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding
from gptjax.performance.aot import compile_config
from gptjax.training import train
from gptjax.training.loss import cross_entropy, make_forward, make_loss

EOS = 64          # of the tiny model's 65 tokens
T, HEADS = 128, 2


def reference_segments(row, eos):
    """Plain Python: (segment id, position in its document) of every token of one row."""
    seg, pos, out = 0, 0, []
    for token in row:
        out.append((seg, pos))
        pos += 1
        if token == eos:
            seg, pos = seg + 1, 0
    return out


def packed_tokens(batch, length, seed=0, p_eos=0.04):
    """Random tokens with EOS at random places; row 0 also starts with EOS (a one-token first
    document) and row 1 has none (one document: the causal mask alone)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, EOS, (batch, length))
    tokens[rng.random((batch, length)) < p_eos] = EOS
    tokens[0, 0] = EOS
    if batch > 1:
        tokens[1] = rng.integers(0, EOS, length)
    return jnp.asarray(tokens, jnp.int32)


def test_segments_and_positions_match_python():
    tokens = packed_tokens(4, 64)
    seg = segment_ids(tokens, EOS)
    pos = document_positions(seg)
    for b in range(tokens.shape[0]):
        want = reference_segments(np.asarray(tokens[b]).tolist(), EOS)
        assert list(zip(np.asarray(seg[b]).tolist(), np.asarray(pos[b]).tolist(),
                        strict=True)) == want
    assert int(seg[1].max()) == 0 and int(seg[0].max()) >= 2


# ----------------------------------------------------------------------------- attention


def dense_reference(q, k, v, seg, window):
    """softmax(q k^T / sqrt(H)) v in float64, keys allowed where causal, inside the window and
    in the query's segment."""
    q, k, v, seg = (np.asarray(x, np.float64) for x in (q, k, v, seg))
    scores = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
    i = np.arange(q.shape[1])
    allowed = i[:, None] >= i[None, :]
    if window:
        allowed &= i[:, None] - i[None, :] < window
    allowed = allowed[None, None] & (seg[:, None, :, None] == seg[:, None, None, :])
    scores = np.where(allowed, scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.einsum("bnqk,bknh->bqnh", probs, v)


def qkv(batch, head_dim=64, seed=0):
    return jax.random.normal(jax.random.key(seed), (3, batch, T, HEADS, head_dim))


@pytest.mark.parametrize("window", [0, 64])
def test_xla_and_splash_match_dense_reference(window):
    """XLA's masked attention and splash's segment ids (interpret mode) against the dense
    reference; splash's gradients against XLA's."""
    q, k, v = qkv(batch=2)
    seg = segment_ids(packed_tokens(2, T, seed=window), EOS)
    want = dense_reference(q, k, v, seg, window)
    xla = fused_attention(q, k, v, window, "xla", segment_ids=seg)
    splash = fused_attention(q, k, v, window, "splash", segment_ids=seg)
    np.testing.assert_allclose(xla, want, atol=2e-5)
    np.testing.assert_allclose(splash, want, atol=2e-5)
    # without the segments the rows with several documents differ (the test can fail)
    assert not np.allclose(fused_attention(q, k, v, window, "xla")[0], want[0], atol=1e-3)
    assert_splash_grads_match_xla(q, k, v, window, seg)


def test_splash_segments_sharded_over_batch_and_heads():
    """Under a data=4 x tensor=2 mesh the segment ids are split over the batch with q, k, v."""
    config = get_config("configs/smoke.py:tiny", ["--config.mesh.data=4",
                                                  "--config.mesh.tensor=2"])
    mesh = sharding.make_mesh(config.mesh)
    q, k, v = qkv(batch=4)
    seg = segment_ids(packed_tokens(4, T, seed=3), EOS)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.logical_rules(config)):
        got = jax.jit(lambda q, k, v, s: fused_attention(q, k, v, 0, "splash",
                                                         segment_ids=s))(q, k, v, seg)
    np.testing.assert_allclose(got, dense_reference(q, k, v, seg, 0), atol=2e-5)


# ----------------------------------------------------------------------------- the model


def doc_config(positions_restart=True, **model):
    overrides = ["--config.data.document_mask=True", f"--config.data.eos_id={EOS}",
                 f"--config.data.positions_restart={positions_restart}"]
    config = get_config("configs/smoke.py:tiny", overrides)
    for key, value in model.items():
        config.model[key] = value
    return config


def documents_of(row):
    """[(start, end)] of each document (its EOS included) of a row."""
    ends = [i + 1 for i, t in enumerate(np.asarray(row).tolist()) if t == EOS]
    bounds = [0] + [e for e in ends if e < len(row)] + [len(row)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def init_params(c: GPTConfig, length):
    tokens = jnp.zeros((1, length), jnp.int32)
    return nn.unbox(GPT(c).init(jax.random.key(0), tokens)["params"])


def each_alone(c: GPTConfig, params, row, docs, restart: bool):
    """Logits of each document of `row` run on its own: one row per document, the document
    first and right-padded (causal: the padding changes nothing before it), at positions 0..
    (restart) or at its offsets in the window."""
    length = len(row)
    rows = np.zeros((len(docs), length), np.int32)
    positions = np.zeros((len(docs), length), np.int32)
    for i, (a, b) in enumerate(docs):
        rows[i, :b - a] = row[a:b]
        positions[i] = np.arange(length) + (0 if restart else a)
    positions %= length  # the padding's positions stay in range
    out = jax.jit(lambda p, t, pos: GPT(c).apply({"params": p}, t, positions=pos))(
        params, rows, positions)
    return [out[i, :b - a] for i, (a, b) in enumerate(docs)]


@pytest.mark.parametrize("position,restart", [
    ("learned", True), ("rotary", True), ("learned", False)])
def test_packed_window_equals_each_document_alone(position, restart):
    """The step's forward (make_forward: segment ids from the tokens) on a packed window gives
    each document the logits it has alone: at positions 0.. (positions_restart) or at its
    offsets in the window; GPT-3's banded layers included (local_window=4)."""
    config = doc_config(restart, position=position, local_window=4)
    c = GPTConfig.from_config(config.model, backend="cpu")
    tokens = jnp.asarray(np.r_[np.arange(1, 5), EOS, np.arange(10, 16), EOS,
                               np.arange(30, 34)][None], jnp.int32)
    assert tokens.shape == (1, c.max_seq_len)
    params = init_params(c, c.max_seq_len)
    packed = jax.jit(make_forward(config))(params, tokens)
    plain = doc_config(False, position=position, local_window=4)
    plain.data.document_mask = False
    unmasked = jax.jit(make_forward(plain))(params, tokens)
    docs = documents_of(tokens[0])
    for (a, b), alone in zip(docs, each_alone(c, params, np.asarray(tokens[0]), docs, restart),
                             strict=True):
        np.testing.assert_allclose(packed[0, a:b], alone, atol=1e-5)
        if a > 0:  # without the mask a document sees the ones before it
            assert not np.allclose(unmasked[0, a:b], alone, atol=1e-3)


def test_splash_model_on_a_packed_window():
    """attention=splash (interpret mode) in the model, T=128: each document of a packed window
    equals it alone (run by XLA's attention)."""
    config = doc_config(True, attention="splash", max_seq_len=T, num_layers=1)
    config.data.seq_len = T
    c = GPTConfig.from_config(config.model, backend="cpu")
    tokens = packed_tokens(1, T, seed=5, p_eos=0.03)
    params = init_params(c, T)
    packed = jax.jit(make_forward(config))(params, tokens)
    docs = documents_of(tokens[0])
    assert len(docs) >= 3
    alone = each_alone(dataclasses.replace(c, attention="xla"), params, np.asarray(tokens[0]),
                       docs, True)
    for (a, b), want in zip(docs, alone, strict=True):
        np.testing.assert_allclose(packed[0, a:b], want, atol=1e-5)


def test_loss_counts_every_target_as_before():
    """The loss is the cross-entropy of the masked model's logits over every position, the
    EOS position's target (the next document's first token) included, as without the mask."""
    config = doc_config()
    c = GPTConfig.from_config(config.model, backend="cpu")
    window = packed_tokens(4, c.max_seq_len + 1, seed=7, p_eos=0.15)
    batch = {"inputs": window[:, :-1], "targets": window[:, 1:]}
    params = init_params(c, c.max_seq_len)
    _, (total, weight) = jax.jit(make_loss(config))(params, batch)
    logits = jax.jit(make_forward(config))(params, batch["inputs"])
    want_total, want_weight = cross_entropy(logits, batch["targets"])
    assert float(weight) == batch["targets"].size == float(want_weight)
    np.testing.assert_allclose(total, want_total, rtol=1e-5)
    plain = get_config("configs/smoke.py:tiny")
    plain_total = jax.jit(make_loss(plain))(params, batch)[1][0]
    assert not np.isclose(float(plain_total), float(total), rtol=1e-4)


def test_attention_dropout_path_keeps_documents_apart():
    """With attention dropout (the explicit attention path) in training, changing the first
    document's tokens leaves the later documents' logits exactly as they were."""
    config = doc_config(True, attn_dropout=0.3)
    c = GPTConfig.from_config(config.model, backend="cpu")
    tokens = jnp.asarray(np.r_[np.arange(1, 6), EOS, np.arange(10, 20)][None], jnp.int32)
    changed = tokens.at[0, :5].set(40)
    params = init_params(c, c.max_seq_len)
    forward = jax.jit(make_forward(config), static_argnames="train")
    key = jax.random.key(3)
    a = forward(params, tokens, key, train=True)
    b = forward(params, changed, key, train=True)
    np.testing.assert_array_equal(a[:, 6:], b[:, 6:])
    assert not np.allclose(a[:, :5], b[:, :5])
    assert not np.allclose(forward(params, tokens), a)  # dropout did run


# ----------------------------------------------------------------------------- config


def test_options_are_checked():
    assert Documents.from_config(get_config("configs/smoke.py:tiny")) is None
    with pytest.raises(UserError, match="needs data.document_mask"):
        Documents.from_config(get_config("configs/smoke.py:tiny",
                                         ["--config.data.positions_restart=True"]))
    with pytest.raises(UserError, match="needs data.eos_id"):
        Documents.from_config(get_config("configs/smoke.py:tiny",
                                         ["--config.data.document_mask=True"]))


class _Tok:
    kind = "char"

    def __init__(self, eos_id):
        self.eos_id = eos_id


def test_eos_id_comes_from_the_tokenizer():
    config = get_config("configs/smoke.py:tiny", ["--config.data.document_mask=True"])
    set_eos_id(config, _Tok(7))
    assert Documents.from_config(config) == Documents(7, False)
    with pytest.raises(UserError, match="tokenizer's EOS is 9"):
        set_eos_id(config, _Tok(9))
    with pytest.raises(UserError, match="has none"):
        set_eos_id(get_config("configs/smoke.py:tiny", ["--config.data.document_mask=True"]),
                   _Tok(None))
    plain = get_config("configs/smoke.py:tiny")
    set_eos_id(plain, _Tok(7))
    assert plain.data.eos_id == -1


@pytest.mark.slow  # a whole training run (the recipe setting data.eos_id)
def test_a_run_trains_with_the_tokenizers_eos(tmp_path):
    config = get_config("configs/smoke.py:tiny", ["--config.data.document_mask=True",
                                                  "--config.data.positions_restart=True"])
    config.data.source, config.train.steps, config.train.plot = "synthetic", 1, False
    config.train.eval_every = -1
    result = train.train(config, str(tmp_path))
    assert result["step"] == 1 and np.isfinite(result["loss"])
    with open(os.path.join(tmp_path, "config.json")) as f:
        assert json.load(f)["data"]["eos_id"] == 0  # the synthetic tokenizer's EOS


# ----------------------------------------------------------------------------- compiled


@needs_cuda_plugin
def test_gpu_step_keeps_cudnn_attention_with_the_mask(capsys):
    """XLA:GPU (compile only): the train step with document_mask calls cuDNN's fused attention
    with its mask (the bias form, forward and backward, once per layer), never the unmasked
    kernel, and XLA's attention nowhere."""
    argv = ["compile", "--config", "configs/smoke.py", "--topology", "h100-1", "--no-eval",
            "--json"]
    layers = get_config("configs/smoke.py").model.num_layers
    assert cli.main(argv) == 0
    plain = json.loads(capsys.readouterr().out)["kernels"]
    assert cli.main(argv + ["--config.data.document_mask=True"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert plain == {"__cudnn$fmhaSoftmax": layers, "__cudnn$fmhaSoftmaxBackward": layers}
    assert r["kernels"] == {"__cudnn$fmhaScaleBiasSoftmax": layers,
                            "__cudnn$fmhaScaleBiasSoftmaxBackward": layers}
    assert r["attention"] == "cudnn" and r["fits"] and r["document_mask"]


@pytest.mark.slow  # a TPU compile of the whole step
@needs_libtpu
def test_tpu_step_compiles_with_segment_ids():
    """The TPU compiler on v5p-8: splash with segment ids under the data-parallel mesh."""
    config = get_config("configs/smoke.py", ["--config.data.document_mask=True"])
    report = compile_config(config, parse_topology("v5p-8"), eval_step=False)
    assert report["attention"] == "splash" and report["fits"] and report["document_mask"]
    assert report["kernels"]["tpu_custom_call"] >= 3  # splash forward, dq, dkv
