"""One train-step factory, one eval-step factory, both on the loss of gptjax/training/loss.py:
what pretraining, fine-tuning, evaluation and compression all run.

    step_fn = make_train_step(config, mesh, shardings)   # (state, batch) -> (state, metrics)
    eval_fn = make_eval_step(config, mesh, param_sh)     # (params, batch) -> (loss sum, weight)

A batch is `{'inputs': int32 [B, T], 'targets': int32 [B, T]}` plus optional
`'weights': float32 [B, T]` (1 where a target counts: fine-tuning weighs only response tokens).
`params_transform` maps stored params to the params the model runs with, inside the jitted
step (int8 dequantisation, pruning masks).
"""

from __future__ import annotations

import copy
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gptjax.errors import UserError
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.training.loss import Transform, make_loss
from gptjax.training.optim import keep_finite, make_optimizer, schedule, schedule_count
from gptjax.training.state import TrainState, model_config


def _shard_mesh(param_shardings):
    """The mesh the batch is split over (data x fsdp > 1 devices), or None."""
    leaves = jax.tree.leaves(param_shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
    mesh = leaves[0].mesh if leaves else jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or sharding.axis_size(mesh, sharding.BATCH_AXES) == 1:
        return None
    return mesh


def without_batch_axes(spec: P) -> P:
    """A parameter's spec with data and fsdp dropped: what one device's partial gradient is."""
    def keep(axes):
        axes = axes if isinstance(axes, tuple) else (axes,)
        kept = tuple(a for a in axes if a is not None and a not in sharding.BATCH_AXES)
        return kept or None
    return P(*(keep(a) for a in spec))


def _reduce_shards(grad_sum, param_shardings, mesh):
    """[shards, *param] float32 partial gradients (shards over data x fsdp) -> their sum,
    sharded like the param: a reduce-scatter over fsdp along the param's fsdp dimension (an
    all-reduce where it has none) and an all-reduce over data, once, in float32."""
    def one(g, p_sharding):
        spec = tuple(p_sharding.spec) + (None,) * (g.ndim - 1 - len(p_sharding.spec))
        dims = [d for d, axes in enumerate(spec) if "fsdp" in (
            axes if isinstance(axes, tuple) else (axes,))]
        if mesh.shape["fsdp"] == 1:
            dims = []
        simple = not dims or spec[dims[0]] in ("fsdp", ("fsdp",))
        if not simple:  # an unusual rule (fsdp with another axis on one dim): XLA decides
            return jax.lax.with_sharding_constraint(g.sum(0), p_sharding)

        def local(x):
            x = x[0]
            if dims:
                x = jax.lax.psum_scatter(x, "fsdp", scatter_dimension=dims[0], tiled=True)
                return jax.lax.psum(x, "data")
            return jax.lax.psum(x, sharding.BATCH_AXES)
        in_spec = P(sharding.BATCH_AXES, *without_batch_axes(P(*spec)))
        return jax.shard_map(local, mesh=mesh, in_specs=in_spec, out_specs=P(*spec),
                             check_vma=False)(g)
    return jax.tree.map(one, grad_sum, param_shardings)


def make_loss_and_grads(config, model: GPT | None = None, param_shardings=None,
                        params_transform: Transform = None):
    """(params, batch, key) -> (loss, grads), with grad accumulation over micro-batches.

    The global batch [B, T] is split into A = train.grad_accum micro-batches of B/A rows
    (row r goes to micro-batch r % A, so every device keeps its rows local). Each micro-batch
    gives its weighted loss sum, its weight sum and the gradient of the loss sum; these add up
    in float32 and are divided once by the global weight, so A x B/A equals one step of B for
    any token weights (a micro-batch with few or no weighted tokens counts for what it holds).

    Where gradients are summed over data x fsdp (`optim.grad_reduce_dtype`):
    - `float32` (default), A = 1: the model's matmuls compute their kernels' gradients in
      float32 (gptjax/model/gpt.py, `matmul`), so the reduce-scatter / all-reduce XLA places
      inside each layer's backward pass sums float32 partial gradients. No extra memory: no
      device holds more of a gradient than its shard and one layer's partial sums.
    - `float32`, A > 1 on a mesh whose data x fsdp > 1: every device computes the gradient of
      its own rows (a vmap over the batch shards) and adds it to its own float32 accumulator;
      the shards' gradients are summed once per step (one reduction per step, whatever A is).
      The price: each device holds a whole float32 gradient (split only over tensor).
    - `bfloat16`: the kernels' gradients in the compute dtype, reduced where they are produced,
      each micro-batch, into an accumulator sharded like the params (`param_shardings`).
    """
    reduce_dtype = str(config.optim.grad_reduce_dtype)
    if reduce_dtype not in ("float32", "bfloat16"):
        raise UserError(f"config.optim.grad_reduce_dtype={reduce_dtype!r}: choose float32 "
                        f"or bfloat16")
    accum = int(config.train.grad_accum)
    model = model or GPT(model_config(config))
    if reduce_dtype == "bfloat16":
        model = model.clone(config=dataclasses.replace(model.config, grad_dtype=model.config.dtype))
    mesh = _shard_mesh(param_shardings) if reduce_dtype == "float32" and accum > 1 else None
    if mesh is not None:
        return _per_shard_loss_and_grads(config, model, param_shardings, params_transform,
                                         accum, mesh)
    loss = make_loss(config, model, params_transform)
    rules = sharding.logical_rules(config)
    mean_grad = jax.value_and_grad(lambda p, b, k: loss(p, b, k, train=True)[0])
    # the loss sum as value, the weight sum as aux: (sum, weight), d sum / d params
    grad_fn = jax.value_and_grad(lambda p, b, k: loss(p, b, k, train=True)[1], has_aux=True)

    def loss_and_grads(params, batch, key):
        if accum == 1:
            return mean_grad(params, batch, key)

        def split(x):
            x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
            with nn.logical_axis_rules(rules):
                return nn.with_logical_constraint(x, (None, "batch", "length"))
        micro = jax.tree.map(split, batch)

        def body(carry, xs):
            total, weight, grad_sum = carry
            i, mb = xs
            (t, w), grads = grad_fn(params, mb, jax.random.fold_in(key, i))
            grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
            return (total + t, weight + w, grad_sum), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        if param_shardings is not None:
            zeros = jax.lax.with_sharding_constraint(zeros, param_shardings)
        zero = jnp.zeros((), jnp.float32)
        (total, weight, grad_sum), _ = jax.lax.scan(
            body, (zero, zero, zeros), (jnp.arange(accum), micro))
        scale = 1.0 / jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grad_sum, params)
        return total * scale, grads

    return loss_and_grads


