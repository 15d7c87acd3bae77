"""Trimming (`gptjax trim`): a smaller model by dropping whole layers or unused vocabulary.

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

import copy
import dataclasses
from typing import NamedTuple

import jax
import numpy as np

from gptjax import data
from gptjax.compression import surgery
from gptjax.data.tokenizer import CharTokenizer
from gptjax.errors import UserError
from gptjax.parallel.sharding import inference_mesh
from gptjax.training import steps
from gptjax.training.evaluation import evaluate, prepare_eval_batches
from gptjax.training.state import model_config
from gptjax.workdir import open_run, read_config

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


def drop_least_important(config, params, n: int, importance: list[float]):
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


# ----------------------------------------------------------------------------- workdirs


class Trimmed(NamedTuple):
    """A trimmed workdir: where it is, the layers dropped (with the rise in held-out loss
    each one's removal alone causes) and, when it was trimmed, the vocabulary (before, after)."""
    out: str
    dropped: list[int]
    importance: list[float]   # per layer of the source (empty when no layer was dropped)
    vocab: tuple[int, int] | None


def held_out_batches(config, tokenizer, mesh, n: int) -> list:
    """The first `n` held-out batches of the run (0 = all): the batches `gptjax eval
    --batches n` and the compression report's `--eval-batches n` score on. `config` itself is
    left as it is (its train.eval_batches stays the run's)."""
    scored = copy.deepcopy(config)
    scored.train.eval_batches = int(n)
    return prepare_eval_batches(scored, tokenizer, mesh)


def trim_workdir(workdir: str, out: str, drop_layers: int = 0, vocab: bool = False,
                 eval_batches: int = 4) -> Trimmed:
    """Trims `workdir` into the new workdir `out`: the `drop_layers` least important layers
    (importance measured on the first `eval_batches` held-out batches) dropped, and / or
    (`vocab`) the tokens the data never uses. The new run's config keeps the source's
    train settings (train.eval_batches included)."""
    if not (drop_layers or vocab):
        raise UserError("nothing to trim: give --drop-layers N and/or --vocab")
    config = read_config(workdir)
    mesh = inference_mesh(config)
    config, params, tokenizer, step = open_run(workdir, mesh, config=config)
    dropped, importance, sizes = [], [], None
    if drop_layers:
        check_drop(drop_layers, model_config(config))
        with jax.set_mesh(mesh):
            importance = layer_importance(config, params, held_out_batches(
                config, tokenizer, mesh, eval_batches), mesh)
        config, params, dropped = drop_least_important(config, params, drop_layers, importance)
    if vocab:
        old = tokenizer.vocab_size
        config, params, tokenizer = trim_vocab(config, params, tokenizer,
                                               used_tokens(config, tokenizer))
        sizes = (old, tokenizer.vocab_size)
    out = surgery.write_model(out, config, tokenizer, params, workdir, step)
    return Trimmed(out, dropped, importance, sizes)


def trimmed_line(t: Trimmed) -> str:
    done = []
    if t.dropped:
        done.append(f"dropped layers {t.dropped} (held-out loss +" + ", +".join(
            f"{t.importance[i]:.4f}" for i in t.dropped) + ")")
    if t.vocab is not None:
        done.append(f"vocabulary {t.vocab[0]} -> {t.vocab[1]}")
    return f"{'; '.join(done)} -> {t.out}"
