"""The train state: what it holds, its shapes and shardings, and how it is born sharded.

    abstract, shardings = abstract_train_state(config, mesh)  # nothing allocated
    state = create_train_state(config, mesh)                   # sharded from birth

Step numbers count finished steps: after the k-th batch `state.step == k`.
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gptjax.model.gpt import GPT, GPTConfig
from gptjax.parallel import sharding
from gptjax.parallel.params import init_tokens, param_shardings
from gptjax.training.optim import make_optimizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 [], finished steps
    params: Any            # unboxed params (logical axes live in `abstract_train_state`)
    opt_state: Any
    rng: jax.Array         # uint32 key data; dropout key of step s = fold_in(rng, s)
    skipped: jax.Array     # int32 [], steps whose update was dropped for non-finite values


def model_config(config) -> GPTConfig:
    return GPTConfig.from_config(config.model)


def _make_init_fn(config, model: GPT, tx):
    seed = int(config.train.seed)

    def init(_=None):
        params_key, dropout_key = jax.random.split(jax.random.key(seed))
        tokens = init_tokens(model.config, config.data.seq_len)
        params = nn.unbox(model.init(params_key, tokens)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=jax.random.key_data(dropout_key),
                          skipped=jnp.zeros((), jnp.int32))
    return init


def abstract_train_state(config, mesh, model: GPT | None = None, tx=None):
    """-> (abstract TrainState of ShapeDtypeStructs, TrainState of NamedShardings).

    Nothing is allocated: shapes come from `jax.eval_shape`, shardings from the params' logical
    axis names; Adam moments take their parameter's sharding.
    """
    model = model or GPT(model_config(config))
    tx = tx or make_optimizer(config)
    param_sh = param_shardings(config, mesh, model.config)
    abstract = jax.eval_shape(_make_init_fn(config, model, tx))
    repl = sharding.replicated(mesh)
    opt_sh = optax.tree_map_params(
        tx, lambda _, s: s, abstract.opt_state, param_sh,
        transform_non_params=lambda _: repl,
        is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding))
    shardings = TrainState(step=repl, params=param_sh, opt_state=opt_sh, rng=repl, skipped=repl)
    sharding.check_shardable(abstract.params, param_sh, "parameter")
    return abstract, shardings


def optimizer_state_bytes(config, model: GPT | None = None, tx=None) -> int:
    """Bytes of the optimizer state that `tx.init` builds for this model's params (one copy,
    unsharded): read off the real state tree with `jax.eval_shape`, nothing allocated. With
    `optim.state_dtype=bfloat16` optax keeps only Adam's first moment in bfloat16."""
    model = model or GPT(model_config(config))
    tx = tx or make_optimizer(config)
    abstract = jax.eval_shape(_make_init_fn(config, model, tx))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract.opt_state))


def create_train_state(config, mesh, model: GPT | None = None, tx=None, shardings=None):
    """Initialises the train state directly into its shardings (jit with out_shardings)."""
    model = model or GPT(model_config(config))
    tx = tx or make_optimizer(config)
    if shardings is None:
        _, shardings = abstract_train_state(config, mesh, model, tx)
    with jax.set_mesh(mesh):
        return jax.jit(_make_init_fn(config, model, tx), out_shardings=shardings)()


def state_from_params(config, mesh, params, tx=None, shardings=None, seed: int | None = None):
    """A fresh TrainState (step 0, new Adam state) around given params: a fine-tune's start."""
    tx = tx or make_optimizer(config)
    if shardings is None:
        _, shardings = abstract_train_state(config, mesh, tx=tx)
    params = jax.device_put(params, shardings.params)
    key = jax.random.key(int(config.train.seed if seed is None else seed))

    def init(p):
        return TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                          rng=jax.random.key_data(key), skipped=jnp.zeros((), jnp.int32))
    with jax.set_mesh(mesh):
        return jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)(params)
