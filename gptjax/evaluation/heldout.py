"""Held-out loss of a finished run (`gptjax eval --workdir DIR`): the run's own config.json and
tokenizer, its newest complete checkpoint (or `step`), and the same eval batches training
reported on (gptjax/training/evaluation.py), so the numbers match the training log; quantized
(int8 / int4 / w8a8) on request, or when the workdir is a `gptjax quantize` output.
"""

from __future__ import annotations

import jax

from gptjax.config.loader import apply_overrides
from gptjax.errors import UserError
from gptjax.inference import quantization as quant
from gptjax.model.gpt import GPT
from gptjax.parallel.sharding import inference_mesh
from gptjax.training import steps
from gptjax.training.evaluation import eval_metrics, evaluate, prepare_eval_batches
from gptjax.training.state import model_config
from gptjax.workdir import open_run, read_config


def evaluate_workdir(workdir: str, overrides=(), step: int | None = None,
                     batches: int | None = None, quantize: str = "none") -> dict:
    """-> {loss, perplexity, tokens, (bits_per_char,) step} of `workdir`; `overrides`:
    `--config.KEY=VALUE` strings applied to its saved config."""
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
