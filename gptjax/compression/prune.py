"""Pruning (`gptjax prune`): remove weights (unstructured), attention heads or MLP neurons
(structured).

Every weight gets a score: its magnitude |w|, or the first-order estimate |w · ∂L/∂w| of how
much the loss changes when it is set to zero (the gradient averaged over calibration batches
of the training data). A head's score is the sum over its qkv columns (and biases) and its
rows of the output projection; a neuron's over its column of mlp/fc and its row of mlp/proj.

    unstructured: the lowest-scoring block matmul weights are set to zero, to `sparsity` of all
                  of them (scope global) or of each matrix of each layer (scope layer); the
                  model keeps its shapes, and the recovery fine-tune keeps the zeros at zero
                  (masks applied inside the step: gptjax/compression/surgery.py `Continued`)
    structured:   each layer drops its own lowest-scoring heads / neurons (the same number in
                  every layer, as the layers share one shape); the result is a genuinely
                  smaller model: num_heads or d_ff shrink in its config.json

    gptjax prune --workdir RUN --out RUN-s50 --sparsity 0.5 [--scope layer]
    gptjax prune --workdir RUN --out RUN-h25 --heads 0.25 --neurons 0.25 --score first_order \
        --recover-steps 200
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import numpy as np

from gptjax.compression import surgery
from gptjax.errors import UserError
from gptjax.training.state import model_config
from gptjax.workdir import open_run

SCORES = ("magnitude", "first_order")
SCOPES = ("global", "layer")
# Per layer: (module path, parameter, axis of the head / neuron index) of the pruned groups.
GROUPS = {
    "heads": [(("attn", "qkv"), "kernel", 2), (("attn", "qkv"), "bias", 1),
              (("attn", "proj"), "kernel", 0)],
    "neurons": [(("mlp", "fc"), "kernel", 1), (("mlp", "fc"), "bias", 0),
                (("mlp", "proj"), "kernel", 0)],
}
SIZE_KEY = {"heads": "num_heads", "neurons": "d_ff"}
KERNELS = [m for kind in GROUPS.values() for m, name, _ in kind if name == "kernel"]


def check_sparsity(sparsity: float) -> float:
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"--sparsity {sparsity}: choose a fraction in [0, 1)")
    return float(sparsity)


def removal_count(amount: float, total: int, what: str) -> int:
    """--heads / --neurons: a fraction in [0, 1) of each layer's, or a count >= 1."""
    if amount < 0 or (amount >= 1 and amount != int(amount)):
        raise UserError(f"--{what} {amount}: give a fraction in [0, 1) or a whole count")
    n = int(round(amount * total)) if amount < 1 else int(amount)
    if n >= total:
        raise UserError(f"--{what} {amount}: removing {n} of the {total} {what} of each layer "
                        f"leaves none; remove fewer")
    return n


# ----------------------------------------------------------------------------- scores


def weight_scores(params, method: str = "magnitude", grads=None):
    """|w| or |w · g| for every parameter (float32 numpy)."""
    if method not in SCORES:
        raise UserError(f"--score {method!r}: choose one of {', '.join(SCORES)}")
    if method == "magnitude":
        return jax.tree.map(lambda w: np.abs(np.asarray(w, np.float32)), params)
    if grads is None:
        raise ValueError("first_order scores need the gradients")
    return jax.tree.map(lambda w, g: np.abs(np.asarray(w, np.float32) * np.asarray(g)),
                        params, grads)


def scores_for(config, params, tokenizer, method: str, calibration_batches: int = 8):
    """Scores of a loaded model; first_order measures gradients on training batches."""
    grads = None
    if method == "first_order":
        batches = surgery.calibration_batches(config, tokenizer, calibration_batches)
        grads = surgery.mean_grads(config, params, batches)
    return weight_scores(params, method, grads)


def _module(layer: dict, module: tuple[str, ...]):
    for key in module:
        layer = layer.get(key, {}) if isinstance(layer, dict) else {}
    return layer


def group_scores(layer_scores: dict, kind: str) -> np.ndarray:
    """One layer's weight scores -> a score per head / neuron (summed over its weights)."""
    total = 0.0
    for module, name, axis in GROUPS[kind]:
        s = _module(layer_scores, module).get(name)
        if s is not None:
            s = np.asarray(s)
            total = total + s.sum(axis=tuple(a for a in range(s.ndim) if a != axis))
    return total


# ----------------------------------------------------------------------------- unstructured


