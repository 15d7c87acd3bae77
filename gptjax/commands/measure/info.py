"""`gptjax info`: parameters, training FLOPs per token and memory of a config
(gptjax/model/flops.py).

Nothing is allocated, even for 175B.
"""

from __future__ import annotations

import json

from gptjax.commands.args import add_config_arg
from gptjax.model.flops import model_stats
from gptjax.model.gpt import GPTConfig
from gptjax.training.state import optimizer_state_bytes


def _human(n: float, unit: str = "") -> str:
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def add_args(parser):
    add_config_arg(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args):
    config = args.config
    c = GPTConfig.from_config(config.model, backend="tpu")  # dtype as trained on accelerators
    stats = model_stats(c, config.data.seq_len, optimizer_state_bytes(config))
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
