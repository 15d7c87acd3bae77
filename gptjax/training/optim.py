"""AdamW with GPT-3's recipe (Brown et al. 2020, Appendix B), built from Optax pieces.

    clip global grad norm to optim.grad_clip (1.0)
    Adam moments, betas (0.9, 0.95), eps 1e-8
    decoupled weight decay 0.1 -- only on matmul weights (see `decay_mask`)
    learning rate: linear warmup over warmup_steps, cosine decay to min_lr_ratio (10%) of peak

Weight-decay mask: decay applies to parameters with two or more dimensions *except* embeddings
(token `wte`, position `wpe`). Biases, LayerNorm scales/offsets (1-D) and embeddings are not
decayed, as in GPT-2/3 and nanoGPT: shrinking them towards zero only hurts. Scanned layers add
a leading layer axis, so the rule looks at the parameter's name and the trailing dimensions,
not at the raw ndim alone.

muP (`config.model.mup`, Yang et al. 2021, "Tensor Programs V", Table 3 for Adam): the hidden
matrices -- attention qkv and output projection, MLP in and out -- take the learning rate
lr / width_mult (width_mult = d_model / model.mup_base_width); embeddings, the readout, norms
and biases keep lr. With this (and the model's muP init), the best `optim.lr` found at one width
holds at the others. Decoupled weight decay is scaled with the learning rate, as in AdamW.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gptjax.errors import UserError

NO_DECAY_NAMES = ("bias", "scale", "wte", "wpe", "embedding")
HIDDEN_BLOCKS = ("attn", "mlp")  # modules whose kernels are muP's hidden (width x width) matrices


def schedule(optim_cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup to lr over warmup_steps, then cosine decay to lr * min_lr_ratio at
    decay_steps (default: train.steps); takes the number of finished steps."""
    o = optim_cfg
    decay_steps = int(o.decay_steps) or int(total_steps)
    warmup = int(o.warmup_steps)
    if warmup < 0 or o.lr <= 0:
        raise UserError(f"config.optim: lr={o.lr} must be > 0 and warmup_steps={warmup} >= 0")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise UserError(f"config.optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    warmup = min(warmup, max(decay_steps - 1, 0))
    inner = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=o.lr, warmup_steps=warmup,
        decay_steps=max(decay_steps, warmup + 1), end_value=o.lr * o.min_lr_ratio)
    # Optax counts updates from 0; step s (1-based) uses inner(s), so the first step already
    # moves (lr / warmup) and the peak is reached at step `warmup_steps`.
    return lambda count: inner(count + 1)


def _path_keys(path) -> list[str]:
    return [str(getattr(k, "key", getattr(k, "name", k))) for k in path]


def decay_mask(params):
    """True where weight decay applies: matmul kernels; False for biases, norms, embeddings."""
    def one(path, leaf):
        names = _path_keys(path)
        if any(n in NO_DECAY_NAMES for n in names):
            return False
        return names[-1] == "kernel" or leaf.ndim >= 2
    return jax.tree_util.tree_map_with_path(one, params)


def mup_hidden_mask(params):
    """True for the kernels of attention and MLP: the matrices muP gives lr / width_mult."""
    def one(path, leaf):
        names = _path_keys(path)
        return names[-1] == "kernel" and any(n in HIDDEN_BLOCKS for n in names)
    return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(config) -> optax.GradientTransformation:
    o = config.optim
    if o.state_dtype not in ("float32", "bfloat16"):
        raise UserError(f"config.optim.state_dtype={o.state_dtype!r}: choose float32 or bfloat16")
    parts = []
    if o.grad_clip and o.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(o.grad_clip))
    parts += [
        optax.scale_by_adam(b1=o.b1, b2=o.b2, eps=o.eps, mu_dtype=jnp.dtype(o.state_dtype)),
        optax.add_decayed_weights(o.weight_decay, mask=decay_mask),
        optax.scale_by_learning_rate(schedule(o, config.train.steps)),
    ]
    if config.model.mup:
        width_mult = config.model.d_model / config.model.mup_base_width
        parts.append(optax.masked(optax.scale(1.0 / width_mult), mup_hidden_mask))
    return optax.chain(*parts)


def _is_schedule_state(x) -> bool:
    return isinstance(x, optax.ScaleByScheduleState)


def keep_finite(finite, new_state, old_state):
    """The optimizer state after a step whose update is kept only if `finite`: a dropped step
    keeps the old Adam moments (and Adam's count, which bias-corrects them) but advances the
    learning-rate schedule's count, so the schedule follows the step number (and the data):
    after k skips the run still ends at the end of its cosine, and step s always uses lr(s)."""
    def one(new, old):
        return new if _is_schedule_state(new) else jnp.where(finite, new, old)
    return jax.tree.map(one, new_state, old_state, is_leaf=_is_schedule_state)


def schedule_count(opt_state, default):
    """The count the learning-rate schedule applies at the next update (`default` if the
    optimizer has no schedule state): what the logged learning rate is computed from."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_state)
             if _is_schedule_state(s)]
    return found[0].count if found else default
