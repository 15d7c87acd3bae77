"""What a model costs: parameters, training FLOPs per token and bytes of state, in closed form.

The one formula behind `gptjax info`, `plan`, `bench`, the sweeps and the training logs.
FLOPs per token follow nanoGPT / PaLM: 6·N + 12·L·H·Q·T, where N counts the parameters that
take part in matmuls (all but the position embeddings, and but the input embedding when the
output head is untied), L layers, H heads, Q head_dim, T the sequence length. The 6·N term is
forward (2) + backward (4) of every weight; the second term is attention's QK^T and AV.
`tests/test_model.py` checks the count against the parameters `gptjax.model.gpt.GPT` creates.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

from gptjax.model.gpt import GPTConfig


def as_gpt_config(model) -> GPTConfig:
    """A GPTConfig from itself, a `config.model` section or a plain dict of its fields."""
    return model if isinstance(model, GPTConfig) else GPTConfig.from_config(model, backend="cpu")


def param_counts(model: GPTConfig | Mapping) -> dict:
    """-> params (all), non_embedding_params (Kaplan's N), flops_params (the N of 6·N)."""
    c = as_gpt_config(model)
    d, ff, inner, b = c.d_model, c.d_ff, c.num_heads * c.head_dim, int(c.use_bias)
    layer = (d * 3 * inner + b * 3 * inner + inner * d + b * d      # attention
             + d * ff + b * ff + ff * d + b * d                     # MLP
             + 2 * (d + b * d))                                     # two LayerNorms
    non_embedding = c.num_layers * layer + d + b * d                # + final LayerNorm
    wte = c.padded_vocab * d
    wpe = c.max_seq_len * d if c.position == "learned" else 0
    head = 0 if c.tie_embeddings else wte
    total = non_embedding + wte + head + wpe
    return {"params": total, "non_embedding_params": non_embedding,
            "flops_params": total - wpe - head}


def flops_per_token(model: GPTConfig | Mapping, seq_len: int) -> int:
    """Training FLOPs per token: 6·N_matmul + 12·L·H·Q·T."""
    c = as_gpt_config(model)
    attn = 12 * c.num_layers * c.num_heads * c.head_dim * seq_len
    return 6 * param_counts(c)["flops_params"] + attn


def model_stats(model: GPTConfig | Mapping, seq_len: int | None = None,
                optimizer_bytes: int | None = None) -> dict:
    """Counts, FLOPs per token and the bytes of params and gradients; with `optimizer_bytes`
    (the optimizer state's size, from its real state tree: `training.state.optimizer_state_bytes`)
    also the Adam state and params + Adam state."""
    c = as_gpt_config(model)
    counts = param_counts(c)
    seq_len = seq_len or c.max_seq_len
    param_bytes = counts["params"] * jnp.dtype(c.param_dtype).itemsize
    stats = {**counts, "seq_len": seq_len, "flops_per_token": flops_per_token(c, seq_len),
             "param_bytes": param_bytes, "grad_bytes": param_bytes}
    if optimizer_bytes is not None:
        stats.update(adam_state_bytes=int(optimizer_bytes),
                     params_plus_adam_bytes=param_bytes + int(optimizer_bytes))
    return stats
