"""Held-out loss on the run's fixed eval batches: the training loop's eval hook and
`gptjax eval --workdir DIR`.

The command uses the run's own config.json and tokenizer, the newest complete checkpoint (or
--step), and the same eval batches training reports on, so the numbers match the training log.
"""

from __future__ import annotations

import json
import math

import jax

from gptjax import checkpoint, data, quant, sharding, steps
from gptjax.config import apply_overrides
from gptjax.errors import UserError
from gptjax.model import GPT
from gptjax.state import model_config

APPLIES_OVERRIDES = True  # e.g. --config.train.eval_batches=50 on the saved config


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
    config = checkpoint.read_config(workdir)
    rest = apply_overrides(config, list(overrides))
    if rest:
        raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    if batches is not None:
        config.train.eval_batches = int(batches)
    mesh = inference_mesh(config)
    config, params, tokenizer, step = checkpoint.load_for_inference(workdir, mesh, step, config)
    if quantize != "none" or quant.is_quantized(params):  # dequantised inside the step
        model, params = quant.prepare(GPT(model_config(config)), params, quantize)
        eval_fn = steps.make_eval_step(config, mesh, None, model, params_transform=lambda p: (
            quant.dequantize(p, model_config(config).dtype)))
    else:
        eval_fn = steps.make_eval_step(config, mesh, jax.tree.map(lambda x: x.sharding, params))
    with jax.set_mesh(mesh):
        result = evaluate(eval_fn, params, prepare_eval_batches(config, tokenizer, mesh), mesh)
    return {**eval_metrics(result, config.data.tokenizer.kind), "step": step}


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the newest complete one)")
    parser.add_argument("--batches", type=int, default=None,
                        help="number of eval batches (default: config.train.eval_batches)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quantize", choices=quant.MODES, default="none",
                        help="evaluate quantized: int8 / int4 weight-only, w8a8 int8 weights "
                             "and activations (gptjax/quant.py)")


def run(args):
    result = evaluate_workdir(args.workdir, args.overrides, args.step, args.batches,
                              args.quantize)
    if args.json:
        print(json.dumps(result))
        return 0
    line = (f"step {result['step']}: eval loss {result['loss']:.4f}, perplexity "
            f"{result['perplexity']:.3f} over {result['tokens']:,} tokens")
    if "bits_per_char" in result:
        line += f", {result['bits_per_char']:.4f} bits/char"
    print(line)
    return 0
