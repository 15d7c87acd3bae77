"""What pruning, trimming, quantization and distillation share: per-layer views of the params,
derived models written as ordinary workdirs, and the recovery fine-tune.

    rest, layers = split_layers(params, c)       # [{'attn': ..., 'mlp': ..., 'ln1': ...}, ...]
    params = join_layers(rest, layers, c_new)    # back into c_new's layout (scanned or not)
    write_model(out, config, tokenizer, params, source=workdir)  # sample / eval / ... load it
    quantize_workdir(workdir, out, mode="int4")  # quantized.npz instead of a checkpoint
    train(config, out, Continued(src, masked=True))   # the recovery fine-tune

A derived workdir holds config.json (its new model section), the tokenizer and one checkpoint
(the params, a fresh optimizer state, the source's data position), so every command that reads
a workdir reads it, and `Continued` trains on from it.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import data
from gptjax.errors import UserError
from gptjax.inference import quantization
from gptjax.model.gpt import GPTConfig
from gptjax.model.layouts import layers_to_scanned, scanned_to_layers
from gptjax.parallel import sharding
from gptjax.storage import paths, quantized
from gptjax.training import steps
from gptjax.training.evaluation import prepare_eval_batches
from gptjax.training.loss import make_loss
from gptjax.training.recipes import RunData, inherited_batches
from gptjax.training.state import model_config, state_from_params
from gptjax.training.train import train
from gptjax.workdir import open_run, read_config, start_derived, write_derived

# ----------------------------------------------------------------------------- layers


def split_layers(params, c: GPTConfig):
    """-> (the params outside the blocks, one dict per layer in order)."""
    flat = scanned_to_layers(params, c) if c.scan_layers else dict(params)
    layers = [flat.pop(f"layer_{i}") for i in range(c.num_layers)]
    return flat, layers


def join_layers(rest: dict, layers: list, c: GPTConfig):
    """Inverse of `split_layers` for a config of len(layers) layers."""
    if len(layers) != c.num_layers:
        raise ValueError(f"{len(layers)} layers for a config of {c.num_layers}")
    flat = dict(rest, **{f"layer_{i}": layer for i, layer in enumerate(layers)})
    return layers_to_scanned(flat, c) if c.scan_layers else flat


def prunable(path) -> bool:
    """The matmul weights inside the blocks: what pruning scores and masks."""
    names = [str(getattr(k, "key", k)) for k in path]
    return names[-1] == "kernel" and any(n.startswith("layer") for n in names)


# ----------------------------------------------------------------------------- workdirs


def write_model(out: str, config, tokenizer, params, source: str | None = None,
                step: int = 0) -> str:
    """Writes a derived model (params of `config.model`'s shapes, a fresh optimizer state) as a
    new workdir (gptjax/workdir.py's `write_derived`); -> its path."""
    state = state_from_params(config, sharding.single_device_mesh(), params)
    return write_derived(out, config, tokenizer, state, source, step)


class Quantized(NamedTuple):
    """What `quantize_workdir` wrote: the weights file, its mode and sizes."""
    path: str
    mode: str
    weight_bytes: int
    float_bytes: int


def quantize_workdir(workdir: str, out: str, mode: str = "int8", group: int | None = None,
                     step: int | None = None) -> Quantized:
    """An int8 / int4 weight-only copy of `workdir` (its newest or given checkpoint) as a new
    workdir `out` holding quantized.npz instead of checkpoints (`gptjax quantize`)."""
    config, params, tokenizer, step = open_run(workdir, step=step)
    q = quantization.quantize(params, mode, group)
    out = start_derived(out, config, tokenizer, source=workdir)
    group = quantization.DEFAULT_GROUP[mode] if group is None else group
    path = quantized.save(out, q, {"mode": mode, "group": group, "step": step,
                                   "source": paths.resolve(workdir)})
    return Quantized(path, mode, quantization.weight_bytes(q), quantization.weight_bytes(params))


def quantized_line(q: Quantized) -> str:
    return (f"{q.mode} weights ({q.weight_bytes / 1e6:.2f} MB, float "
            f"{q.float_bytes / 1e6:.2f} MB) -> {q.path}")


def derived_config(config, **model_changes):
    """A deep copy of `config` with model keys replaced; checks the new model is valid."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.model.update(model_changes)
    model_config(config)
    return config


# ----------------------------------------------------------------------------- calibration


def calibration_batches(config, tokenizer, n: int) -> list[dict]:
    """The first `n` training batches (host numpy): what importance scores are measured on."""
    if n < 1:
        raise UserError(f"--calibration-batches {n} must be >= 1")
    it = data.make_train_iter(config, tokenizer)
    try:
        return [next(it) for _ in range(n)]
    finally:
        if hasattr(it, "close"):
            it.close()


def mean_grads(config, params, batches: list[dict]):
    """Mean gradient of the next-token loss over `batches` (first-order importance)."""
    loss = make_loss(config)
    grad_fn = jax.jit(jax.grad(lambda p, b: loss(p, b)[0]))
    total = None
    for b in batches:
        g = grad_fn(params, {k: jnp.asarray(v) for k, v in b.items()})
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    return jax.tree.map(lambda g: g / len(batches), total)


# ----------------------------------------------------------------------------- recovery


def masks_from_zeros(params):
    """1 where a prunable weight is non-zero, 0 where pruning zeroed it (other leaves: 1)."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: (x != 0).astype(x.dtype) if prunable(p) else jnp.ones((), x.dtype), params)


def apply_masks(params, masks):
    return jax.tree.map(lambda x, m: x * m, params, masks)


def masked_objective(config, model, param_shardings):
    """loss_and_grads through the masks: pruned weights get zero gradient (and, with AdamW's
    zero moments and decoupled decay of a zero weight, a zero update), so they stay zero."""
    def loss_and_grads(params, batch, key, masks):
        inner = steps.make_loss_and_grads(config, model, param_shardings,
                                          params_transform=lambda p: apply_masks(p, masks))
        return inner(params, batch, key)
    return loss_and_grads


class Continued:
    """Next-token training on the start workdir's own data, from its params: the recovery
    fine-tune of a pruned / trimmed model. masked=True keeps its zeroed weights at zero."""

    def __init__(self, init_from: str, masked: bool = False):
        self.init_from, self.masked = init_from, masked

    def prepare(self, config, workdir: str, mesh) -> RunData:
        start = open_run(self.init_from, mesh=mesh)
        config.model = copy.deepcopy(start.config.model)
        config.data = copy.deepcopy(start.config.data)
        tokenizer = start.tokenizer
        batches = inherited_batches(config, tokenizer, workdir, mesh)
        params = start.params
        masks = masks_from_zeros(params) if self.masked else None
        kept = "" if masks is None else f", {sparsity(params):.0%} of block weights pruned"
        return RunData(
            config, tokenizer, batches, lambda: prepare_eval_batches(config, tokenizer, mesh),
            lambda cfg, mesh, model, tx, sh: state_from_params(cfg, mesh, params, tx, sh),
            describe=f" (recovery from {self.init_from}{kept})", eval_first=True,
            objective=masked_objective if self.masked else None,
            frozen=None if masks is None else jax.tree.map(
                lambda m, p: jax.device_put(m, p.sharding if m.shape == p.shape
                                            else sharding.replicated(mesh)), masks, params))


def sparsity(params) -> float:
    """Fraction of exactly-zero weights among the prunable ones."""
    leaves = [x for p, x in jax.tree_util.tree_flatten_with_path(params)[0] if prunable(p)]
    zeros = sum(int(np.sum(np.asarray(x) == 0)) for x in leaves)
    return zeros / max(1, sum(x.size for x in leaves))


def recover(source: str, out: str, steps: int, lr: float, masked: bool) -> dict:
    """A short recovery fine-tune of workdir `source` into `out` (train's result dict): its
    own config and data, `steps` steps at peak `lr`, evaluated before and after."""
    config = short_run(read_config(source), steps, lr)
    return train(config, out, Continued(source, masked=masked))


def short_run(config, steps: int, lr: float | None = None):
    """`config` set for a short run of `steps` steps (recovery, the report's distillation):
    evaluated and checkpointed at the end, warmup a tenth, cosine over the run."""
    tr = config.train
    tr.steps, tr.eval_every, tr.ckpt_every, tr.plot = int(steps), 0, int(steps), False
    tr.log_every = max(1, min(int(tr.log_every), int(steps)))
    if lr is not None:
        config.optim.lr = float(lr)
    config.optim.decay_steps = 0
    config.optim.warmup_steps = max(1, int(steps) // 10)
    return config


def recovered_line(r: dict) -> str:
    return (f"recovered: {r['step']} steps, held-out loss {r.get('eval_start_loss', np.nan):.4f}"
            f" -> {r.get('eval_loss', np.nan):.4f} -> {r['workdir']}")
