"""`gptjax trim`: a smaller model by dropping whole layers or unused vocabulary.

Layers: a layer's importance is how much the held-out loss rises when the model runs without it
(the residual stream skips it; every other weight unchanged). The `--drop-layers N` least
important go, and the rest keep their order: a config of num_layers - N.

Vocabulary: the tokens that occur in the run's train and eval splits stay, renumbered in their
old order; the embedding (and an untied head) keep only their rows / columns. Only character
tokenizers can be renumbered (a sentencepiece model's ids are fixed inside the model file).

    gptjax trim --workdir RUN --out RUN-l4 --drop-layers 2 [--recover-steps 200]
    gptjax trim --workdir RUN --out RUN-v --vocab
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from gptjax import checkpoint, data, steps, surgery
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import UserError
from gptjax.evaluate import evaluate, inference_mesh, prepare_eval_batches
from gptjax.state import model_config

# ----------------------------------------------------------------------------- layers


def without_layers(params, c, drop) -> tuple:
    """-> (params without the layers in `drop`, the GPTConfig they fit)."""
    rest, layers = surgery.split_layers(params, c)
    kept = [layer for i, layer in enumerate(layers) if i not in set(drop)]
    small = dataclasses.replace(c, num_layers=len(kept))
    return surgery.join_layers(rest, kept, small), small


def check_drop(n: int, c) -> None:
    if c.group_size > 1:
        raise UserError("dropping layers of a model with alternating local attention "
                        "(model.local_window > 0) would break its dense/local pattern")
    if not 0 <= n < c.num_layers:
        raise UserError(f"--drop-layers {n}: the model has {c.num_layers} layers; drop 0 to "
                        f"{c.num_layers - 1}")


def layer_importance(config, params, eval_batches: list, mesh) -> list[float]:
    """Per layer, the held-out loss without it minus the loss with all layers."""
    c = model_config(config)
    base_fn = steps.make_eval_step(config, mesh)
    base = evaluate(base_fn, params, eval_batches, mesh)["loss"]
    small_config = surgery.derived_config(config, num_layers=c.num_layers - 1)
    eval_fn = steps.make_eval_step(small_config, mesh)  # one program for every L-1 model
    return [evaluate(eval_fn, without_layers(params, c, [i])[0], eval_batches, mesh)["loss"]
            - base for i in range(c.num_layers)]


def drop_layers(config, params, n: int, importance: list[float]):
    """-> (config, params) without the `n` least important layers."""
    c = model_config(config)
    check_drop(n, c)
    drop = sorted(np.argsort(importance, kind="stable")[:n].tolist())
    params, small = without_layers(params, c, drop)
    return surgery.derived_config(config, num_layers=small.num_layers), params, drop


# ----------------------------------------------------------------------------- vocabulary


def used_tokens(config, tokenizer) -> np.ndarray:
    """Sorted ids that occur in the train and eval splits."""
    seen = np.zeros(tokenizer.vocab_size, bool)
    for split in (config.data.train_split, config.data.eval_split):
        if split:
            seen[np.unique(np.asarray(data.split_tokens(config, tokenizer, split)))] = True
    return np.flatnonzero(seen)


def trim_vocab(config, params, tokenizer, used: np.ndarray):
    """-> (config, params, tokenizer) with only the `used` ids, renumbered in order."""
    if not isinstance(tokenizer, CharTokenizer):
        raise UserError(f"--vocab needs a character tokenizer; this run's is {tokenizer.kind} "
                        f"(sentencepiece ids are fixed inside its model file)")
    has_eos = tokenizer.eos_id is not None and tokenizer.eos_id in set(used.tolist())
    chars = [tokenizer.chars[i] for i in used if i != tokenizer.eos_id]
    new_tok = CharTokenizer(chars, eos=has_eos)
    small = surgery.derived_config(config, vocab_size=new_tok.vocab_size)
    pad = model_config(small).padded_vocab - len(used)
    rows = np.concatenate([used, np.zeros(pad, used.dtype)])  # padding rows: never predicted
    params = dict(jax.device_get(params))
    params["wte"] = {"embedding": np.asarray(params["wte"]["embedding"])[rows]}
    if "head" in params:
        params["head"] = {"kernel": np.asarray(params["head"]["kernel"])[:, rows]}
    return small, params, new_tok


# ----------------------------------------------------------------------------- CLI


def add_args(parser):
    parser.add_argument("--workdir", required=True, help="the trained model to trim")
    parser.add_argument("--out", required=True, help="new workdir for the trimmed model")
    parser.add_argument("--drop-layers", type=int, default=0,
                        help="drop this many of the least important layers")
    parser.add_argument("--vocab", action="store_true",
                        help="keep only the tokens that occur in the data (char tokenizers)")
    parser.add_argument("--eval-batches", type=int, default=4,
                        help="held-out batches the layer importance is measured on")
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="then fine-tune this many steps on the training data")
    parser.add_argument("--recover-lr", type=float, default=1e-3)


def trim_workdir(args) -> str:
    if not (args.drop_layers or args.vocab):
        raise UserError("nothing to trim: give --drop-layers N and/or --vocab")
    config = checkpoint.read_config(args.workdir)
    config.train.eval_batches = int(args.eval_batches)
    mesh = inference_mesh(config)
    config, params, tokenizer, step = checkpoint.load_for_inference(args.workdir, mesh,
                                                                    config=config)
    done = []
    if args.drop_layers:
        check_drop(args.drop_layers, model_config(config))
        with jax.set_mesh(mesh):
            importance = layer_importance(config, params, prepare_eval_batches(
                config, tokenizer, mesh), mesh)
        config, params, drop = drop_layers(config, params, args.drop_layers, importance)
        done.append(f"dropped layers {drop} (held-out loss +" + ", +".join(
            f"{importance[i]:.4f}" for i in drop) + ")")
    if args.vocab:
        old = tokenizer.vocab_size
        config, params, tokenizer = trim_vocab(config, params, tokenizer,
                                               used_tokens(config, tokenizer))
        done.append(f"vocabulary {old} -> {tokenizer.vocab_size}")
    out = surgery.write_workdir(args.out, config, tokenizer, params, args.workdir, step)
    print(f"{'; '.join(done)} -> {out}")
    return out


def run(args):
    out = trim_workdir(args)
    if args.recover_steps > 0:
        print(surgery.recovered_line(surgery.recover(
            out, out.rstrip("/") + "-recovered", args.recover_steps, args.recover_lr, False)))
    return 0
