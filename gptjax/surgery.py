"""What pruning, trimming, quantization and distillation share: per-layer views of the params,
derived models written as ordinary workdirs, and the recovery fine-tune.

    rest, layers = split_layers(params, c)       # [{'attn': ..., 'mlp': ..., 'ln1': ...}, ...]
    params = join_layers(rest, layers, c_new)    # back into c_new's layout (scanned or not)
    write_workdir(out, config, tokenizer, params, source=workdir)  # sample / eval / ... load it
    train(config, out, Continued(src, masked=True))   # the recovery fine-tune

A derived workdir holds config.json (its new model section), the tokenizer and one checkpoint
(the params, a fresh optimizer state, the source's data position), so every command that reads
a workdir reads it, and `Continued` trains on from it.
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gptjax import checkpoint, data, paths, sharding, steps
from gptjax.data import store
from gptjax.errors import UserError
from gptjax.evaluate import prepare_eval_batches
from gptjax.layouts import layers_to_scanned, scanned_to_layers
from gptjax.model import GPTConfig
from gptjax.state import model_config, state_from_params
from gptjax.train import RunData, prepare_workdir, train

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


def source_data_state(workdir: str, step: int) -> dict:
    """The input position saved with `workdir`'s checkpoint `step` (this process's)."""
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
    try:
        out = ckpt.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))
        return dict(out["data"])
    except FileNotFoundError:
        return {}
    finally:
        ckpt.close()


def start_workdir(out: str, config, tokenizer, source: str | None = None) -> str:
    """Creates `out` (which must hold no run yet) with config.json and the tokenizer; its data
    cache is the source run's (the tokenized splits are reused, not tokenized again)."""
    out = prepare_workdir(out)
    if paths.exists(paths.join(out, checkpoint.CONFIG_FILE)):
        raise UserError(f"--out {out} already holds a run; choose a new directory")
    if source and not config.data.cache_dir:
        config.data.cache_dir = store.cache_root(config, source)
    checkpoint.write_config(out, config)
    if hasattr(tokenizer, "save"):
        tokenizer.save(out)
    return out


def inherited_batches(config, tokenizer, workdir: str, mesh):
    """Training batches for a run that takes its data and tokenizer from another workdir
    (distillation, recovery fine-tunes): the tokenizer is saved in `workdir` by process 0."""
    if jax.process_index() == 0 and hasattr(tokenizer, "save"):
        tokenizer.save(workdir)
    return data.make_train_iter(config, tokenizer, jax.process_index(), jax.process_count(),
                                rows=sharding.host_rows(mesh, config.train.batch_size))


def write_workdir(out: str, config, tokenizer, params, source: str | None = None,
                  step: int = 0) -> str:
    """Writes a derived model (params of `config.model`'s shapes) as a workdir; -> its path."""
    out = start_workdir(out, config, tokenizer, source)
    mesh = sharding.single_device_mesh()
    state = state_from_params(config, mesh, params)
    data_state = source_data_state(source, step) if source else {}
    ckpt = checkpoint.Checkpointer(out, keep=0, async_save=False)
    ckpt.save(step, state, data_state, config.to_dict())
    ckpt.close()
    return out


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
    loss = steps.make_loss(config)
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
        start = checkpoint.load_for_inference(self.init_from, mesh=mesh)
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
    config = short_run(checkpoint.read_config(source), steps, lr)
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
