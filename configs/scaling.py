"""Scaling sweeps: `gptjax sweep --config configs/scaling.py:PRESET --workdir DIR`.

Presets (docs/scaling.md):
- shakespeare_isoflop: the CPU demo. IsoFLOP profiles on TFDS tiny_shakespeare (characters):
  4 budgets x 5 sizes of a width-only family at fixed depth, muP, one learning rate.
- mup_transfer: the learning-rate sweep behind muP's claim: 3 widths x 6 learning rates, 600
  steps each; `--config.model.mup=False` gives the standard-parametrisation sweep to compare.
- micro: 3 tiny sizes on synthetic tokens, seconds; what the tests run.
- gpu_shards: 6 sizes from 0.4M to 25M non-embedding parameters at a fixed shape
  (d_model / layers = 64) on pre-tokenized shards, 20 tokens per parameter, muP.
- gpt3: the GPT-3 paper's 8 sizes (Brown et al. 2020, Table 2.1) at 300B tokens each, with
  their learning rates and batch sizes; meant for `--print-commands` on a cluster.

Any preset reads your own text with `--config.data.source=files --config.data.files=GLOB`.
"""

import os

from gptjax.config.defaults import base_config
from gptjax.config.loader import load_module

_HERE = os.path.dirname(os.path.abspath(__file__))


def _char_shakespeare(c, seq_len: int, batch: int):
    """TFDS tiny_shakespeare (1.0M training characters), character tokenizer, small CPU runs."""
    c.data.source = "tfds"
    c.data.tfds_name = "tiny_shakespeare"
    c.data.tokenizer.kind = "char"
    c.data.seq_len = seq_len
    c.model.vocab_size = 65           # replaced by the char tokenizer's size
    c.model.vocab_multiple = 8
    c.model.max_seq_len = seq_len
    c.model.use_bias = False
    c.train.batch_size = batch
    c.train.eval_batches = 10_000     # capped at the whole validation split: 27 batches here
    c.train.log_every = 50
    c.train.ckpt_every = 1000
    c.train.keep_checkpoints = 1
    c.train.async_checkpoint = False
    c.train.plot = False
    c.optim.b2 = 0.99
    c.optim.weight_decay = 0.1


def _char_family(c):
    """The width-only family of the CPU presets: 2 layers, 4-dimensional heads (for widths in
    steps of 4), muP, rotary positions (learned ones leave these small models on a ~2.4-nat
    plateau for hundreds of steps: the runs would measure how long that lasts, not how loss
    scales)."""
    _char_shakespeare(c, seq_len=64, batch=16)   # 1,024 tokens per step
    c.model.position = "rotary"
    c.model.mup = True                # one learning rate for every width (see mup_transfer)
    c.model.mup_base_width = 32
    c.optim.lr = 1.5e-2               # mup_transfer: optimum 1.4e-2 ... 1.8e-2 at every width
    sw = c.sweep
    sw.family = "width"
    sw.depth = 2
    sw.head_dim = 4
    sw.lr_rule = "fixed"
    sw.workers = 2                    # two runs at once (docs/scaling.md: what that buys)


def _shakespeare_isoflop(c):
    _char_family(c)
    c.optim.warmup_steps = 50
    sw = c.sweep
    sw.d_models = (12, 16, 20, 24, 28, 32, 40, 48, 56, 64)
    sw.budget = "iso_flops"
    sw.flops = (1.25e11, 2.5e11, 5e11, 1e12)
    sw.sizes_per_budget = 5
    sw.tokens_per_param = 80.0        # the guessed optimal D / N that centres each budget's sizes
    sw.min_steps = 400                # fewer steps leave a run far from done (docs/scaling.md)
    sw.evals_per_run = 2


def _mup_transfer(c):
    _char_family(c)
    c.optim.warmup_steps = 40
    sw = c.sweep
    sw.d_models = (16, 32, 64)
    sw.budget = "fixed"
    sw.tokens = 600 * 1024            # 600 steps at every width and learning rate
    sw.min_steps = 1
    sw.lrs = (2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2, 8e-2)
    sw.evals_per_run = 1
    sw.n_boot = 0


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
    sw.family = "width"
    sw.depth = 1
    sw.d_models = (8, 16, 32)
    sw.head_dim = 8
    sw.budget = "fixed"
    sw.tokens = 8 * 16 * 8            # 8 steps each
    sw.min_steps = 4
    sw.evals_per_run = 2
    sw.n_boot = 50


def _gpu_shards(c):
    c.data.source = "shards"
    c.data.seq_len = 1024
    c.model.max_seq_len = 1024
    c.model.remat = "none"
    c.model.mup = True
    c.model.mup_base_width = 128
    c.train.batch_size = 64           # 65,536 tokens per step
    c.train.eval_batches = 20
    c.train.log_every = 50
    c.train.ckpt_every = 1000
    sw = c.sweep
    sw.family = "aspect"
    sw.depths = (2, 3, 4, 5, 6, 8)
    sw.aspect = 64.0                  # d_model 128, 192, 256, 320, 384, 512
    sw.head_dim = 64
    sw.budget = "proportional"
    sw.tokens_per_param = 20.0
    sw.min_steps = 200
    sw.evals_per_run = 10


def _gpt3(c):
    gpt3 = load_module(os.path.join(_HERE, "gpt3.py"))
    N_CTX, SIZES = gpt3.N_CTX, gpt3.SIZES
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


VARIANTS = {"shakespeare_isoflop": _shakespeare_isoflop, "mup_transfer": _mup_transfer,
            "micro": _micro, "gpu_shards": _gpu_shards, "gpt3": _gpt3}


def get_config(preset: str = "shakespeare_isoflop"):
    c = base_config()
    c.name = f"scaling-{preset}"
    VARIANTS[preset](c)
    return c
