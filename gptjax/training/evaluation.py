"""Held-out loss on the run's fixed eval batches: the training loop's eval hook and
`evaluate_workdir` behind `gptjax eval --workdir DIR`.

It uses the run's own config.json and tokenizer, the newest complete checkpoint (or
--step), and the same eval batches training reports on, so the numbers match the training log.
"""

from __future__ import annotations

import math

import jax

from gptjax import data
from gptjax.config.loader import apply_overrides
from gptjax.errors import UserError
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPT
from gptjax.parallel import sharding
from gptjax.training import steps
from gptjax.training.state import model_config
from gptjax.workdir import open_run, read_config


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


def inference_mesh(config):
    """The run's mesh when it fits this machine, else pure data parallel over all devices."""
    try:
        mesh = sharding.make_mesh(config.mesh)
        sharding.check_config(config, mesh)
        return mesh
    except UserError:
        config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
        return sharding.make_mesh(config.mesh)


def evaluate_workdir(workdir: str, overrides=(), step: int | None = None,
                     batches: int | None = None, quantize: str = "none") -> dict:
    config = read_config(workdir)
    rest = apply_overrides(config, list(overrides))
    if rest:
        raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    if batches is not None:
        config.train.eval_batches = int(batches)
    mesh = inference_mesh(config)
    config, params, tokenizer, step = open_run(workdir, mesh, step, config)
    if quantize != "none" or quant.is_quantized(params):  # dequantised inside the step
        model, params = quant.prepare(GPT(model_config(config)), params, quantize)
        eval_fn = steps.make_eval_step(config, mesh, None, model, params_transform=lambda p: (
            quant.dequantize(p, model_config(config).dtype)))
    else:
        eval_fn = steps.make_eval_step(config, mesh, jax.tree.map(lambda x: x.sharding, params))
    with jax.set_mesh(mesh):
        result = evaluate(eval_fn, params, prepare_eval_batches(config, tokenizer, mesh), mesh)
    return {**eval_metrics(result, config.data.tokenizer.kind), "step": step}
