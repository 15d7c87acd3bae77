"""Held-out loss on the run's fixed eval batches: what the training loop's eval hook reports
and what `gptjax eval` (gptjax/evaluation/heldout.py) measures on a finished run, on the same
batches, so the numbers match the training log.
"""

from __future__ import annotations

import math

import jax

from gptjax import data
from gptjax.errors import UserError
from gptjax.parallel import sharding


def prepare_eval_batches(config, tokenizer, mesh) -> list:
    """The first `train.eval_batches` held-out batches, as global arrays on `mesh`."""
    B = config.train.batch_size
    batches = list(data.make_eval_batches(config, tokenizer, jax.process_index(),
                                          jax.process_count(),
                                          rows=sharding.host_rows(mesh, B)))
    n = int(config.train.eval_batches)
    if n > 0:
        batches = batches[:n]
    return [sharding.global_batch(b, mesh, B) for b in batches]


def evaluate(eval_fn, params, batches, mesh) -> dict:
    """Mean token loss over the eval batches (global arrays, or host numpy to be placed)."""
    sums = []
    for batch in batches:
        if not isinstance(batch["inputs"], jax.Array):
            batch = sharding.global_batch(batch, mesh)
        sums.append(eval_fn(params, batch))
    total = sum(float(s) for s, _ in jax.device_get(sums))
    count = sum(float(n) for _, n in jax.device_get(sums))
    if count == 0:
        raise UserError("the eval set is empty: check config.data.eval_split / holdout")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 80.0)), "tokens": int(count)}


def eval_metrics(result: dict, tokenizer_kind: str) -> dict:
    out = dict(result)
    if tokenizer_kind == "char":
        out["bits_per_char"] = result["loss"] / math.log(2)
    return out
