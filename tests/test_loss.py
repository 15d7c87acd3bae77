"""The loss: float32 logits, padded vocabulary columns out of the softmax, and the chunked
cross-entropy equal to the whole-logits one while keeping far less memory live."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax.config.loader import get_config
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.parallel.params import with_shardings
from gptjax.training import steps
from gptjax.training.loss import block_size, cross_entropy, make_forward, make_loss
from gptjax.training.state import abstract_train_state, model_config

VOCAB = 65  # shakespeare_char's characters, padded to 128 columns


def tiny(*overrides):
    return get_config("configs/smoke.py:tiny", [
        f"--config.model.vocab_size={VOCAB}", "--config.model.vocab_multiple=128", *overrides])


def setup(config, batch=4, seed=0):
    model = GPT(model_config(config))
    tokens = jax.random.randint(jax.random.key(seed + 1), (batch, config.data.seq_len + 1), 0,
                                config.model.vocab_size)
    params = nn.unbox(model.init(jax.random.key(seed), tokens[:, :-1])["params"])
    return model, params, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


@pytest.mark.parametrize("chunk,tied", [(1, True), (5, False), (8, True)])
def test_chunked_equals_whole_logits(chunk, tied):
    """Values and gradients of every block size (5 does not divide T=16: blocks of 4) match
    the cross-entropy of the whole float32 logits, with and without per-token weights."""
    config = tiny(f"--config.train.loss_chunk={chunk}", f"--config.model.tie_embeddings={tied}")
    model, params, batch = setup(config)
    batch["weights"] = (jax.random.uniform(jax.random.key(7), batch["targets"].shape) > 0.3)
    forward = make_forward(config, model)

    def whole(p):
        total, weight = cross_entropy(forward(p, batch["inputs"]), batch["targets"],
                                            batch["weights"])
        return total / weight

    chunked = make_loss(config, model)
    want, want_g = jax.value_and_grad(whole)(params)
    got, got_g = jax.value_and_grad(lambda p: chunked(p, batch)[0])(params)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 got_g, want_g)
    assert block_size(16, chunk) == {1: 1, 5: 4, 8: 8}[chunk]


def test_untrained_loss_is_log_vocab_size_in_train_eval_and_finetune():
    """With near-zero logits the loss is ln(65) = 4.17 over the real vocabulary; the 63 padded
    columns would make it ln(128) = 4.85 if they took part in the softmax."""
    config = tiny("--config.model.init_std=0.0001")
    model, params, batch = setup(config, batch=8)
    mesh = sharding.make_mesh(config.mesh)
    _, shardings = abstract_train_state(config, mesh, model)
    with jax.set_mesh(mesh):
        train_loss = make_loss(config, model)(params, batch, train=True)[0]
        total, weight = steps.make_eval_step(config, mesh, shardings.params, model)(params, batch)
        weights = jnp.zeros(batch["targets"].shape).at[:, 5:].set(1.0)  # response tokens only
        ft_loss = make_loss(config, model)(params, {**batch, "weights": weights})[0]
    for loss in (train_loss, total / weight, ft_loss):
        assert abs(float(loss) - math.log(VOCAB)) < 0.1, float(loss)
    assert abs(math.log(128) - math.log(VOCAB)) > 0.5


def test_logits_are_float32_under_bfloat16_compute():
    config = tiny("--config.model.dtype=bfloat16")
    model, params, batch = setup(config)
    logits = make_forward(config, model)(params, batch["inputs"])
    assert logits.dtype == jnp.float32
    assert float(logits[..., VOCAB:].max()) == float(jnp.finfo(jnp.float32).min)
    # Accumulated in float32: not a bfloat16 value rounded up (bf16 keeps 8 mantissa bits).
    real = np.asarray(logits[..., :VOCAB]).ravel()
    assert np.mean(real != np.asarray(real.astype(jnp.bfloat16).astype(np.float32))) > 0.5


def _temp_bytes(config, chunk):
    with config.unlocked():
        config.train.loss_chunk = chunk
    mesh = sharding.single_device_mesh()
    abstract, shardings = abstract_train_state(config, mesh)
    state = with_shardings(abstract, shardings)
    shape = (config.train.batch_size, config.data.seq_len)
    bs = sharding.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=bs) for k in ("inputs", "targets")}
    with jax.set_mesh(mesh):
        compiled = steps.make_train_step(config, mesh, shardings).lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_loss_keeps_less_memory_live():
    """XLA's own buffer assignment of the train step: the float32 [B, T, V] logits (and their
    gradient) of a 8192-token vocabulary dominate the temporaries unless the loss is chunked."""
    config = get_config("configs/smoke.py:tiny", [
        "--config.model.vocab_size=8192", "--config.data.seq_len=16",
        "--config.train.batch_size=16"])
    logits_bytes = 16 * 16 * 8192 * 4
    whole, chunked = _temp_bytes(config, 0), _temp_bytes(config, 2)
    assert whole > 2 * logits_bytes
    assert chunked < whole - 1.5 * logits_bytes, (whole, chunked)
