"""Shared by the compression tests (test_prune, test_trim, test_distill, test_compress): the
tiny synthetic-data model of configs/smoke.py:tiny, its params, and a briefly trained run."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.config.loader import get_config
from gptjax.model.gpt import GPT
from gptjax.training import train
from gptjax.training.state import model_config

TINY = ["--config.data.source=synthetic", "--config.model.vocab_size=100",
        "--config.train.steps=10", "--config.train.ckpt_every=10", "--config.train.eval_every=0",
        "--config.train.plot=false", "--config.train.async_checkpoint=false"]


def tiny_config(*overrides: str):
    return get_config("configs/smoke.py:tiny", [*TINY, *overrides])


def tiny(scan: bool = True, noisy: bool = True, **model):
    """-> (config, GPTConfig, params) of the tiny model (random biases too when noisy, so a
    pruned head or neuron would show through them)."""
    config = tiny_config(f"--config.model.scan_layers={scan}")
    config.model.update(model)
    c = model_config(config)
    params = nn.unbox(GPT(c).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    if noisy:
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(1), len(leaves))
        params = jax.tree.unflatten(tree, [x + 0.02 * jax.random.normal(k, x.shape)
                                           for x, k in zip(leaves, keys, strict=True)])
    return config, c, params


def logits(c, params, tokens):
    return GPT(c).apply({"params": params}, tokens)


def train_tiny(tmp_path_factory, name: str, *overrides: str):
    """A workdir of the tiny model trained 10 steps on synthetic tokens."""
    workdir = tmp_path_factory.mktemp(name) / "run"
    train.train(tiny_config(*overrides), str(workdir))
    return workdir
