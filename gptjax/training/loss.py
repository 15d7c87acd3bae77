"""The loss: next-token cross-entropy, one definition for training, evaluation, fine-tuning
and compression (nanodo's rule: train and eval cannot drift apart).

    loss_fn = make_loss(config)             # (params, batch, key, train) -> (mean, (sum, weight))
    loss_sum, weight_sum = chunked_cross_entropy(hidden_btd, head, targets_bt, weights_bt, ...)

A batch is `{'inputs': int32 [B, T], 'targets': int32 [B, T]}` plus optional
`'weights': float32 [B, T]` (1 where a target counts: fine-tuning weighs only response tokens).
`params_transform` maps stored params to the params the model runs with, inside the jitted
step (int8 dequantisation, pruning masks).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gptjax.model.documents import Documents
from gptjax.model.gpt import GPT, GPTConfig, logits_from_hidden, output_head
from gptjax.parallel import sharding

Transform = Callable | None


def cross_entropy(logits_btv, targets_bt, weights_bt=None):
    """(sum of weighted token losses, sum of weights), in float32, from whole logits."""
    losses_bt = optax.softmax_cross_entropy_with_integer_labels(
        logits_btv.astype(jnp.float32), targets_bt)
    if weights_bt is None:
        return losses_bt.sum(), jnp.asarray(losses_bt.size, jnp.float32)
    weights_bt = weights_bt.astype(jnp.float32)
    return (losses_bt * weights_bt).sum(), weights_bt.sum()


def block_size(seq_len: int, chunk: int) -> int:
    """The largest divisor of seq_len that is at most `chunk` (chunk <= 0: the whole length)."""
    if chunk <= 0 or chunk >= seq_len:
        return seq_len
    return next(b for b in range(chunk, 0, -1) if seq_len % b == 0)


def chunked_cross_entropy(hidden_btd, head, targets_bt, weights_bt, c, chunk: int):
    """`cross_entropy` of the output head applied to the final hidden states, one block of
    `block_size(T, chunk)` positions at a time, so no float32 [B, T, V] tensor is ever live.

    Each block's logits are recomputed in the backward pass (jax.checkpoint) instead of being
    kept: memory is one block's [B, T_block, V] logits; the price is one more head matmul
    (2·V·D FLOPs per token). The head's gradient accumulates over blocks in its parameter dtype.
    """
    batch, seq_len = targets_bt.shape
    size = block_size(seq_len, chunk)
    if weights_bt is None:
        weights_bt = jnp.ones(targets_bt.shape, jnp.float32)

    def blocks(x):  # [B, T, ...] -> [T / size, B, size, ...]
        return x.reshape(batch, seq_len // size, size, *x.shape[2:]).swapaxes(0, 1)

    @jax.checkpoint
    def block_loss(x_btd, t_bt, w_bt):
        logits = nn.with_logical_constraint(logits_from_hidden(x_btd, head, c),
                                            ("batch", "length", "act_vocab"))
        return cross_entropy(logits, t_bt, w_bt)[0]

    def body(total, xs):
        return total + block_loss(*xs), None

    xs = (blocks(hidden_btd), blocks(targets_bt), blocks(weights_bt.astype(jnp.float32)))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total, weights_bt.astype(jnp.float32).sum()


def uses_dropout(model: GPT) -> bool:
    c = model.config
    return max(c.embed_dropout, c.attn_dropout, c.resid_dropout) > 0


def _apply(config, model: GPT, params_transform: Transform, hidden: bool):
    """`(params, inputs_bt, key, train) -> (params as run, model output)`: logical axis rules,
    params transform, dropout only when training, packed documents kept apart when
    data.document_mask (their segment ids and positions computed here from the inputs)."""
    rules = sharding.logical_rules(config)
    dropout = uses_dropout(model)
    documents = Documents.from_config(config)

    def apply(params, inputs_bt, key=None, train=False):
        if params_transform is not None:
            params = params_transform(params)
        extra = documents.model_inputs(inputs_bt) if documents is not None else {}
        with nn.logical_axis_rules(rules):
            out = model.apply({"params": params}, inputs_bt, hidden=hidden,
                              deterministic=not (train and dropout),
                              rngs={"dropout": key} if train and dropout else None, **extra)
        return params, out

    return apply


def make_forward(config, model: GPT | None = None, params_transform: Transform = None):
    """`(params, inputs_bt, key=None, train=False) -> logits_btv`: the model as every step runs
    it; float32 logits, padded vocabulary columns at the float32 minimum."""
    model = model or GPT(GPTConfig.from_config(config.model))
    apply = _apply(config, model, params_transform, hidden=False)
    return lambda params, inputs_bt, key=None, train=False: apply(params, inputs_bt, key,
                                                                  train)[1]


def make_loss(config, model: GPT | None = None, params_transform: Transform = None):
    """`(params, batch, key, train) -> (mean loss, (loss sum, weight sum))`: the chunked
    cross-entropy of `train.loss_chunk` positions per block, over the real vocabulary only."""
    model = model or GPT(GPTConfig.from_config(config.model))
    apply = _apply(config, model, params_transform, hidden=True)
    rules = sharding.logical_rules(config)
    chunk = int(config.train.loss_chunk)

    def loss(params, batch, key=None, train=False):
        params, hidden_btd = apply(params, batch["inputs"], key, train)
        with nn.logical_axis_rules(rules):
            total, weight = chunked_cross_entropy(
                hidden_btd, output_head(params, model.config), batch["targets"],
                batch.get("weights"), model.config, chunk)
        return total / jnp.maximum(weight, 1.0), (total, weight)

    return loss
