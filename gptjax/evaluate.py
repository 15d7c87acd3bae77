"""`gptjax eval --workdir DIR`: held-out loss, perplexity (and bits per character) of a saved run.

Uses the run's own config.json and tokenizer, the newest complete checkpoint (or --step), and
the same fixed eval batches training reports on, so the numbers match the training log.
"""

from __future__ import annotations

import json

import jax

from gptjax import checkpoint, sharding
from gptjax.config import apply_overrides
from gptjax.errors import UserError


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
    from gptjax import data, train
    config = checkpoint.read_config(workdir)
    rest = apply_overrides(config, list(overrides))
    if rest:
        raise UserError(f"unrecognised arguments: {' '.join(rest)}")
    if batches is not None:
        config.train.eval_batches = int(batches)
    mesh = inference_mesh(config)
    tokenizer = data.make_tokenizer(config, workdir)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise UserError(f"tokenizer in {workdir} has {tokenizer.vocab_size} tokens but "
                        f"config.model.vocab_size is {config.model.vocab_size}")
    params, step = checkpoint.load_params(workdir, config, mesh=mesh, step=step)
    _, shardings = train.abstract_train_state(config, mesh)
    eval_fn = train.make_eval_step(config, mesh, shardings.params)
    if quantize != "none":  # weight-only int8 (gptjax/quant.py)
        from gptjax import quant
        params, eval_fn = quant.quantize(params, quantize), quant.make_eval_step(config)
    with jax.set_mesh(mesh):
        eval_batches = train.prepare_eval_batches(config, tokenizer, mesh)
        result = train.evaluate(eval_fn, params, eval_batches, mesh)
    result = train.eval_metrics(result, config.data.tokenizer.kind)
    result["step"] = step
    return result


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="a training workdir")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step (default: the newest complete one)")
    parser.add_argument("--batches", type=int, default=None,
                        help="number of eval batches (default: config.train.eval_batches)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quantize", choices=("none", "int8"), default="none",
                        help="evaluate with int8 weights (gptjax/quant.py)")


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
