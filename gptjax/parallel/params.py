"""A config's parameters without allocating them: their shapes (via `jax.eval_shape`), their
logical axis names, and the NamedShardings those names map to on a mesh.

    shardings = param_shardings(config, mesh)       # what each parameter's shards look like
    target = with_shardings(abstract_params(c), shardings)   # what Orbax restores into
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding


def init_tokens(c: GPTConfig, seq_len: int):
    """The token batch a model is initialised with (its shape only matters)."""
    return jnp.zeros((1, min(seq_len, c.max_seq_len)), jnp.int32)


def abstract_params(c: GPTConfig, seq_len: int = 8, boxed: bool = False):
    """Parameter shapes via `jax.eval_shape` (boxed: with their logical axis names)."""
    tokens = init_tokens(c, seq_len)
    params = jax.eval_shape(lambda: GPT(c).init(jax.random.key(0), tokens))["params"]
    return params if boxed else nn.unbox(params)


def param_shardings(config, mesh, c: GPTConfig | None = None):
    """NamedShardings of the params, from their logical axis names through config.mesh.rules."""
    c = c or GPTConfig.from_config(config.model)
    boxed = abstract_params(c, config.data.seq_len, boxed=True)
    return sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh,
                                        sharding.logical_rules(config))


def with_shardings(abstract, shardings):
    """ShapeDtypeStructs that carry their target sharding: what Orbax restores into."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