def _lowest(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask (scores' shape) of the round(fraction * size) lowest scores."""
    k = int(round(fraction * scores.size))
    out = np.zeros(scores.size, bool)
    if k:
        out[np.argpartition(scores.reshape(-1), k - 1)[:k]] = True
    return out.reshape(scores.shape)


def unstructured(params, c, scores, sparsity: float, scope: str = "global"):
    """Zeroes the lowest-scoring `sparsity` of the block matmul weights; -> params."""
    check_sparsity(sparsity)
    if scope not in SCOPES:
        raise UserError(f"--scope {scope!r}: choose one of {', '.join(SCOPES)}")
    rest, layers = surgery.split_layers(jax.device_get(params), c)
    _, s_layers = surgery.split_layers(scores, c)
    places = [(i, m, "kernel") for i in range(len(layers)) for m in KERNELS]
    get = lambda tree, m, n: _module(tree, m)[n]  # noqa: E731
    if scope == "global":
        flat = np.concatenate([get(s_layers[i], m, n).reshape(-1) for i, m, n in places])
        cut = _lowest(flat, sparsity)
        offsets = np.cumsum([0] + [get(s_layers[i], m, n).size for i, m, n in places])
        drops = [cut[a:b].reshape(get(s_layers[i], m, n).shape)
                 for (i, m, n), a, b in zip(places, offsets[:-1], offsets[1:], strict=True)]
    else:
        drops = [_lowest(get(s_layers[i], m, n), sparsity) for i, m, n in places]
    layers = [jax.tree.map(np.asarray, layer) for layer in layers]
    for (i, m, n), drop in zip(places, drops, strict=True):
        module = _module(layers[i], m)
        module[n] = np.where(drop, 0, module[n]).astype(module[n].dtype)
    return surgery.join_layers(rest, layers, c)


# ----------------------------------------------------------------------------- structured


def _select(layer: dict, kind: str, keep: np.ndarray, size: int, slice_: bool) -> dict:
    """One layer with only the `keep` heads / neurons: sliced away, or zeroed (slice_=False)."""
    layer = jax.tree.map(np.asarray, layer)
    for module, name, axis in GROUPS[kind]:
        params = _module(layer, module)
        if name not in params:
            continue
        w = params[name]
        if slice_:
            params[name] = np.take(w, keep, axis=axis)
        else:
            on = np.zeros(size, w.dtype)
            on[keep] = 1
            params[name] = w * on.reshape([-1 if a == axis else 1 for a in range(w.ndim)])
    return layer


def choose(scores, c, kind: str, amount: float) -> list[np.ndarray]:
    """Per layer, the sorted indices of the heads / neurons kept."""
    total = getattr(c, SIZE_KEY[kind])
    n = removal_count(amount, total, kind)
    _, s_layers = surgery.split_layers(scores, c)
    return [np.sort(np.argsort(group_scores(s, kind), kind="stable")[n:]) for s in s_layers]


def remove(params, c, kind: str, keep: list[np.ndarray], slice_: bool = True):
    """-> params without (slice_) or with zeroed (masked) heads / neurons not in `keep`."""
    rest, layers = surgery.split_layers(jax.device_get(params), c)
    size = getattr(c, SIZE_KEY[kind])
    layers = [_select(layer, kind, k, size, slice_) for layer, k in zip(layers, keep, strict=True)]
    if slice_:
        c = dataclasses.replace(c, **{SIZE_KEY[kind]: len(keep[0])})
    return surgery.join_layers(rest, layers, c)


def structured(config, params, scores, kind: str, amount: float):
    """-> (smaller config, its params, scores sliced alike) without `amount` heads / neurons."""
    c = model_config(config)
    keep = choose(scores, c, kind, amount)
    new_config = surgery.derived_config(config, **{SIZE_KEY[kind]: len(keep[0])})
    return (new_config, remove(params, c, kind, keep), remove(scores, c, kind, keep))


# ----------------------------------------------------------------------------- workdirs


class Pruned(NamedTuple):
    """A pruned workdir: where it is, whether recovery must hold its zeros (unstructured), and
    its shape."""
    out: str
    masked: bool
    num_heads: int
    d_ff: int
    zeros: float  # fraction of the block matmul weights that are zero


def prune_workdir(workdir: str, out: str, sparsity: float = 0.0, scope: str = "global",
                  heads: float = 0.0, neurons: float = 0.0, score: str = "magnitude",
                  calibration_batches: int = 8) -> Pruned:
    """Prunes `workdir` into the new workdir `out`: `heads` / `neurons` removed from each layer
    (a fraction or a count), then `sparsity` of the block weights zeroed (scope global or
    layer), all by `score` (first_order: gradients over `calibration_batches`)."""
    check_sparsity(sparsity)
    if not (sparsity or heads or neurons):
        raise UserError("nothing to prune: give --sparsity, --heads and/or --neurons")
    config, params, tokenizer, step = open_run(workdir)
    scores = scores_for(config, params, tokenizer, score, calibration_batches)
    for kind, amount in (("heads", heads), ("neurons", neurons)):
        if amount:
            config, params, scores = structured(config, params, scores, kind, amount)
    if sparsity:
        params = unstructured(params, model_config(config), scores, sparsity, scope)
    out = surgery.write_model(out, config, tokenizer, params, workdir, step)
    c = model_config(config)
    return Pruned(out, bool(sparsity), c.num_heads, c.d_ff, surgery.sparsity(params))


def pruned_line(p: Pruned) -> str:
    return (f"pruned ({p.num_heads} heads, d_ff {p.d_ff}, {p.zeros:.1%} of block weights "
            f"zero) -> {p.out}")
