"""Model-size scaling sweeps: `gptjax sweep --config configs/scaling.py:PRESET --workdir DIR`.

Presets (see docs/scaling.md):
- austen_cpu: the CPU demo. 8 character-level models from 6.2k to 231k non-embedding
  parameters (37x) on Jane Austen (~4M characters), 20 tokens per parameter (at least 300
  steps); 1.4e13 FLOPs, ~16.5 CPU-minutes (docs/scaling.md).
- micro: 3 tiny sizes on synthetic tokens, seconds; what the tests run.
- gpu_shards: 6 sizes from 0.6M to 48M non-embedding parameters (80x) on pre-tokenized shards
  (`--config.data.shards_dir=DIR` from `gptjax data export`), 20 tokens per parameter.
- gpt3: the GPT-3 paper's 8 sizes (Brown et al. 2020, Table 2.1) at 300B tokens each, with
  their learning rates and batch sizes; meant for `--print-commands` on a cluster.
"""

import os

from gptjax.config import load_module
from gptjax.defaults import base_config

_HERE = os.path.dirname(os.path.abspath(__file__))
AUSTEN = os.path.normpath(os.path.join(_HERE, "..", "..", "shared", "data", "austen", "austen.txt"))


def _austen_cpu(c):
    c.data.source = "files"
    c.data.files = AUSTEN
    c.data.holdout_fraction = 0.05
    c.data.tokenizer.kind = "char"
    c.data.seq_len = 128
    c.model.vocab_size = 88           # replaced by the char tokenizer's size
    c.model.vocab_multiple = 8
    c.model.max_seq_len = 128
    c.model.use_bias = False
    c.train.batch_size = 16           # 2,048 tokens per step
    c.train.eval_batches = 16
    c.train.log_every = 25
    c.train.ckpt_every = 500
    c.train.keep_checkpoints = 1
    c.train.async_checkpoint = False
    c.train.plot = False
    c.optim.warmup_steps = 100
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.1
    sw = c.sweep
    sw.family = "rule"
    sw.d_models = (16, 24, 32, 40, 48, 56, 64, 80)
    sw.aspect = 24.0                  # layers 2, 2, 2, 2, 2, 2, 3, 3
    sw.min_layers = 2                 # 1-layer models fall off the trend (Kaplan et al., Fig. 6)
    sw.head_dim = 8
    sw.ff_mult = 4
    sw.budget = "proportional"
    sw.tokens_per_param = 20.0
    sw.min_steps = 300                # the 3 smallest get more than 20 tokens / param (see docs)
    sw.lr_rule = "kaplan"             # 2.0e-3 (smallest) .. 1.5e-3 (largest)
    sw.evals_per_run = 8


def _micro(c):
    c.data.source = "synthetic"
    c.data.seq_len = 16
    c.model.vocab_size = 32
    c.model.vocab_multiple = 8
    c.model.max_seq_len = 16
    c.model.use_bias = False
    c.train.batch_size = 8
    c.train.eval_batches = 2
    c.train.log_every = 2
    c.train.ckpt_every = 4
    c.train.keep_checkpoints = 1
    c.train.async_checkpoint = False
    c.train.plot = False
    c.optim.warmup_steps = 2
    sw = c.sweep
    sw.family = "rule"
    sw.d_models = (8, 16, 32)
    sw.aspect = 16.0                  # layers 1, 1, 2
    sw.head_dim = 8
    sw.budget = "fixed"
    sw.tokens = 8 * 16 * 8            # 8 steps each
    sw.min_steps = 4
    sw.evals_per_run = 2


def _gpu_shards(c):
    c.data.source = "shards"
    c.data.seq_len = 1024
    c.model.max_seq_len = 1024
    c.model.remat = "none"
    c.train.batch_size = 64           # 65,536 tokens per step
    c.train.eval_batches = 20
    c.train.log_every = 50
    c.train.ckpt_every = 1000
    sw = c.sweep
    sw.family = "rule"
    sw.d_models = (128, 192, 256, 320, 448, 576)
    sw.aspect = 48.0                  # layers 3, 4, 5, 7, 9, 12
    sw.head_dim = 64
    sw.budget = "proportional"
    sw.tokens_per_param = 20.0
    sw.min_steps = 200
    sw.lr_rule = "kaplan"
    sw.evals_per_run = 10


def _gpt3(c):
    gpt3 = load_module(os.path.join(_HERE, "gpt3.py"))
    N_CTX, SIZES = gpt3.N_CTX, gpt3.VARIANTS
    c.data.seq_len = N_CTX
    c.model.max_seq_len = N_CTX
    c.model.remat = "save_proj"
    c.optim.warmup_steps = 375
    c.sweep.family = "table"
    c.sweep.table = tuple(
        (name, layers, d, heads, d_head, 4 * d, lr, int(batch_tokens // N_CTX) // 8 * 8)
        for name, (layers, d, heads, d_head, batch_tokens, lr) in SIZES.items())
    c.sweep.budget = "fixed"
    c.sweep.tokens = 300_000_000_000  # GPT-3 trained every size on 300B tokens
    c.sweep.param_count = "non_embedding"


VARIANTS = {"austen_cpu": _austen_cpu, "micro": _micro, "gpu_shards": _gpu_shards, "gpt3": _gpt3}


def get_config(preset: str = "austen_cpu"):
    c = base_config()
    c.name = f"scaling-{preset}"
    VARIANTS[preset](c)
    return c