def _per_shard_loss_and_grads(config, model, param_shardings, params_transform, accum, mesh):
    """`make_loss_and_grads` with one float32 gradient reduction per step (its docstring)."""
    inner = copy.deepcopy(config)  # inside the vmap a shard's rows are not split again
    inner.mesh.rules = tuple((name, None if name == "batch" else axes)
                             for name, axes in sharding.logical_rules(config))
    loss = make_loss(inner, model, params_transform)
    shards = sharding.axis_size(mesh, sharding.BATCH_AXES)
    grad_fn = jax.vmap(
        jax.value_and_grad(lambda p, b, k: loss(p, b, k, train=True)[1], has_aux=True),
        in_axes=(None, 0, 0), spmd_axis_name=sharding.BATCH_AXES)

    def acc_sharding(p_sharding):
        return NamedSharding(mesh, P(sharding.BATCH_AXES,
                                     *without_batch_axes(p_sharding.spec)))

    def loss_and_grads(params, batch, key):
        def split(x):  # [B, ...] -> [A, shards, B / (A shards), ...], shards over data x fsdp
            x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
            x = x.reshape(accum, shards, x.shape[1] // shards, *x.shape[2:])
            return jax.lax.with_sharding_constraint(
                x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))
        micro = jax.tree.map(split, batch)
        acc_sh = (jax.tree.map(acc_sharding, param_shardings) if param_shardings is not None
                  else jax.tree.map(lambda _: NamedSharding(mesh, P(sharding.BATCH_AXES)),
                                    params))

        def body(carry, xs):
            total, weight, grad_sum = carry
            i, mb = xs
            keys = jax.random.split(jax.random.fold_in(key, i), shards)
            (t, w), grads = grad_fn(params, mb, keys)
            grad_sum = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grad_sum, grads)
            grad_sum = jax.lax.with_sharding_constraint(grad_sum, acc_sh)
            return (total + t.sum(), weight + w.sum(), grad_sum), None

        zeros = jax.tree.map(lambda p: jnp.zeros((shards, *p.shape), jnp.float32), params)
        zeros = jax.lax.with_sharding_constraint(zeros, acc_sh)
        zero = jnp.zeros((), jnp.float32)
        (total, weight, grad_sum), _ = jax.lax.scan(
            body, (zero, zero, zeros), (jnp.arange(accum), micro))
        scale = 1.0 / jnp.maximum(weight, 1.0)
        if param_shardings is not None:  # the one reduction: sum over shards, float32
            grad_sum = _reduce_shards(grad_sum, param_shardings, mesh)
        else:
            grad_sum = jax.tree.map(lambda g: g.sum(0), grad_sum)
        grads = jax.tree.map(lambda g, p: (g * scale).astype(p.dtype), grad_sum, params)
        return total * scale, grads

    return loss_and_grads


