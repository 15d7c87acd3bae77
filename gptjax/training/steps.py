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

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.training.loss import Transform, make_loss
from gptjax.training.optim import keep_finite, make_optimizer, schedule, schedule_count
from gptjax.training.state import TrainState, model_config


def make_loss_and_grads(config, model: GPT | None = None, param_shardings=None,
                        params_transform: Transform = None):
    """(params, batch, key) -> (loss, grads), with grad accumulation over micro-batches.

    The global batch [B, T] is split into A = train.grad_accum micro-batches of B/A rows
    (row r goes to micro-batch r % A, so every device keeps its rows local). Each micro-batch
    gives its weighted loss sum, its weight sum and the gradient of the loss sum; these add up
    in float32 and are divided once by the global weight, so A x B/A equals one step of B for
    any token weights (a micro-batch with few or no weighted tokens counts for what it holds).
    The running sum is sharded like the params (`param_shardings`), so FSDP keeps it spread.
    """
    loss = make_loss(config, model, params_transform)
    rules = sharding.logical_rules(config)
    accum = int(config.train.grad_accum)

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
