"""What a config costs: parameters, training FLOPs per token, bytes of state.

FLOPs per token follow nanoGPT / PaLM: 6·N + 12·L·H·Q·T, where N counts the parameters that
take part in matmuls (all but the position embeddings, and but the input embedding when the
output head is untied), L layers, H heads, Q head_dim, T the sequence length. The 6·N term is
forward (2) + backward (4) of every weight; the second term is attention's QK^T and AV.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gptjax.model import GPT, GPTConfig


def abstract_params(c: GPTConfig):
    """Parameter shapes via `jax.eval_shape`: nothing is allocated, even for 175B."""
    tokens = jax.ShapeDtypeStruct((1, min(c.max_seq_len, 8)), jnp.int32)
    variables = jax.eval_shape(lambda t: GPT(c).init(jax.random.key(0), t), tokens)
    return nn.unbox(variables["params"])


def _size(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def closed_form_params(c: GPTConfig) -> int:
    """Parameter count from the architecture, without building anything."""
    d, ff, inner = c.d_model, c.d_ff, c.num_heads * c.head_dim
    b = int(c.use_bias)
    attn = d * 3 * inner + b * 3 * inner + inner * d + b * d
    mlp = d * ff + b * ff + ff * d + b * d
    norms = 2 * (d + b * d)
    layer = attn + mlp + norms
    embeddings = c.padded_vocab * d * (1 if c.tie_embeddings else 2)
    positions = c.max_seq_len * d if c.position == "learned" else 0
    return c.num_layers * layer + embeddings + positions + (d + b * d)


def model_stats(c: GPTConfig, seq_len: int | None = None, state_dtype: str = "float32") -> dict:
    params = abstract_params(c)
    total = _size(params)
    wte = c.padded_vocab * c.d_model
    wpe = c.max_seq_len * c.d_model if c.position == "learned" else 0
    head = 0 if c.tie_embeddings else wte
    seq_len = seq_len or c.max_seq_len
    matmul_params = total - wpe - (0 if c.tie_embeddings else wte)
    attn_flops = 12 * c.num_layers * c.num_heads * c.head_dim * seq_len
    param_bytes = total * jnp.dtype(c.param_dtype).itemsize
    adam_bytes = 2 * total * jnp.dtype(state_dtype).itemsize
    return {
        "params": total,
        "non_embedding_params": total - wte - wpe - head,
        "flops_params": matmul_params,
        "seq_len": seq_len,
        "flops_per_token": 6 * matmul_params + attn_flops,
        "param_bytes": param_bytes,
        "grad_bytes": param_bytes,
        "adam_state_bytes": adam_bytes,
        "params_plus_adam_bytes": param_bytes + adam_bytes,
    }


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def add_args(parser):
    from gptjax.cli import add_config_arg
    add_config_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    config = args.config
    c = GPTConfig.from_config(config.model, backend="tpu")  # dtype as trained on accelerators
    stats = model_stats(c, config.data.seq_len, config.optim.state_dtype)
    stats["name"] = config.name
    if args.json:
        print(json.dumps(stats))
        return
    print(f"{config.name}: {c.num_layers} layers, d_model {c.d_model}, {c.num_heads} heads x "
          f"{c.head_dim}, d_ff {c.d_ff}, vocab {c.vocab_size} (padded {c.padded_vocab})")
    print(f"  params               {stats['params']:>16,}  ({_human(stats['params'])})")
    print(f"  non-embedding params {stats['non_embedding_params']:>16,}")
    print(f"  FLOPs per token      {stats['flops_per_token']:>16,}  "
          f"(6N + 12LHQT, T={stats['seq_len']})")
    print(f"  params + AdamW state {_human(stats['params_plus_adam_bytes'], 'B'):>16}")