def make_train_step(config, mesh, shardings: TrainState, model: GPT | None = None, tx=None,
                    params_transform: Transform = None, loss_and_grads=None, frozen=None):
    """Jitted `(state, batch) -> (state, metrics)`; the state is donated (updated in place).

    Non-finite loss or gradient norm: the update is dropped inside the step (params and Adam
    moments unchanged, `skipped` += 1; the schedule still advances: `optim.keep_finite`); the
    loop decides whether to go on (train.nonfinite). The logged `lr` is the one applied.
    `loss_and_grads` replaces the default objective. With `frozen` (arrays the objective reads
    but never trains: a distillation teacher, pruning masks) the step is
    `(state, batch, frozen)` and calls `loss_and_grads(params, batch, key, frozen)`; frozen is
    a jit argument placed as its arrays are (a closed-over array would be baked into the
    program as a constant).
    """
    model = model or GPT(model_config(config))
    tx = tx or make_optimizer(config)
    if loss_and_grads is None:
        loss_and_grads = make_loss_and_grads(config, model, shardings.params, params_transform)
    lr_fn = schedule(config.optim, config.train.steps)

    def train_step(state: TrainState, batch, *frozen_args):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        loss, grads = loss_and_grads(state.params, batch, key, *frozen_args)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_state = state.replace(
            step=state.step + 1,
            params=jax.tree.map(keep, params, state.params),
            opt_state=keep_finite(finite, opt_state, state.opt_state),
            skipped=state.skipped + (~finite).astype(jnp.int32))
        lr = lr_fn(schedule_count(state.opt_state, state.step))  # the one this update applied
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": lr,
                   "finite": finite, "skipped": new_state.skipped}
        return new_state, metrics

    in_shardings = (shardings, sharding.batch_sharding(mesh))
    if frozen is not None:
        in_shardings += (jax.tree.map(lambda x: x.sharding, frozen),)
    return jax.jit(train_step, in_shardings=in_shardings,
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=0)


def make_eval_step(config, mesh, param_shardings=None, model: GPT | None = None,
                   params_transform: Transform = None):
    """Jitted `(params, batch) -> (sum of weighted token losses, sum of weights)`, float32.

    param_shardings=None leaves the params' placement to their arrays (e.g. int8 trees)."""
    loss = make_loss(config, model, params_transform)
    return jax.jit(lambda params, batch: loss(params, batch)[1],
                   in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
